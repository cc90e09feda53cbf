package gormbatch_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/gormbatch/gormbatch"
	gormmysql "gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

func mysqlDSN() string {
	if dsn := os.Getenv("GORMBATCH_MYSQL_DSN"); dsn != "" {
		return dsn
	}
	return "root@tcp(127.0.0.1:3306)/test"
}

// openMySQL opens the test server with the plugin registered, or skips the
// test when no server answers.
func openMySQL(t testing.TB, cfg gormbatch.Config) (*gorm.DB, *sql.DB, *gormbatch.Plugin) {
	t.Helper()
	return openMySQLDSN(t, mysqlDSN(), cfg)
}

func openMySQLDSN(t testing.TB, dsn string, cfg gormbatch.Config) (*gorm.DB, *sql.DB, *gormbatch.Plugin) {
	t.Helper()
	db, err := gorm.Open(gormmysql.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		unreachable(t, err)
	}
	sqlDB, _ := db.DB()
	t.Cleanup(func() { sqlDB.Close() })
	sqlDB.SetMaxOpenConns(8)
	sqlDB.SetMaxIdleConns(8)
	p := gormbatch.New(cfg)
	if err := db.Use(p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := db.AutoMigrate(&User{}, &Order{}); err != nil {
		t.Fatal(err)
	}
	var n int64
	db.Model(&User{}).Count(&n)
	if n != seedUsers {
		db.Exec("DELETE FROM orders")
		db.Exec("DELETE FROM users")
		users := make([]User, seedUsers)
		for i := range users {
			users[i] = User{ID: uint(i + 1), Name: fmt.Sprintf("user%03d", i+1), Active: i%2 == 0}
		}
		if err := db.Create(&users).Error; err != nil {
			t.Fatal(err)
		}
	}
	return db, sqlDB, p
}

// unreachable skips a server test, or fails it under .ci/run
// (GORMBATCH_REQUIRE_MYSQL=1), which must never skip them.
func unreachable(t testing.TB, err error) {
	t.Helper()
	msg := fmt.Sprintf("MariaDB/MySQL not reachable (set GORMBATCH_MYSQL_DSN; .ci/run starts one): %v", redact(err))
	if os.Getenv("GORMBATCH_REQUIRE_MYSQL") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// redact keeps passwords out of test output.
func redact(err error) string {
	if cfg, perr := mysql.ParseDSN(mysqlDSN()); perr == nil && cfg.Passwd != "" {
		return strings.ReplaceAll(err.Error(), cfg.Passwd, "***")
	}
	return err.Error()
}

// heavy is a CPU-bound MariaDB query that runs for seconds (about 0.35 s per
// 10 M rows), tagged so PROCESSLIST can find it.
func heavy(tag string) string {
	return "SELECT COUNT(*) FROM seq_1_to_1000 a, seq_1_to_1000 b, seq_1_to_200 c /* gbtest:" + tag + " */"
}

// running counts statements carrying tag still executing on the server.
func running(t testing.TB, db *gorm.DB, tag string) int64 {
	t.Helper()
	var n int64
	err := db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()",
		"%gbtest:"+tag+" */%").Scan(&n).Error
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// settled waits up to a few ms for tagged statements to leave PROCESSLIST
// (the server unlists a killed statement just after answering it).
func settled(t testing.TB, db *gorm.DB, tag string) {
	t.Helper()
	for i := 0; ; i++ {
		n := running(t, db, tag)
		if n == 0 {
			return
		}
		if i == 50 {
			t.Fatalf("%d statements tagged %s still running on the server after Wait", n, tag)
		}
		time.Sleep(time.Millisecond)
	}
}

func connections(t testing.TB, db *gorm.DB) int64 {
	t.Helper()
	var name string
	var n int64
	if err := db.Raw("SHOW GLOBAL STATUS LIKE 'Connections'").Row().Scan(&name, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func tag(t testing.TB) string { return fmt.Sprintf("%s-%d", t.Name(), rand.Int64()) }

// Cancelled queries stop on the server, cost no reconnect and Wait returns
// near the deadline, for each way a query can be cancelled and each kill
// strategy.
func TestMySQLServerCancel(t *testing.T) {
	cases := []struct {
		name   string
		cfg    gormbatch.Config
		parent bool // cancel the parent context instead of a deadline
		want   gormbatch.Status
	}{
		{"deadline/kill", gormbatch.Config{NoServerDeadline: true}, false, gormbatch.TimedOut},
		{"deadline/kill+server-limit", gormbatch.Config{}, false, gormbatch.TimedOut},
		{"parent-cancel", gormbatch.Config{}, true, gormbatch.Canceled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db, sqlDB, _ := openMySQL(t, c.cfg)
			tg := tag(t)
			batch := func() (*gormbatch.Report, error, time.Duration) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				b := gormbatch.From(db.WithContext(ctx))
				if c.parent {
					time.AfterFunc(200*time.Millisecond, cancel)
				} else {
					b = b.Timeout(200 * time.Millisecond)
				}
				var users []User
				var n1, n2 int64
				start := time.Now()
				rep, err := b.
					Find(&users, "active = ?", true, gormbatch.As("fast")).
					Raw(&n1, heavy(tg), gormbatch.As("heavy1")).
					Raw(&n2, heavy(tg), gormbatch.As("heavy2")).
					Wait()
				over := time.Since(start) - 200*time.Millisecond
				if n1 != 0 || n2 != 0 || len(users) != seedUsers/2 {
					t.Fatalf("destinations: heavy %d %d, fast %d", n1, n2, len(users))
				}
				return rep, err, over
			}
			batch() // warm the pool, the id cache and the kill connection
			settled(t, db, tg)
			before := connections(t, db)
			for range 5 {
				rep, err, over := batch()
				// The heavy query runs ~7 s; a generous bound still proves
				// Wait did not wait for it.
				if over > 500*time.Millisecond {
					t.Fatalf("Wait returned %v after the deadline", over)
				}
				t.Logf("Wait returned %v after the deadline", over)
				status(t, rep, "fast", gormbatch.Done)
				for _, h := range []string{"heavy1", "heavy2"} {
					r := status(t, rep, h, c.want)
					if c.want == gormbatch.TimedOut && !errors.Is(r.Err, context.DeadlineExceeded) ||
						c.want == gormbatch.Canceled && !errors.Is(r.Err, context.Canceled) {
						t.Fatalf("%s: err %v", h, r.Err)
					}
				}
				if err == nil {
					t.Fatal("batch error is nil")
				}
				settled(t, db, tg)
				checkPool(t, sqlDB)
			}
			if d := connections(t, db) - before; d != 0 {
				t.Fatalf("%d new server connections for 10 cancelled queries, want 0", d)
			}
		})
	}
}

// A query the plugin killed is never Done, even when the server answers it
// normally: MariaDB's SLEEP returns 1 when killed.
func TestMySQLKilledIsNotDone(t *testing.T) {
	db, sqlDB, _ := openMySQL(t, gormbatch.Config{NoServerDeadline: true})
	v := int64(-1)
	rep, _ := gormbatch.From(db).Timeout(100*time.Millisecond).
		Raw(&v, "SELECT SLEEP(5)", gormbatch.As("sleep")).
		Wait()
	r := status(t, rep, "sleep", gormbatch.TimedOut)
	if !r.Killed || v != -1 {
		t.Fatalf("killed %v, dest %d", r.Killed, v)
	}
	if rep.Elapsed > 2*time.Second {
		t.Fatalf("Wait took %v", rep.Elapsed)
	}
	checkPool(t, sqlDB)
}

// An outside KILL QUERY is the query's own failure, not a timeout.
func TestMySQLForeignKill(t *testing.T) {
	db, sqlDB, _ := openMySQL(t, gormbatch.Config{})
	tg := tag(t)
	killer := make(chan struct{})
	go func() {
		defer close(killer)
		for range 200 {
			time.Sleep(10 * time.Millisecond)
			var id int64
			if db.Raw("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()",
				"%gbtest:"+tg+" */%").Scan(&id); id != 0 {
				db.Exec(fmt.Sprintf("KILL QUERY %d", id))
				return
			}
		}
	}()
	var n int64
	rep, err := gormbatch.From(db).Timeout(10*time.Second).Raw(&n, heavy(tg), gormbatch.As("heavy")).Wait()
	r := status(t, rep, "heavy", gormbatch.Failed)
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1317 || r.Killed {
		t.Fatalf("err %v, killed %v", err, r.Killed)
	}
	<-killer // it uses the same pool
	checkPool(t, sqlDB)
}

// The connection id is asked once per physical connection, not per query.
func TestMySQLConnectionIDOnce(t *testing.T) {
	db, sqlDB, p := openMySQL(t, gormbatch.Config{})
	sqlDB.SetMaxOpenConns(2)
	sqlDB.SetMaxIdleConns(2)
	for range 50 {
		var a, b []User
		if _, err := gormbatch.From(db).Find(&a).Find(&b, "active").Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if n := gormbatch.IDLookups(p); n > 2 {
		t.Fatalf("%d connection id lookups for 100 queries on 2 connections", n)
	}
}

// The server-side deadline is sent with each read and the server enforces
// it on its own (error 1969, mapped to TimedOut).
func TestMySQLServerDeadline(t *testing.T) {
	for _, c := range []struct {
		mariadb bool
		in, out string
	}{
		{true, "SELECT 1", "SET STATEMENT max_statement_time=0.250 FOR SELECT 1"},
		{true, " WITH x AS (SELECT 1) SELECT * FROM x", "SET STATEMENT max_statement_time=0.250 FOR  WITH x AS (SELECT 1) SELECT * FROM x"},
		{true, "SHOW TABLES", "SHOW TABLES"},
		{false, "select * from t", "select /*+ MAX_EXECUTION_TIME(250) */ * from t"},
		{false, "SELECT /*+ BKA(t) */ 1", "SELECT /*+ BKA(t) */ 1"},
		{false, "UPDATE t SET a = 1", "UPDATE t SET a = 1"},
	} {
		if got := gormbatch.Rewrite(c.mariadb, c.in, 250); got != c.out {
			t.Errorf("Rewrite(%v, %q) = %q, want %q", c.mariadb, c.in, got, c.out)
		}
	}

	db, _, _ := openMySQL(t, gormbatch.Config{})
	var version string
	db.Raw("SELECT VERSION()").Scan(&version)
	if !strings.Contains(strings.ToLower(version), "mariadb") {
		t.Skip("server-limit check runs on MariaDB")
	}
	var n int64
	err := db.Raw(gormbatch.Rewrite(true, heavy(tag(t)), 150)).Scan(&n).Error
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1969 {
		t.Fatalf("server limit: err %v, want 1969", err)
	}
}

// A kill never interrupts another statement: queries end right around their
// deadline, and after each batch a neighbour statement runs on the same
// connection (the pool has one). It must never be interrupted.
func TestMySQLKillNeverHitsAnotherStatement(t *testing.T) {
	{
		{
			db, sqlDB, p := openMySQL(t, gormbatch.Config{NoServerDeadline: true})
			sqlDB.SetMaxOpenConns(1)
			sqlDB.SetMaxIdleConns(1)
			// Deadlines spread over 0.5..1.5 times the query's median time,
			// so about half the kills land while it runs and the rest
			// just after it ended.
			const q = "SELECT COUNT(*) FROM seq_1_to_1000 a, seq_1_to_50 b"
			times := make([]time.Duration, 21)
			for i := range times {
				t0 := time.Now()
				db.Exec(q)
				times[i] = time.Since(t0)
			}
			slices.Sort(times)
			median := times[len(times)/2]
			iterations := 1000
			if testing.Short() {
				iterations = 200
			}
			var done, timedOut, killed atomic.Int64
			for i := range iterations {
				var n int64
				d := median/2 + time.Duration(rand.Int64N(int64(median)))
				rep, _ := gormbatch.From(db).Timeout(d).Raw(&n, q, gormbatch.As("edge")).Wait()
				r := rep.Results[0]
				switch r.Status {
				case gormbatch.Done:
					done.Add(1)
					if n != 50000 {
						t.Fatalf("Done with %d", n)
					}
				case gormbatch.TimedOut:
					timedOut.Add(1)
				case gormbatch.Skipped: // deadline passed before it started (slow -race runs)
				default:
					t.Fatalf("iteration %d: %v %v", i, r.Status, r.Err)
				}
				if r.Killed {
					killed.Add(1)
				}
				var m int64
				if err := db.Raw(q).Scan(&m).Error; err != nil || m != 50000 {
					t.Fatalf("iteration %d: neighbour statement interrupted: %v", i, err)
				}
			}
			t.Logf("query median %v; %d batches: %d done, %d timed out, %d killed, %d late kills consumed; 0 neighbours interrupted",
				median, iterations, done.Load(), timedOut.Load(), killed.Load(), gormbatch.Consumed(p))
			if killed.Load() == 0 || done.Load() == 0 {
				t.Fatalf("deadlines did not straddle the query: %d done, %d killed", done.Load(), killed.Load())
			}
			checkPool(t, sqlDB)
		}
	}
}
