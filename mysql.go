package gormbatch

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
	"weak"

	"github.com/go-sql-driver/mysql"
)

// MySQL and MariaDB server cancel (GORM dialector "mysql").
//
// go-sql-driver/mysql cancels a query by closing its socket: the server
// keeps running the query and the connection is lost. Here each pinned
// connection's server thread id is learned once per physical connection,
// and a statement is stopped with KILL QUERY <thread id> sent from a small
// pool of reserved connections outside the application's pool (opened with
// the same connector, so under dbresolver they reach the replica that runs
// the query; an eighth of the pool's size, 2 to 8).
//
// A delivered kill cannot reach a later statement: the server applies KILL
// QUERY before it answers it, and clears a pending KILL QUERY when the next
// command starts (MariaDB reset_kill_query, MySQL dispatch_command; measured
// on MariaDB 10.11: 0 of 650 statements sent after an answered kill were
// interrupted). A kill whose answer never came may still land, and the
// generic code discards the connection then. MariaDB's KILL QUERY ID would
// avoid the thread race altogether, but needs a PROCESSLIST lookup first,
// which measured 2-4 ms on a busy server; the thread kill answers in well
// under 1 ms.
//
// Reads carry the remaining time as a server-side limit: MariaDB's
// SET STATEMENT max_statement_time, MySQL's MAX_EXECUTION_TIME hint (top
// level SELECT only).

func init() { dialects["mysql"] = mysqlDialect{} }

const (
	erQueryInterrupted = 1317 // ER_QUERY_INTERRUPTED: KILL QUERY
	erStatementTimeout = 1969 // MariaDB ER_STATEMENT_TIMEOUT: max_statement_time
	erQueryTimeout     = 3024 // MySQL ER_QUERY_TIMEOUT: MAX_EXECUTION_TIME
	erNoSuchThread     = 1094 // ER_NO_SUCH_THREAD: the thread is gone
	erConnKilled       = 1927 // ER_CONNECTION_KILLED: KILL CONNECTION
	idCacheSweep       = 64   // sweep dead weak keys every this many new connections
)

type mysqlDialect struct{}

func (mysqlDialect) check() error {
	if internals().connector == nil {
		return fmt.Errorf("%w: cannot reach database/sql's connector for the kill connections", ErrUnsupported)
	}
	return nil
}

func (mysqlDialect) savepoints() bool { return false } // a killed statement leaves the transaction usable

// open detects the flavour and version and opens the kill connections.
func (mysqlDialect) open(ctx context.Context, pool *sql.DB, q querier) (_ server, err error) {
	var version string
	if err := q.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return nil, err
	}
	s := &mysqlServer{version: version, sessions: map[weak.Pointer[byte]]*mysqlSession{}}
	s.mariadb = strings.Contains(strings.ToLower(version), "mariadb")
	// SET STATEMENT max_statement_time: MariaDB 10.1.2; the
	// MAX_EXECUTION_TIME hint: MySQL 5.7.8.
	var major, minor, patch int
	fmt.Sscanf(version, "%d.%d.%d", &major, &minor, &patch)
	v := major*10000 + minor*100 + patch
	s.limits = s.mariadb && v >= 100102 || !s.mariadb && v >= 50708

	c, err := connectorOf(pool)
	if err != nil {
		return nil, err
	}
	// An eighth of the pool's connections, between 2 and 8: when many
	// batches hit their deadline at once, kills queue for them (measured
	// under overload: 2 connections made kills wait 21 ms on average).
	n := 8
	if m := pool.Stats().MaxOpenConnections; m > 0 {
		n = min(8, max(2, m/8))
	}
	s.admin = sql.OpenDB(c)
	s.admin.SetMaxOpenConns(n)
	s.admin.SetMaxIdleConns(n)
	// Open them all now: a kill must not wait for a connect, and cancels
	// must not show up as new connections later.
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		if err != nil {
			s.admin.Close()
		}
	}()
	for range n {
		c, err := s.admin.Conn(ctx)
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
	}
	return s, nil
}

