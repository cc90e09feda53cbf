package gormbatch

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

const pluginName = "gormbatch"

// ServerCancel selects how a cancelled query is stopped on the server.
type ServerCancel int

const (
	// ServerCancelAuto stops cancelled queries on the server where the
	// dialect supports it (MySQL, MariaDB, PostgreSQL) and otherwise relies
	// on the driver's own cancel (SQLite interrupts the statement). Where
	// server cancel cannot be set up, it logs a warning and falls back.
	ServerCancelAuto ServerCancel = iota
	// ServerCancelOff leaves cancelling to the driver. With
	// go-sql-driver/mysql and pgx that closes the socket: the connection is
	// lost, and on MySQL/MariaDB the query keeps running on the server.
	ServerCancelOff
	// ServerCancelRequire is ServerCancelAuto, but Initialize fails with
	// ErrUnsupported where server cancel cannot work, and a query whose
	// connection cannot be set up for it fails instead of falling back.
	ServerCancelRequire
)

// String returns "auto", "off" or "require".
func (s ServerCancel) String() string {
	switch s {
	case ServerCancelAuto:
		return "auto"
	case ServerCancelOff:
		return "off"
	case ServerCancelRequire:
		return "require"
	}
	return fmt.Sprintf("ServerCancel(%d)", int(s))
}

// Config holds the plugin's defaults. The zero Config is usable.
type Config struct {
	// Timeout is the default batch deadline, counted from Wait. Zero means
	// none: only the context of the *gorm.DB given to From bounds the batch.
	Timeout time.Duration
	// Concurrency is the default number of queries of one batch that run at
	// once. Zero derives it: MaxInFlight, or 8 when that is unbounded.
	Concurrency int
	// MaxInFlight bounds batch queries running at once across all batches of
	// this *gorm.DB, so batches never take every connection of the pool.
	// Zero derives it from the pool's MaxOpenConns at the first batch: all
	// but a quarter of them and at least one left to the rest of the
	// application (2 → 1, 4 → 3, 8 → 6), or no bound when MaxOpenConns is
	// unlimited. A pool of one connection gives 1. Negative means no bound.
	MaxInFlight int

	// ServerCancel selects how cancelled queries are stopped on the server;
	// the default is ServerCancelAuto.
	ServerCancel ServerCancel
	// KillGrace is the clean-up budget after a query's deadline or cancel.
	// A finder (Find, First, Count, Raw, ...) outside a transaction gets
	// its status at once and Wait does not wait for its stop; otherwise
	// the stop, the statement returning and the closure returning must fit
	// in KillGrace, and Wait returns by the deadline plus KillGrace. A
	// stopped statement still running when it is spent is cut (its
	// connection discarded) where a closure or a transaction would go on,
	// or else handed off (see ReclaimTimeout). It is also added to the
	// server-side limit. Default 100ms.
	KillGrace time.Duration
	// ReclaimTimeout bounds how long the plugin holds the connection of a
	// stopped statement after the query got its status, waiting for the
	// server to stop it so the connection can go back to the pool; past
	// it, the connection is cut. Default 10s.
	ReclaimTimeout time.Duration
	// NoServerDeadline turns off sending each read's remaining time to the
	// server (MariaDB SET STATEMENT max_statement_time, MySQL
	// MAX_EXECUTION_TIME), which stops it even if this process dies.
	NoServerDeadline bool

	// Logger receives the plugin's records (see Event for what each
	// says). Nil logs warnings and errors (connections cut, server cancel
	// unavailable, panics) to slog.Default(); a Logger of your own gets
	// every record its handler enables: Info for each query that did not
	// end Done, Debug for every query and every kill.
	Logger *slog.Logger
	// Hooks observe batches, queries and the plugin's events (module
	// github.com/gormbatch/gormbatch/otel implements one).
	Hooks []Hook
}

// Plugin is the gormbatch GORM plugin. Create it with New and register it
// with (*gorm.DB).Use. One Plugin serves one *gorm.DB.
type Plugin struct {
	cfg Config // defaults filled by New; read-only afterwards
	log *slog.Logger

	// Set by Initialize.
	dialect     dialect // nil: the driver's own cancel
	dialectName string
	namer       schema.Namer

	slotsOnce sync.Once
	slots     *semaphore.Weighted // batch queries in flight across batches; nil: unbounded
	slotsN    int

	servers    sync.Map       // *sql.DB -> *serverSlot: server cancel per pool
	reclaiming sync.WaitGroup // handed-off queries whose connections are not back
	stats      counters       // atomics
	names      names          // default query names
	stmts      stmtCache      // what classify read from statement texts
	tables     sync.Map       // reflect.Type -> table name, for default names
	warned     sync.Map       // one-time warnings already logged
}

// New returns a Plugin with the given defaults. Invalid values are reported
// by Initialize (that is, by db.Use) as ErrInvalidConfig.
func New(cfg Config) *Plugin {
	if cfg.KillGrace == 0 {
		cfg.KillGrace = 100 * time.Millisecond
	}
	if cfg.ReclaimTimeout == 0 {
		cfg.ReclaimTimeout = 10 * time.Second
	}
	p := &Plugin{cfg: cfg, log: cfg.Logger}
	if p.log == nil {
		p.log = slog.New(warnOnly{})
	}
	return p
}

