package gormbatch

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
	"weak"

	"github.com/go-sql-driver/mysql"
)

// MySQL and MariaDB server cancel.
//
// go-sql-driver/mysql cancels a query by closing its socket: the server
// keeps running the query and the connection is lost. Instead, gormbatch
// pins each batch query's connection, learns its server thread id once per
// physical connection, hides the soft deadline from the driver, and when the
// query's context ends sends KILL QUERY <thread id> from a reserved
// connection outside the application's pool. The kill can reach no other
// statement:
//
//   - once the query's context has ended, begin refuses to send another
//     statement on that connection, so the only statement that can be
//     running is the one the kill is meant for;
//   - release waits for the kill to be answered before the connection goes
//     back to the pool;
//   - if no statement was seen interrupted (the kill may have landed just
//     after its statement ended), a DO SLEEP(0) consumes it before reuse,
//     as MySqlConnector does; servers also clear a pending KILL QUERY when
//     the next command starts (MariaDB reset_kill_query, MySQL
//     dispatch_command).
//
// MariaDB's KILL QUERY ID would avoid the last step, but needs a
// PROCESSLIST lookup first, which measured 2-4 ms on a busy server; the
// thread kill answers in well under 1 ms.
//
// If the kill cannot be sent or the statement does not return within
// Config.KillGrace, the driver's context is cancelled (socket closed,
// connection discarded): Wait is never held longer than deadline + grace.

const (
	erQueryInterrupted  = 1317 // ER_QUERY_INTERRUPTED: KILL QUERY
	erStatementTimeout  = 1969 // MariaDB ER_STATEMENT_TIMEOUT: max_statement_time
	erQueryTimeout      = 3024 // MySQL ER_QUERY_TIMEOUT: MAX_EXECUTION_TIME
	erNoSuchThread      = 1094 // ER_NO_SUCH_THREAD: the thread is gone
	adminPoolSize       = 2
	idCacheSweepAtLeast = 64
)

func supportsServerCancel(dialect string) bool { return dialect == "mysql" }

// isServerTimeout reports a statement stopped by its server-side time limit.
func isServerTimeout(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == erStatementTimeout || me.Number == erQueryTimeout)
}

// server is what gormbatch knows of one MySQL/MariaDB server (one pool):
// its flavour, a reserved admin pool for kills, and the thread id of each
// physical connection it has seen.
type server struct {
	pool     *sql.DB
	lookups  atomic.Int64 // connection id queries
	consumed atomic.Int64 // DO SLEEP(0) after a kill no statement took

	lock    chan struct{} // one slot: guards init
	ready   atomic.Bool   // init succeeded; the fields below are set
	mariadb bool
	limits  bool // the server supports a per-statement time limit
	admin   *sql.DB

	mu  sync.Mutex
	ids map[weak.Pointer[byte]]int64
}

// target is a thread on a server: what a kill needs.
type target struct {
	s  *server
	id int64
}

func (p *Plugin) server(pool *sql.DB) *server {
	s, _ := p.servers.LoadOrStore(pool, &server{pool: pool, lock: make(chan struct{}, 1), ids: map[weak.Pointer[byte]]int64{}})
	return s.(*server)
}

// Close closes the reserved kill connections the plugin opened. Call it when
// closing the *gorm.DB; batches started afterwards reopen them.
func (p *Plugin) Close() error {
	var errs []error
	p.servers.Range(func(k, v any) bool {
		p.servers.Delete(k)
		s := v.(*server)
		s.lock <- struct{}{}
		if s.ready.Load() {
			errs = append(errs, s.admin.Close())
		}
		<-s.lock
		return true
	})
	return errors.Join(errs...)
}

