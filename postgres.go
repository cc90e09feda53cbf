package gormbatch

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PostgreSQL server cancel (GORM dialector "postgres", on pgx's
// database/sql adapter).
//
// pgx cancels a query by closing the connection (and sending a cancel
// request in the background), so every cancel costs a reconnect. Here a
// statement is stopped with the protocol's cancel request for the pinned
// connection (pgconn.PgConn.CancelRequest: the connection's own pid and
// secret key, no privileges, no extra pool), and the connection is kept.
//
// A cancel reaches whatever the backend runs when it arrives. It cannot
// reach a later statement once the server has closed the cancel connection:
// the server signals the backend before closing it, and a cancel that
// reaches an idle backend is ignored. CancelRequest waits for that close but
// ignores the read's error, so a cancel counts as delivered only if its
// context was still live when it returned (measured: 318 of 500 statements
// sent at once after a cancel were hit; 0 of 500 after waiting for the
// close). Through PgBouncer 1.18 or newer in transaction mode the cancel is
// routed to the right server connection; the connection's pid is then the
// pooler's, which is how a pooler is detected (for logs).
//
// There is no per-statement server deadline: statement_timeout needs a SET
// (a round trip) or a transaction, and pgx's database/sql adapter returns
// only the first result of a multi-statement query. PostgreSQL 14's
// client_connection_check_interval stops a query soon after its client's
// socket is gone; set it on the server as a safety net.

func init() { dialects["postgres"] = postgresDialect{} }

type postgresDialect struct{}

func (postgresDialect) check() error { return nil }

func (postgresDialect) savepoints() bool { return true } // a cancelled statement aborts the transaction

func (postgresDialect) open(ctx context.Context, _ *sql.DB, q querier) (server, error) {
	var version string
	if err := q.QueryRowContext(ctx, "SHOW server_version").Scan(&version); err != nil {
		return nil, err
	}
	if i := strings.IndexByte(version, ' '); i > 0 {
		version = version[:i] // "15.20 (Debian 15.20-0+deb12u1)"
	}
	return &pgServer{version: version}, nil
}

// pgServer is one PostgreSQL server (one pool).
type pgServer struct {
	version string

	mu     sync.Mutex
	probed bool // guarded by mu: a connection's pid was compared with the server's
	pooler bool // guarded by mu: the pid the connection reports is not the backend's
}

func (s *pgServer) name() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pooler {
		return "PostgreSQL " + s.version + " behind a pooler"
	}
	return "PostgreSQL " + s.version
}

func (s *pgServer) close() error { return nil }

// bind takes the connection's *pgconn.PgConn (no I/O); the first time, it
// also compares its pid with the backend's to detect a pooler.
func (s *pgServer) bind(ctx context.Context, dc any, q querier) (session, error) {
	pg := pgConnOf(dc)
	if pg == nil {
		return nil, fmt.Errorf("%w: driver connection %T is not pgx's", errNoServerCancel, dc)
	}
	s.mu.Lock()
	probed := s.probed
	s.mu.Unlock()
	if !probed {
		// Cut like a statement if ctx ends (see cut).
		stop := context.AfterFunc(ctx, func() { pg.Conn().Close() })
		var pid uint32
		err := q.QueryRowContext(context.WithoutCancel(ctx), "SELECT pg_backend_pid()").Scan(&pid)
		stop()
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.probed, s.pooler = true, pid != pg.PID()
		s.mu.Unlock()
	}
	return pgSession{pg}, nil
}

// pgConnOf returns the pgx connection of a driver connection: pgx's
// database/sql adapter, or a wrapper of it with an Unwrap method.
func pgConnOf(dc any) *pgconn.PgConn {
	for {
		switch c := dc.(type) {
		case interface{ Conn() *pgx.Conn }:
			return c.Conn().PgConn()
		case interface{ Unwrap() driver.Conn }:
			dc = c.Unwrap()
		default:
			return nil
		}
	}
}

func (s *pgServer) limit(query string, _ stmtInfo, _ time.Time) string { return query }

func (s *pgServer) classify(err error) errKind {
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && pe.Code == "57014": // query_canceled
		return errInterrupted
	case errors.As(err, &pe) && (pe.Code == "57P01" || strings.HasPrefix(pe.Code, "08")):
		return errGone // terminated, or a connection exception
	case errors.Is(err, driver.ErrBadConn):
		return errGone
	}
	return errOther
}

// pgSession is a pinned connection's backend.
type pgSession struct{ pg *pgconn.PgConn }

func (s pgSession) stop(ctx context.Context) stopResult {
	if err := s.pg.CancelRequest(ctx); err != nil || ctx.Err() != nil {
		return stopFailed
	}
	return stopDelivered
}

// cut closes the socket itself: cancelling pgx's context would run the
// application's pgx cancel handler, which may send a cancel request, sleep
// 100 ms and close only after its DeadlineDelay
// (CancelRequestContextWatcherHandler).
func (s pgSession) cut() { s.pg.Conn().Close() }