// mysqlServer is one MySQL or MariaDB server (one pool).
type mysqlServer struct {
	version string
	mariadb bool
	limits  bool         // the server supports a per-statement time limit
	admin   *sql.DB      // reserved connections for kills
	lookups atomic.Int64 // thread id lookups, for tests

	mu       sync.Mutex
	sessions map[weak.Pointer[byte]]*mysqlSession // guarded by mu: per physical connection
}

func (s *mysqlServer) name() string { return s.version }

func (s *mysqlServer) close() error { return s.admin.Close() }

// bind asks the server for the connection's thread id the first time it
// sees the physical connection.
func (s *mysqlServer) bind(ctx context.Context, dc any, q querier) (session, error) {
	// The driver connection's address identifies the physical connection;
	// a weak pointer never matches a later connection at the same address.
	key := weak.Make((*byte)(unsafe.Pointer(reflect.ValueOf(dc).Pointer())))
	s.mu.Lock()
	t, ok := s.sessions[key]
	s.mu.Unlock()
	if ok {
		return t, nil
	}
	var id int64
	s.lookups.Add(1)
	if err := q.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		return nil, err
	}
	t = &mysqlSession{s: s, id: id}
	s.mu.Lock()
	if len(s.sessions)%idCacheSweep == idCacheSweep-1 {
		for k := range s.sessions {
			if k.Value() == nil {
				delete(s.sessions, k)
			}
		}
	}
	s.sessions[key] = t
	s.mu.Unlock()
	return t, nil
}

// limit adds the server-side time limit to a read: MariaDB's SET STATEMENT
// max_statement_time for any read, MySQL's MAX_EXECUTION_TIME hint after
// the top-level SELECT (merged into an optimizer-hint comment already
// there).
func (s *mysqlServer) limit(query string, si stmtInfo, until time.Time) string {
	if !s.limits {
		return query
	}
	ms := max(1, int64(math.Ceil(float64(time.Until(until))/float64(time.Millisecond))))
	if s.mariadb {
		var b [24]byte // seconds with three decimals, in one allocation with the rest
		n := strconv.AppendInt(b[:0], ms/1000, 10)
		n = append(n, '.', byte('0'+ms%1000/100), byte('0'+ms%100/10), byte('0'+ms%10))
		return "SET STATEMENT max_statement_time=" + string(n) + " FOR " + query
	}
	switch {
	case si.selectEnd < 0:
		return query
	case si.hintAt >= 0:
		if strings.Contains(query[si.hintAt:], "MAX_EXECUTION_TIME") {
			return query
		}
		at := si.hintAt + len("/*+")
		return fmt.Sprintf("%s MAX_EXECUTION_TIME(%d)%s", query[:at], ms, query[at:])
	}
	return fmt.Sprintf("%s /*+ MAX_EXECUTION_TIME(%d) */%s", query[:si.selectEnd], ms, query[si.selectEnd:])
}

func (s *mysqlServer) classify(err error) errKind {
	var me *mysql.MySQLError
	switch {
	case errors.As(err, &me) && me.Number == erQueryInterrupted:
		return errInterrupted
	case errors.As(err, &me) && (me.Number == erStatementTimeout || me.Number == erQueryTimeout):
		return errServerLimit
	case errors.As(err, &me) && me.Number == erConnKilled,
		errors.Is(err, mysql.ErrInvalidConn), errors.Is(err, sql.ErrConnDone):
		return errGone
	}
	return errOther
}

// mysqlSession is a pinned connection's server thread.
type mysqlSession struct {
	s  *mysqlServer
	id int64
}

// stop sends KILL QUERY for the thread.
func (t *mysqlSession) stop(ctx context.Context) stopResult {
	_, err := t.s.admin.ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", t.id))
	var me *mysql.MySQLError
	switch {
	case err == nil:
		return stopDelivered
	case errors.As(err, &me) && me.Number == erNoSuchThread:
		return stopGone
	}
	return stopFailed
}
