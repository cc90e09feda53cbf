package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/gormbatch/gormbatch"
	"github.com/mattn/go-sqlite3"
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

// killGrace is the plugin's clean-up budget after a deadline (its default,
// set explicitly so that the overload goal and the breakdown refer to it).
const killGrace = 100 * time.Millisecond

// heavyTag marks the CPU-bound query, so that the servers' process lists and
// the statement clock (clock.go) can tell it apart.
const heavyTag = "gb-bench-heavy"

// sqliteDriver is go-sqlite3 with nap(ms): it sleeps ms milliseconds and
// returns 1 (the SQLite speedup figure's "slow" query).
const sqliteDriver = "sqlite3_gormbatch_bench"

func init() {
	sql.Register(sqliteDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		return c.RegisterFunc("nap", func(ms int64) int64 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
			return 1
		}, false)
	}})
}

// gormConfig returns a fresh config for each gorm.Open: gorm keeps the
// pointer and stores the dialector, callbacks and plugins in it, so sharing
// one would share them between the plugin and naive databases.
func gormConfig() *gorm.Config {
	return &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true}
}

// pair is the same database opened twice: with the plugin, and without it
// for the naive errgroup baseline. Each has its own pool of poolSize.
type pair struct {
	backend string // "sqlite", "mariadb", "postgres"
	plugin  *gorm.DB
	naive   *gorm.DB
	pl      *gormbatch.Plugin
	// Connect calls of each pool (nil on SQLite). The plugin's count
	// includes its reserved kill connections (MariaDB): they are opened
	// with the pool's connector.
	pluginConns, naiveConns *countingConnector
	closers                 []func() error
}

func (p *pair) Close() {
	if p.pl != nil {
		p.pl.Close()
	}
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
}

// connects returns the Connect calls so far of one mode's pool.
func (p *pair) connects(mode string) int64 {
	c := p.naiveConns
	if mode == "plugin" {
		c = p.pluginConns
	}
	if c == nil {
		return 0
	}
	return c.n.Load()
}

// openPair opens the plugin and naive *gorm.DB with open (given the mode),
// seeds the table once through the naive one, and registers the plugin
// (with hooks) on the other.
func openPair(backend string, hooks []gormbatch.Hook, open func(mode string) (gorm.Dialector, *countingConnector, error)) (*pair, error) {
	p := &pair{backend: backend}
	for _, mode := range []string{"naive", "plugin"} {
		dial, cc, err := open(mode)
		if err != nil {
			p.Close()
			return nil, err
		}
		db, err := gorm.Open(dial, gormConfig())
		if err != nil {
			p.Close()
			return nil, err
		}
		sqlDB, err := db.DB()
		if err != nil {
			p.Close()
			return nil, err
		}
		sqlDB.SetMaxOpenConns(poolSize)
		sqlDB.SetMaxIdleConns(poolSize)
		sqlDB.SetConnMaxLifetime(0)
		sqlDB.SetConnMaxIdleTime(0)
		p.closers = append(p.closers, sqlDB.Close)
		if mode == "plugin" {
			p.plugin, p.pluginConns = db, cc
		} else {
			p.naive, p.naiveConns = db, cc
		}
	}
	if err := seed(p.naive); err != nil {
		p.Close()
		return nil, fmt.Errorf("seed %s: %w", backend, err)
	}
	p.pl = gormbatch.New(gormbatch.Config{Hooks: hooks, KillGrace: killGrace})
	if err := p.plugin.Use(p.pl); err != nil {
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
	return openPair("sqlite", nil, func(string) (gorm.Dialector, *countingConnector, error) {
		return sqlite.New(sqlite.Config{DriverName: sqliteDriver, DSN: dsn}), nil, nil
	})
}

// prime checks n connections out of db's pool at once and returns them, so
// the pool again holds n usable connections: the new server connections
// this takes replace the ones the last batch lost.
func prime(ctx context.Context, db *gorm.DB, n int) error {
	sqlDB, err := db.DB()
	if err != nil {
		return err
	}
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := sqlDB.Conn(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	return nil
}

// trimIdle closes the idle connections of db's pool beyond n, so that spare
// idle connections cannot hide the ones a round loses.
func trimIdle(db *gorm.DB, n int) {
	if sqlDB, err := db.DB(); err == nil {
		sqlDB.SetMaxIdleConns(n)
		sqlDB.SetMaxIdleConns(poolSize)
	}
}

// countingConnector counts the connections a pool opens (successful
// Connect calls): reconnects per cancel are its delta divided by the
// queries cancelled.
// With clock set (MariaDB's instrumented pools) it also wraps each
// connection in a clockConn.
type countingConnector struct {
	driver.Connector
	clock bool
	n     atomic.Int64
}

func (c *countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	c.n.Add(1)
	if !c.clock {
		return conn, nil
	}
	return &clockConn{Conn: conn}, nil
}
