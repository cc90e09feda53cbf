package gormbatch_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gormbatch/gormbatch"
	"gorm.io/gorm"
)

// Writes are refused on every path, before anything is sent: Raw, Exec,
// Scan, Row, Rows and closures, with comments, whitespace or parentheses
// first, and data-modifying CTEs; Create, Update and Delete too. The table
// is unchanged. Reads with leading comments still work.
func TestWritesRefused(t *testing.T) {
	run := func(t *testing.T, db *gorm.DB) {
		const table = "gb_write_items"
		db.Exec("DROP TABLE IF EXISTS " + table)
		if err := db.Table(table).AutoMigrate(&txItem{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + table) })
		if err := db.Table(table).Create(&txItem{ID: 1, Name: "orig"}).Error; err != nil {
			t.Fatal(err)
		}
		id := int64(-1)
		var rows []txItem
		// Each case builds a batch on db with one write in it.
		raw := func(dest any, sql string) func(*gorm.DB) *gormbatch.Batch {
			return func(db *gorm.DB) *gormbatch.Batch { return gormbatch.From(db).Raw(dest, sql) }
		}
		closure := func(f func(tx *gorm.DB) error) func(*gorm.DB) *gormbatch.Batch {
			return func(db *gorm.DB) *gormbatch.Batch { return gormbatch.From(db).Go("write", f) }
		}
		writes := []struct {
			name  string
			batch func(db *gorm.DB) *gormbatch.Batch
		}{
			{"Raw INSERT RETURNING", raw(&id, "INSERT INTO gb_write_items (id, name) VALUES (2, 'x') RETURNING id")},
			{"Raw UPDATE after a comment", raw(&rows, "/* tag */ UPDATE gb_write_items SET name = 'x' RETURNING id, name")},
			{"Raw DELETE in parentheses", raw(&rows, "  -- c\n (DELETE FROM gb_write_items)")},
			{"Raw data-modifying CTE", raw(&id, "WITH d AS (DELETE FROM gb_write_items RETURNING id) SELECT count(*) FROM d")},
			{"Raw SELECT INTO", raw(&rows, "SELECT * INTO gb_write_copy FROM gb_write_items")},
			{"Raw two statements", raw(&rows, "SELECT 1; DELETE FROM gb_write_items")},
			{"Scan of a write", func(db *gorm.DB) *gormbatch.Batch {
				return gormbatch.From(db.Raw("DELETE FROM gb_write_items")).Scan(&rows)
			}},
			{"Exec in a closure", closure(func(tx *gorm.DB) error { return tx.Exec("UPDATE gb_write_items SET name = 'x'").Error })},
			{"Row in a closure", closure(func(tx *gorm.DB) error {
				var v int64
				return tx.Raw("DELETE FROM gb_write_items RETURNING id").Row().Scan(&v)
			})},
			{"Rows in a closure", closure(func(tx *gorm.DB) error {
				r, err := tx.Raw("UPDATE gb_write_items SET name = 'x' RETURNING id").Rows()
				if err == nil {
					r.Close()
				}
				return err
			})},
			{"Create", closure(func(tx *gorm.DB) error { return tx.Table(table).Create(&txItem{ID: 3, Name: "x"}).Error })},
			{"Update", closure(func(tx *gorm.DB) error { return tx.Table(table).Where("id = 1").Update("name", "x").Error })},
			{"Delete", closure(func(tx *gorm.DB) error { return tx.Table(table).Delete(&txItem{ID: 1}).Error })},
		}
		for _, w := range writes {
			rep, err := w.batch(db).Wait()
			if rep == nil || rep.Results[0].Status != gormbatch.Failed || !errors.Is(err, gormbatch.ErrWriteInBatch) {
				t.Errorf("%s: %v\n%v", w.name, err, rep)
			}
		}
		var left []txItem
		db.Table(table).Find(&left)
		if len(left) != 1 || left[0].Name != "orig" || id != -1 || rows != nil {
			t.Errorf("the table changed or a destination was written: %+v, id %d, rows %v", left, id, rows)
		}
		// Reads, with whatever comes first, run.
		var names []string
		var n int64
		rep, err := gormbatch.From(db).
			Raw(&names, "/* traceparent='00-1' */ SELECT name FROM gb_write_items").
			Raw(&n, "-- a comment\n  SELECT COUNT(*) FROM gb_write_items").
			Wait()
		if err != nil || len(names) != 1 || n != 1 {
			t.Errorf("reads with leading comments: %v, %v, %d\n%v", err, names, n, rep)
		}
	}
	t.Run("sqlite", func(t *testing.T) {
		db, _ := openSQLite(t, gormbatch.Config{})
		run(t, db)
	})
	eachServer(t, func(t *testing.T, be *backend) {
		run(t, openServer(t, be, gormbatch.Config{}).DB)
	})
}

