// Package gormbatch runs a batch of GORM read queries concurrently under one
// deadline, with asyncio.wait(timeout) semantics: queries that finish by the
// deadline keep their results, the rest are cancelled, and Wait reports a
// status for every query.
//
// Four promises hold on every path (deadline, parent cancel, panic, driver
// error, stalled network):
//
//  1. Bounded latency: Wait returns by the batch deadline, plus at most the
//     kill grace period on MySQL/MariaDB.
//  2. Connections come back: when Wait returns, no goroutine of the batch is
//     left and every connection it took is back in the pool.
//  3. Cancelled means stopped: on MySQL/MariaDB a cancelled query is killed
//     on the server (KILL QUERY from a reserved connection) and its
//     connection stays usable; SQLite is interrupted by its driver.
//  4. Nothing half-written: a destination changes only if its query ended
//     Done.
//
// Register the plugin once, then build batches with From:
//
//	db.Use(gormbatch.New(gormbatch.Config{Timeout: 300 * time.Millisecond}))
//
//	rep, err := gormbatch.From(db.WithContext(ctx)).
//		Find(&users, "active = ?", true).
//		Count(&n).
//		Go("orders", func(tx *gorm.DB) error { return tx.Find(&orders).Error }).
//		Wait()
package gormbatch

import (
	"database/sql"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
	"gorm.io/gorm"
)

const pluginName = "gormbatch"

// ServerCancel selects how a cancelled query is stopped on the server.
type ServerCancel int

const (
	// ServerCancelAuto kills cancelled queries on the server where the
	// dialect supports it (MySQL, MariaDB) and otherwise relies on the
	// driver's own cancel (SQLite interrupts the statement).
	ServerCancelAuto ServerCancel = iota
	// ServerCancelOff leaves cancelling to the driver. With
	// go-sql-driver/mysql that closes the socket: the query keeps running on
	// the server and the connection is lost.
	ServerCancelOff
	// ServerCancelRequire is ServerCancelAuto, but Initialize fails with
	// ErrUnsupported on a dialect without server-side cancel.
	ServerCancelRequire
)

// Config holds the plugin's defaults. The zero Config is usable.
type Config struct {
	// Timeout is the default batch deadline, counted from Wait. Zero means
	// none: only the context of the *gorm.DB given to From bounds the batch.
	Timeout time.Duration
	// Limit is the default number of queries of one batch that run at once.
	// Zero derives it: MaxInFlight, or 8 when that is unbounded.
	Limit int
	// MaxInFlight bounds batch queries running at once across all batches of
	// this *gorm.DB, so batches cannot take every connection of the pool.
	// Zero derives it from the pool's MaxOpenConns at the first batch
	// (three quarters of it, at least 1), or no bound when MaxOpenConns is
	// unlimited. Negative means no bound.
	MaxInFlight int

	// ServerCancel selects how cancelled queries are stopped on the server;
	// the default is ServerCancelAuto.
	ServerCancel ServerCancel
	// KillGrace is how long a killed query may take to return before its
	// connection is closed by the driver (and discarded). Wait returns by
	// the deadline plus KillGrace even when the network stalls. Default
	// 100ms.
	KillGrace time.Duration
	// NoServerDeadline turns off sending each query's remaining time to the
	// server (MariaDB SET STATEMENT max_statement_time, MySQL
	// MAX_EXECUTION_TIME), which stops it even if this process dies.
	NoServerDeadline bool
}

// Plugin is the gormbatch GORM plugin. Create it with New and register it
// with (*gorm.DB).Use. One Plugin serves one *gorm.DB.
type Plugin struct {
	cfg Config

	inFlightOnce sync.Once
	inFlight     *semaphore.Weighted // nil: unbounded
	inFlightN    int

	servers sync.Map // *sql.DB -> *server (MySQL/MariaDB kill state)
	cancel  bool     // server-side cancel enabled for this dialect
}

// New returns a Plugin with the given defaults. Invalid values are reported
// by Initialize (that is, by db.Use) as ErrInvalidConfig.
func New(cfg Config) *Plugin {
	if cfg.KillGrace == 0 {
		cfg.KillGrace = 100 * time.Millisecond
	}
	return &Plugin{cfg: cfg}
}

// Name returns "gormbatch".
func (p *Plugin) Name() string { return pluginName }

// Initialize validates the Config and registers the gormbatch:* callbacks on
// db. It is idempotent: callbacks already present are not added twice.
// Callback registration errors are returned wrapped.
func (p *Plugin) Initialize(db *gorm.DB) error {
	c := p.cfg
	if c.Timeout < 0 || c.Limit < 0 || c.KillGrace < 0 || c.ServerCancel < ServerCancelAuto || c.ServerCancel > ServerCancelRequire {
		return fmt.Errorf("%w: Timeout, Limit and KillGrace must not be negative", ErrInvalidConfig)
	}
	supported := supportsServerCancel(db.Dialector.Name())
	if c.ServerCancel == ServerCancelRequire && !supported {
		return fmt.Errorf("%w: server-side cancel for dialect %q", ErrUnsupported, db.Dialector.Name())
	}
	p.cancel = supported && c.ServerCancel != ServerCancelOff
	return registerCallbacks(db)
}

// plugin returns the Plugin registered on db, or nil.
func plugin(db *gorm.DB) *Plugin {
	if db == nil || db.Config == nil {
		return nil
	}
	p, _ := db.Plugins[pluginName].(*Plugin)
	return p
}

// slots returns the semaphore that bounds batch queries across batches,
// sized at the first batch from the pool's MaxOpenConns, and its size
// (0 = unbounded).
func (p *Plugin) slots(db *gorm.DB) (*semaphore.Weighted, int) {
	p.inFlightOnce.Do(func() {
		n := p.cfg.MaxInFlight
		if n == 0 {
			if sqlDB, err := db.DB(); err == nil {
				if m := sqlDB.Stats().MaxOpenConnections; m > 0 {
					n = max(1, m-m/4)
				}
			}
		}
		if n > 0 {
			p.inFlight, p.inFlightN = semaphore.NewWeighted(int64(n)), n
		}
	})
	return p.inFlight, p.inFlightN
}

// sqlPool returns the *sql.DB behind a connection pool, or nil.
func sqlPool(pool gorm.ConnPool) *sql.DB {
	db, _ := pool.(*sql.DB)
	return db
}