// Name returns "gormbatch".
func (p *Plugin) Name() string { return pluginName }

// Initialize validates the Config, resolves server cancel for db's dialect,
// quiets GORM's logger about the plugin's own cancels, and registers the
// gormbatch:* callbacks. Invalid settings give ErrInvalidConfig, server
// cancel that cannot work under ServerCancelRequire ErrUnsupported. It is
// idempotent: callbacks already present are not added twice.
func (p *Plugin) Initialize(db *gorm.DB) error {
	c := p.cfg
	for _, f := range []struct {
		name string
		bad  bool
	}{
		{"Timeout", c.Timeout < 0}, {"Concurrency", c.Concurrency < 0},
		{"KillGrace", c.KillGrace < 0}, {"ReclaimTimeout", c.ReclaimTimeout < 0},
	} {
		if f.bad {
			return fmt.Errorf("%w: %s must not be negative", ErrInvalidConfig, f.name)
		}
	}
	if c.ServerCancel < ServerCancelAuto || c.ServerCancel > ServerCancelRequire {
		return fmt.Errorf("%w: unknown ServerCancel %d", ErrInvalidConfig, int(c.ServerCancel))
	}
	p.dialectName, p.namer = db.Dialector.Name(), db.NamingStrategy
	p.dialect = nil
	if c.ServerCancel != ServerCancelOff {
		d := dialects[p.dialectName]
		err := fmt.Errorf("%w: no server cancel for dialect %q", ErrUnsupported, p.dialectName)
		if d != nil {
			err = d.check()
		}
		switch {
		case err == nil:
			p.dialect = d
		case c.ServerCancel == ServerCancelRequire:
			return err
		case d != nil:
			p.warnOnce("setup:"+p.dialectName, "gormbatch: server cancel unavailable; the driver cancels",
				slog.String("dialect", p.dialectName), slog.Any("err", err))
		}
	}
	quietLogger(db)
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

// Close waits for connections the plugin still holds after Wait returned
// (see KillGrace; at most ReclaimTimeout, unless a query's goroutine is
// blocked for good: a sql.Scanner that panicked deadlocks database/sql,
// golang/go#76465), then closes the connections it opened for server
// cancel. Call it when closing the *gorm.DB; batches started afterwards
// open them again.
func (p *Plugin) Close() error {
	p.reclaiming.Wait()
	var errs []error
	p.servers.Range(func(k, v any) bool {
		p.servers.Delete(k)
		s := v.(*serverSlot)
		s.lock <- struct{}{}
		if srv, ok := s.srv.Load().(server); ok {
			errs = append(errs, srv.close())
		}
		<-s.lock
		return true
	})
	return errors.Join(errs...)
}

// serverSlot is server cancel for one pool, opened once.
type serverSlot struct {
	lock chan struct{} // one token: guards opening
	srv  atomic.Value  // server, once open succeeded
}

// server returns server cancel for pool, opening it the first time with
// q (a pinned connection of the pool). A failed attempt leaves nothing
// behind and the next query tries again; waiting for another query's
// attempt respects ctx.
func (p *Plugin) server(ctx context.Context, pool *sql.DB, q querier) (server, error) {
	v, ok := p.servers.Load(pool)
	if !ok {
		v, _ = p.servers.LoadOrStore(pool, &serverSlot{lock: make(chan struct{}, 1)})
	}
	s := v.(*serverSlot)
	if srv, ok := s.srv.Load().(server); ok {
		return srv, nil
	}
	select {
	case s.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	defer func() { <-s.lock }()
	if srv, ok := s.srv.Load().(server); ok {
		return srv, nil
	}
	srv, err := p.dialect.open(ctx, pool, q)
	if err != nil {
		return nil, err
	}
	s.srv.Store(srv)
	p.log.Debug("gormbatch: server cancel ready", slog.String("dialect", p.dialectName), slog.String("server", srv.name()))
	return srv, nil
}

// inFlight returns the semaphore that bounds batch queries across batches,
// sized at the first batch from the pool's MaxOpenConns, and its size
// (0 = unbounded).
func (p *Plugin) inFlight(db *gorm.DB) (*semaphore.Weighted, int) {
	p.slotsOnce.Do(func() {
		n := p.cfg.MaxInFlight
		if n == 0 {
			if sqlDB, err := db.DB(); err == nil {
				if m := sqlDB.Stats().MaxOpenConnections; m > 0 {
					n = max(1, m-max(1, m/4))
				}
			}
		}
		if n > 0 {
			p.slots, p.slotsN = semaphore.NewWeighted(int64(n)), n
		}
	})
	return p.slots, p.slotsN
}

// tableOf returns the table of a destination's model type ("users" for
// *[]User), or "" if it is not a model.
func (p *Plugin) tableOf(dest any) string {
	t := reflect.TypeOf(dest)
	for t != nil && (t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct || t.Name() == "" || p.namer == nil {
		return ""
	}
	if v, ok := p.tables.Load(t); ok {
		return v.(string)
	}
	name := p.namer.TableName(t.Name())
	if tb, ok := reflect.New(t).Interface().(schema.Tabler); ok {
		name = tb.TableName()
	}
	p.tables.Store(t, name)
	return name
}
