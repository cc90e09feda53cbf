package gormbatch

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"
	"unsafe"
)

// Server cancel: the seam between the generic code and one kind of server.
//
// The generic code (conn.go, watch.go) pins each batch query's connection,
// hides the soft deadline from the driver (most drivers cancel by closing
// the socket), refuses new statements on the connection once the query's
// context has ended, and then asks the connection's session to stop the
// statement that may be running. Everything specific to a server lives in
// one file per dialect (mysql.go, postgres.go), which registers itself in
// dialects under GORM's dialector name; a new server is a new file.
//
// The contract every implementation keeps:
//
//   - open runs once per connection pool (one server) and may be retried
//     after an error; bind runs once per pinned connection, before its first
//     statement of a batch query, on the query's goroutine, where talking to
//     the server on the connection itself is allowed (the statement has not
//     started). Neither may keep a reference to the *sql.Conn.
//   - stop runs on the watcher's goroutine while a statement may be running
//     on the connection; it must not use the connection itself, and must
//     return by the time ctx ends.
//   - stop reports stopDelivered only once the server has applied the stop
//     in a way that cannot reach a statement started later on the same
//     connection. The generic code sends nothing on the connection until
//     stop has returned, and discards the connection after any other answer
//     (it may still land), so no dialect needs a "consume" statement.
//   - a session that can close its connection's socket itself implements
//     cutter; otherwise the generic code cuts by ending the driver's
//     context (the driver then closes the socket). Either way the
//     connection is discarded afterwards.
//   - classify maps a statement's error to what the status decision needs;
//     it never decides a status itself (query.go endLocked does, from timing).
type dialect interface {
	// check reports, once at Initialize, whether server cancel can work
	// in this process (an error wrapping ErrUnsupported if not).
	check() error
	// open prepares server cancel for pool; q runs statements on one of
	// its connections (pinned, idle) to learn what open needs.
	open(ctx context.Context, pool *sql.DB, q querier) (server, error)
	// savepoints reports that a stopped statement aborts the transaction
	// it runs in unless it is rolled back to a savepoint.
	savepoints() bool
}

// server is server cancel for one connection pool. Its methods are safe for
// concurrent use.
type server interface {
	// bind returns the session of a pinned connection: dc is its driver
	// connection, q runs a statement on it. ctx is the driver's context.
	bind(ctx context.Context, dc any, q querier) (session, error)
	// limit returns a read statement carrying a server-side limit that
	// stops it at until, or query unchanged if the server has none.
	limit(query string, s stmtInfo, until time.Time) string
	// classify tells what a statement's error means.
	classify(err error) errKind
	// name describes the server for logs ("MariaDB 10.11.19").
	name() string
	// close releases what open opened.
	close() error
}

// session stops the statement running on one pinned connection.
type session interface {
	// stop asks the server to stop the connection's running statement and
	// waits for its answer until ctx ends; see the contract above.
	stop(ctx context.Context) stopResult
}

// cutter is a session that can make a statement blocked on its connection
// return at once, by closing the socket without waiting for anything.
type cutter interface{ cut() }

// stopResult is the answer to a stop.
type stopResult uint8

const (
	stopNone      stopResult = iota // not sent (or no answer yet)
	stopDelivered                   // applied; cannot reach a later statement
	stopGone                        // the session no longer exists: the connection is dead
	stopFailed                      // not confirmed: it may still land
)

// errKind is what a statement's error means to the plugin.
type errKind int

const (
	errOther       errKind = iota
	errInterrupted         // stopped by a kill or cancel (ours or someone else's)
	errServerLimit         // stopped by the server-side limit that limit added
	errGone                // the session is gone; the connection is dead
)

// querier runs a statement on one connection: a pinned *sql.Conn or a
// transaction.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// dialects maps a GORM dialector name to its server cancel; each dialect's
// file adds itself in an init function.
var dialects = map[string]dialect{}

// errNoServerCancel is the cause of a fallback to the driver's own cancel.
var errNoServerCancel = errors.New("server cancel unavailable")

// database/sql keeps two things the plugin needs unexported: a pool's
// connector (the MySQL dialect opens its kill connections with it) and a
// transaction's driver connection (for server cancel inside transactions).
// Both fields have been stable since Go 1.10; they are looked up once, and
// if they are missing server cancel falls back or is refused, never panics.
var internals = sync.OnceValue(func() (f struct{ connector, txConn []int }) {
	c, ok := reflect.TypeFor[sql.DB]().FieldByName("connector")
	if ok && c.Type == reflect.TypeFor[driver.Connector]() {
		f.connector = c.Index
	}
	dc, ok := reflect.TypeFor[sql.Tx]().FieldByName("dc")
	if ok && dc.Type.Kind() == reflect.Pointer && dc.Type.Elem().Kind() == reflect.Struct {
		if ci, ok := dc.Type.Elem().FieldByName("ci"); ok && ci.Type == reflect.TypeFor[driver.Conn]() {
			f.txConn = append(dc.Index, ci.Index...)
		}
	}
	return f
})

// unexported reads the unexported field at index of the struct *p.
func unexported[T any](p any, index []int) (v T, ok bool) {
	rv := reflect.ValueOf(p).Elem()
	for i, x := range index {
		if i > 0 {
			if rv.IsNil() {
				return v, false
			}
			rv = rv.Elem()
		}
		rv = rv.Field(x)
	}
	v, ok = reflect.NewAt(rv.Type(), unsafe.Pointer(rv.UnsafeAddr())).Elem().Interface().(T)
	return v, ok
}

// connectorOf returns the connector of a *sql.DB, wrapped so that closing a
// pool opened on it never closes the application's connector.
func connectorOf(db *sql.DB) (driver.Connector, error) {
	idx := internals().connector
	if idx == nil {
		return nil, fmt.Errorf("%w: cannot reach the pool's connector", ErrUnsupported)
	}
	c, ok := unexported[driver.Connector](db, idx)
	if !ok || c == nil {
		return nil, fmt.Errorf("%w: pool has no connector", ErrUnsupported)
	}
	return struct{ driver.Connector }{c}, nil
}

// txDriverConn returns the driver connection of a transaction.
func txDriverConn(tx *sql.Tx) (any, bool) {
	idx := internals().txConn
	if idx == nil {
		return nil, false
	}
	c, ok := unexported[driver.Conn](tx, idx)
	return c, ok && c != nil
}

// rawConn returns the driver connection of a pinned *sql.Conn. It is kept
// only as an identity and for what a dialect may do concurrently with a
// running statement (PostgreSQL's cancel request).
func rawConn(c *sql.Conn) (dc any, err error) {
	err = c.Raw(func(d any) error { dc = d; return nil })
	return dc, err
}