// init detects the flavour and opens the admin pool, once per server. A
// failed attempt (a cut or stalled connection) leaves nothing behind and the
// next query tries again; waiting for another query's attempt respects the
// caller's context.
func (s *server) init(ctx context.Context, conn *sql.Conn) (err error) {
	if s.ready.Load() {
		return nil
	}
	select {
	case s.lock <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer func() { <-s.lock }()
	if s.ready.Load() {
		return nil
	}
	var version string
	if err := conn.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return err
	}
	s.mariadb = strings.Contains(strings.ToLower(version), "mariadb")
	// SET STATEMENT max_statement_time: MariaDB 10.1.2; the
	// MAX_EXECUTION_TIME hint: MySQL 5.7.8.
	var major, minor, patch int
	fmt.Sscanf(version, "%d.%d.%d", &major, &minor, &patch)
	v := major*10000 + minor*100 + patch
	s.limits = s.mariadb && v >= 100102 || !s.mariadb && v >= 50708
	c, err := connectorOf(s.pool)
	if err != nil {
		return err
	}
	admin := sql.OpenDB(c)
	admin.SetMaxOpenConns(adminPoolSize)
	admin.SetMaxIdleConns(adminPoolSize)
	// Open them all now: a kill must not wait for a connect, and cancels
	// must not show up as new connections later.
	var conns []*sql.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		if err != nil {
			admin.Close()
		}
	}()
	for range adminPoolSize {
		c, err := admin.Conn(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	s.admin = admin
	s.ready.Store(true)
	return nil
}

// bind returns the target for a pinned connection, asking the server for
// the connection's thread id only the first time it sees the physical
// connection.
func (s *server) bind(ctx context.Context, conn *sql.Conn) (*target, error) {
	if err := s.init(ctx, conn); err != nil {
		return nil, fmt.Errorf("gormbatch: server cancel setup: %w", err)
	}
	var key weak.Pointer[byte]
	if err := conn.Raw(func(dc any) error {
		// The driver connection's address identifies the physical
		// connection; a weak pointer never matches a later connection that
		// reuses the address.
		key = weak.Make((*byte)(unsafe.Pointer(reflect.ValueOf(dc).Pointer())))
		return nil
	}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	id, ok := s.ids[key]
	s.mu.Unlock()
	if ok {
		return &target{s: s, id: id}, nil
	}
	s.lookups.Add(1)
	if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if len(s.ids) >= idCacheSweepAtLeast && len(s.ids)%idCacheSweepAtLeast == 0 {
		for k := range s.ids {
			if k.Value() == nil {
				delete(s.ids, k)
			}
		}
	}
	s.ids[key] = id
	s.mu.Unlock()
	return &target{s: s, id: id}, nil
}

// kill sends KILL QUERY for the target thread. It reports whether the kill
// was delivered; false with a nil error means the thread is gone on the
// server (its connection is dead, whatever the network says).
func (t *target) kill(ctx context.Context) (bool, error) {
	_, err := t.s.admin.ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", t.id))
	if isMySQLError(err, erNoSuchThread) {
		return false, nil
	}
	return err == nil, err
}

// consume clears a kill that reached the thread after its statement ended
// (MySQL bug #45679), before the connection is reused: the server either
// reports the pending kill on this statement or has already cleared it at
// the start of the command. Called only when no statement was seen
// interrupted.
func (s *server) consume(conn *sql.Conn, grace time.Duration) {
	s.consumed.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	conn.ExecContext(ctx, "DO SLEEP(0)")
}

// withDeadline adds the server-side time limit to a read statement:
// MariaDB SET STATEMENT max_statement_time, MySQL's MAX_EXECUTION_TIME hint
// (top-level SELECT only). Other statements are sent unchanged.
func (t *target) withDeadline(query string, remaining time.Duration) string {
	if !t.s.limits {
		return query
	}
	ms := int64(math.Ceil(float64(remaining) / float64(time.Millisecond)))
	if ms < 1 {
		ms = 1
	}
	head := strings.ToUpper(strings.TrimLeft(query, " \t\r\n("))
	isSelect := strings.HasPrefix(head, "SELECT")
	if t.s.mariadb {
		if isSelect || strings.HasPrefix(head, "WITH") {
			return fmt.Sprintf("SET STATEMENT max_statement_time=%d.%03d FOR %s", ms/1000, ms%1000, query)
		}
		return query
	}
	if !isSelect || strings.Contains(query, "/*+") {
		return query
	}
	i := strings.Index(strings.ToUpper(query), "SELECT") + len("SELECT")
	return fmt.Sprintf("%s /*+ MAX_EXECUTION_TIME(%d) */%s", query[:i], ms, query[i:])
}

func isMySQLError(err error, number uint16) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == number
}

// connectorOf returns the connector of a *sql.DB, so the admin pool opens
// connections to the same server with the same credentials, outside the
// application's pool (and under dbresolver, to the replica whose pool it
// is). database/sql does not export it; the field has been stable since Go
// 1.10, and a change is reported as an error, never a panic.
func connectorOf(db *sql.DB) (driver.Connector, error) {
	f := reflect.ValueOf(db).Elem().FieldByName("connector")
	if !f.IsValid() || f.Type() != reflect.TypeFor[driver.Connector]() {
		return nil, fmt.Errorf("%w: cannot reach the pool's connector", ErrUnsupported)
	}
	c, _ := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(driver.Connector)
	if c == nil {
		return nil, fmt.Errorf("%w: pool has no connector", ErrUnsupported)
	}
	// Wrap it so closing the admin pool never closes the application's
	// connector (sql.DB.Close closes connectors that are io.Closers).
	return struct{ driver.Connector }{c}, nil
}
