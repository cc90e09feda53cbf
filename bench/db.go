package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/gormbatch/gormbatch"
	"github.com/mattn/go-sqlite3"
	gmysql "gorm.io/driver/mysql"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Item is the table every fast query reads: point reads by primary key.
type Item struct {
	ID    uint `gorm:"primaryKey"`
	Name  string
	Value int
}

// TableName keeps the benchmark's table apart from anything else in the
// database.
func (Item) TableName() string { return "gb_bench_items" }

// seedItems is the number of rows in gb_bench_items.
const seedItems = 1000

// poolSize is MaxOpenConns (and MaxIdleConns) of every application pool,
// plugin and naive alike. Idle connections are kept so that the only new
// server connections are the ones a cancel costs.
const poolSize = 16

// heavyTag marks the CPU-bound query so that PROCESSLIST rows can be matched
// to it; heavySQL is "SELECT /* tag */ ..." so the plugin still sees a
// SELECT (and adds its server-side deadline).
const heavyTag = "gb-bench-heavy"

// heavySQL counts seq_1_to_1000 × seq_1_to_1000 × seq_1_to_<c>: with c=50,
// 50 M rows, about two seconds of one core on MariaDB 10.11.
func heavySQL(c int) string {
	return fmt.Sprintf("SELECT /* %s */ COUNT(*) FROM seq_1_to_1000 a, seq_1_to_1000 b, seq_1_to_%d c", heavyTag, c)
}

// sqliteDriver is go-sqlite3 with nap(ms): it sleeps ms milliseconds and
// returns 1. SQLite checks for interrupts between rows, so a query calling
// nap per row is slow yet cancellable.
const sqliteDriver = "sqlite3_gormbatch_bench"

func init() {
	sql.Register(sqliteDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		return c.RegisterFunc("nap", func(ms int64) int64 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
			return 1
		}, false)
	}})
}

// sqliteHeavySQL naps 1 ms per row of 5 × gb_bench_items: over 5 s in all,
// yet SQLite can interrupt it between any two rows.
const sqliteHeavySQL = "SELECT /* " + heavyTag + " */ COUNT(*) FROM gb_bench_items a JOIN gb_bench_items b ON b.id <= 5 WHERE nap(1) = 1"

// gormConfig returns a fresh config for each gorm.Open: gorm keeps the
// pointer and stores the dialector, callbacks and plugins in it, so sharing
// one would share them between the plugin and naive databases.
func gormConfig() *gorm.Config {
	return &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true}
}

// pair is the same database opened twice: with the plugin, and without it
// for the naive errgroup baseline. Each has its own pool.
type pair struct {
	backend string // "sqlite" or "mariadb"
	plugin  *gorm.DB
	naive   *gorm.DB
	closers []func() error
}

func (p *pair) Close() {
	if pl, ok := p.plugin.Plugins["gormbatch"].(*gormbatch.Plugin); ok {
		pl.Close()
	}
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
}

func configurePool(db *gorm.DB) (*sql.DB, error) {
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	sqlDB.SetMaxOpenConns(poolSize)
	sqlDB.SetMaxIdleConns(poolSize)
	sqlDB.SetConnMaxLifetime(0)
	sqlDB.SetConnMaxIdleTime(0)
	return sqlDB, nil
}