// The classifier: what is a read, and where a statement can start.
func TestClassifier(t *testing.T) {
	var cache gormbatch.StmtCache
	for q, read := range map[string]bool{
		"SELECT 1":                             true,
		"  select * from t":                    true,
		"/* c */ SELECT 1":                     true,
		"-- c\nSELECT 1":                       true,
		"# c\nSELECT 1":                        true,
		"((SELECT 1)) UNION (SELECT 2)":        true,
		"WITH x AS (SELECT 1) SELECT * FROM x": true,
		"WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c WHERE n < 3) SELECT * FROM c": true,
		"SHOW TABLES":                       true,
		"EXPLAIN SELECT 1":                  true,
		"DESCRIBE users":                    true,
		"VALUES (1), (2)":                   true,
		"TABLE users":                       true,
		"SELECT * FROM t FOR UPDATE":        true,
		"SELECT * FROM t FOR NO KEY UPDATE": true,
		"SELECT REPLACE(name, 'a', 'b'), INSERT(name, 1, 1, 'x') FROM t": true,
		"SELECT copy, do, handler, load FROM t":                          true,
		"SELECT 'DELETE FROM t; UPDATE' FROM t":                          true,
		"SELECT \"update\" FROM t":                                       true,
		"SELECT $$DELETE$$":                                              true,
		"SELECT 1;":                                                      true,
		"/*!50000 SELECT 1 */":                                           true,
		"":                                                               false,
		"UPDATE t SET a = 1":                                             false,
		"/* c */ DELETE FROM t":                                          false,
		"(INSERT INTO t VALUES (1))":                                     false,
		"WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d":           false,
		"WITH x AS (SELECT 1) DELETE FROM t":                               false,
		"WITH x AS MATERIALIZED (UPDATE t SET a = 1 RETURNING a) SELECT 1": false,
		"EXPLAIN ANALYZE DELETE FROM t":                                    false,
		"EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1":                    false,
		"SELECT * INTO t2 FROM t":                                          false,
		"SELECT a INTO @x FROM t":                                          false,
		"SELECT 1; DELETE FROM t":                                          false,
		"/*!50000 DELETE FROM t */":                                        false,
		"SET @a = 1":                                                       false,
		"CALL p()":                                                         false,
		"DO SLEEP(1)":                                                      false,
		"REPLACE INTO t VALUES (1)":                                        false,
		"LOCK TABLES t READ":                                               false,
	} {
		if got := gormbatch.IsRead(q); got != read {
			t.Errorf("IsRead(%q) = %v, want %v", q, got, read)
		}
		for i := range 2 { // a miss, then a hit
			if got := cache.IsRead(q); got != read {
				t.Errorf("cached IsRead(%q) #%d = %v, want %v", q, i+1, got, read)
			}
		}
	}
}

// The statement cache stops growing at its bounds and still answers.
func TestStmtCacheBound(t *testing.T) {
	var cache gormbatch.StmtCache
	long := "SELECT " + strings.Repeat("1 + ", gormbatch.StmtCacheLen) + "1"
	if !cache.IsRead(long) || cache.Len() != 0 {
		t.Fatalf("a %d-byte text: read %v, cached %d texts; want read and not cached", len(long), cache.IsRead(long), cache.Len())
	}
	for i := range gormbatch.StmtCacheMax + 100 {
		if !cache.IsRead(fmt.Sprintf("SELECT %d", i)) || cache.IsRead(fmt.Sprintf("DELETE FROM t WHERE id = %d", i)) {
			t.Fatalf("text #%d misread", i)
		}
	}
	if n := cache.Len(); n != gormbatch.StmtCacheMax {
		t.Fatalf("cache holds %d texts, want its bound %d", n, gormbatch.StmtCacheMax)
	}
}

// The server-side limit goes after the top-level SELECT for MySQL (into an
// optimizer-hint comment already there), and before any read for MariaDB.
func TestServerLimitRewrite(t *testing.T) {
	for _, c := range []struct {
		mariadb bool
		in, out string
	}{
		{true, "SELECT 1", "SET STATEMENT max_statement_time=0.250 FOR SELECT 1"},
		{true, "/* c */ SELECT 1", "SET STATEMENT max_statement_time=0.250 FOR /* c */ SELECT 1"},
		{true, "SHOW TABLES", "SET STATEMENT max_statement_time=0.250 FOR SHOW TABLES"},
		{false, "select * from t", "select /*+ MAX_EXECUTION_TIME(250) */ * from t"},
		{false, "/* c */ SELECT 1", "/* c */ SELECT /*+ MAX_EXECUTION_TIME(250) */ 1"},
		{false, "WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT /*+ MAX_EXECUTION_TIME(250) */ * FROM x"},
		{false, "SELECT /*+ BKA(t) */ 1", "SELECT /*+ MAX_EXECUTION_TIME(250) BKA(t) */ 1"},
		{false, "SELECT /*+ MAX_EXECUTION_TIME(9) */ 1", "SELECT /*+ MAX_EXECUTION_TIME(9) */ 1"},
		{false, "SHOW TABLES", "SHOW TABLES"},
	} {
		if got := gormbatch.Rewrite(c.mariadb, c.in, 250); got != c.out {
			t.Errorf("Rewrite(%v, %q) = %q, want %q", c.mariadb, c.in, got, c.out)
		}
	}
}