// openPair opens the plugin and naive *gorm.DB with dial, seeds the table
// once through the naive one, and registers the plugin on the other.
func openPair(backend string, dial func() gorm.Dialector) (*pair, error) {
	p := &pair{backend: backend}
	for _, slot := range []**gorm.DB{&p.naive, &p.plugin} {
		db, err := gorm.Open(dial(), gormConfig())
		if err != nil {
			p.Close()
			return nil, err
		}
		sqlDB, err := configurePool(db)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.closers = append(p.closers, sqlDB.Close)
		*slot = db
	}
	if err := seed(p.naive); err != nil {
		p.Close()
		return nil, fmt.Errorf("seed %s: %w", backend, err)
	}
	if err := p.plugin.Use(gormbatch.New(gormbatch.Config{})); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func seed(db *gorm.DB) error {
	if err := db.AutoMigrate(&Item{}); err != nil {
		return err
	}
	var n int64
	if err := db.Model(&Item{}).Count(&n).Error; err != nil {
		return err
	}
	if n == seedItems {
		return nil
	}
	if err := db.Session(&gorm.Session{AllowGlobalUpdate: true}).Delete(&Item{}).Error; err != nil {
		return err
	}
	items := make([]Item, seedItems)
	for i := range items {
		items[i] = Item{ID: uint(i + 1), Name: fmt.Sprintf("item%04d", i+1), Value: i}
	}
	return db.CreateInBatches(items, 200).Error
}

// openSQLitePair opens a WAL database file in dir twice.
func openSQLitePair(dir string) (*pair, error) {
	dsn := "file:" + filepath.Join(dir, "bench.db") + "?_busy_timeout=5000&_journal_mode=WAL"
	return openPair("sqlite", func() gorm.Dialector {
		return sqlite.New(sqlite.Config{DriverName: sqliteDriver, DSN: dsn})
	})
}

// openMariaPair opens the MariaDB database twice.
func openMariaPair(dsn string) (*pair, error) {
	return openPair("mariadb", func() gorm.Dialector { return gmysql.Open(dsn) })
}

// mariaAddr is the DSN without credentials, for messages.
func mariaAddr(dsn string) string {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	return cfg.Net + "(" + cfg.Addr + ")/" + cfg.DBName
}

// monitor is one dedicated, long-lived server connection used for every
// measurement (PROCESSLIST, Connections) and for cleaning up orphans, so
// measuring opens no connection of its own.
type monitor struct {
	db      *sql.DB
	conn    *sql.Conn
	version string
}

// openMonitor connects to MariaDB and checks that it can run the benchmark
// (the Sequence engine behind seq_1_to_N).
func openMonitor(ctx context.Context, dsn string) (*monitor, error) {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, err
	}
	m := &monitor{db: db, conn: conn}
	if err := conn.QueryRowContext(ctx, "SELECT VERSION()").Scan(&m.version); err != nil {
		m.Close()
		return nil, err
	}
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM seq_1_to_3").Scan(&n); err != nil || n != 3 {
		m.Close()
		return nil, fmt.Errorf("server %s has no Sequence engine (seq_1_to_N), MariaDB is required: %v", m.version, err)
	}
	return m, nil
}

func (m *monitor) Close() {
	if m.conn != nil {
		m.conn.Close()
	}
	m.db.Close()
}

// connections reads the server's global Connections counter.
func (m *monitor) connections(ctx context.Context) (int64, error) {
	var name string
	var v int64
	err := m.conn.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Connections'").Scan(&name, &v)
	return v, err
}

// orphan is a PROCESSLIST row running the tagged heavy query.
type orphan struct {
	id, queryID int64
	command     string
	timeMS      float64
}

// orphans lists the server threads whose running statement carries the
// heavy query's tag. The LIKE pattern is built with CONCAT and the monitor's
// own thread is excluded, so this query never counts itself.
func (m *monitor) orphans(ctx context.Context) ([]orphan, error) {
	rows, err := m.conn.QueryContext(ctx, `SELECT ID, COALESCE(QUERY_ID, 0), COMMAND, COALESCE(TIME_MS, 0)
		FROM information_schema.PROCESSLIST
		WHERE INFO LIKE CONCAT('%', 'gb-bench', '-heavy', '%') AND ID <> CONNECTION_ID()`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []orphan
	for rows.Next() {
		var o orphan
		if err := rows.Scan(&o.id, &o.queryID, &o.command, &o.timeMS); err != nil {
			return nil, err
		}
		if o.command == "Query" || o.command == "Execute" || o.command == "Killed" {
			out = append(out, o)
		}
	}
	return out, rows.Err()
}

// killOrphans stops every tagged statement still running (KILL QUERY ID:
// it cannot hit a later statement) and waits until none is left, escalating
// to KILL CONNECTION after two seconds. It returns how many it killed.
func (m *monitor) killOrphans(ctx context.Context) (int, error) {
	killed := map[int64]bool{}
	deadline := time.Now().Add(5 * time.Second)
	escalate := time.Now().Add(2 * time.Second)
	for {
		os, err := m.orphans(ctx)
		if err != nil {
			return len(killed), err
		}
		if len(os) == 0 {
			return len(killed), nil
		}
		if time.Now().After(deadline) {
			return len(killed), fmt.Errorf("%d heavy queries still running after 5s of KILL", len(os))
		}
		for _, o := range os {
			stmt := fmt.Sprintf("KILL QUERY ID %d", o.queryID)
			if time.Now().After(escalate) {
				stmt = fmt.Sprintf("KILL CONNECTION %d", o.id)
			}
			_, err := m.conn.ExecContext(ctx, stmt)
			var me *mysql.MySQLError
			if err != nil && !(errors.As(err, &me) && (me.Number == 1957 || me.Number == 1094)) {
				return len(killed), fmt.Errorf("%s: %w", stmt, err)
			}
			if err == nil {
				killed[o.id] = true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isMariaDB reports whether the server version string names MariaDB.
func isMariaDB(version string) bool { return strings.Contains(strings.ToLower(version), "mariadb") }
