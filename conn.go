package gormbatch

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// pin is a connection checked out of one pool for one batch query. Every
// statement of the query on that pool runs on it, and release returns it.
type pin struct {
	pool        *sql.DB
	conn        *sql.Conn
	target      *target // server identity for kills; nil without server cancel
	sc          *stmtConn
	killed      bool // a kill was sent to its thread
	interrupted bool // a statement on it failed with ER_QUERY_INTERRUPTED
}

// Causes given to the driver's context when it is cancelled as a fallback.
var (
	errGraceOver  = errors.New("gormbatch: query did not end within KillGrace of its cancel")
	errThreadGone = errors.New("gormbatch: the query's server thread is gone")
)

// pin returns the statement connection for pool, checking a connection out
// on first use. Waiting for it respects the query's context and counts as
// waiting time.
func (q *query) pin(ctx context.Context, pool *sql.DB) (*stmtConn, error) {
	for _, p := range q.pins {
		if p.pool == pool {
			return p.sc, nil
		}
	}
	t0 := time.Now()
	conn, err := pool.Conn(ctx)
	q.connWait += time.Since(t0)
	if err != nil {
		return nil, err
	}
	p := &pin{pool: pool, conn: conn}
	p.sc = &stmtConn{q: q, pin: p}
	q.pins = append(q.pins, p)
	if q.p.cancel {
		q.watch()
		// Setup sees the driver's context: it may finish within the grace
		// period after the deadline (so the next batch finds the server
		// ready), and a stalled network is cut then.
		if p.target, err = q.p.server(pool).bind(q.hard, conn); err != nil {
			return nil, err
		}
	}
	return p.sc, nil
}

// watch sets up server cancel for the query once: the driver gets a context
// without the soft deadline, and a watcher kills the running statement when
// the soft context ends, then cuts the socket if it does not return within
// the grace period.
func (q *query) watch() {
	if q.stopWatch != nil {
		return
	}
	q.hard, q.hardStop = context.WithCancelCause(context.WithoutCancel(q.ctx))
	q.ended, q.watchDone = make(chan struct{}), make(chan struct{})
	q.stopWatch = context.AfterFunc(q.ctx, q.onCancel)
}

// onCancel runs once, on its own goroutine, when the soft context ends.
// From then on begin refuses new statements, and release waits for onCancel
// before any connection goes back to the pool, so the kill can reach only
// the statement that was running; the lock is held just to read it.
// Whatever still runs then (the killed statement, connection setup) gets
// the rest of the grace period before the driver's context is cancelled.
func (q *query) onCancel() {
	defer close(q.watchDone)
	t0 := time.Now()
	grace := q.p.cfg.KillGrace
	q.mu.Lock()
	p := q.active
	q.mu.Unlock()
	if p != nil && p.target != nil {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		killed, err := p.target.kill(ctx)
		cancel()
		if killed || err != nil { // an undelivered kill may still land
			q.mu.Lock()
			q.killed, p.killed = true, true
			q.mu.Unlock()
		}
		switch {
		case err != nil:
			q.hardStop(err)
			return
		case !killed: // no such thread: the connection is dead, do not wait for it
			q.hardStop(errThreadGone)
			return
		}
	}
	t := time.NewTimer(grace - time.Since(t0))
	defer t.Stop()
	select {
	case <-t.C:
		q.hardStop(errGraceOver)
	case <-q.ended:
	}
}

// begin is called before every statement sent on a pinned connection. It
// refuses statements once the query's context is done, marks the connection
// active for the kill watcher, and returns the context the driver sees and
// the SQL to send (with the server-side deadline for reads).
func (q *query) begin(ctx context.Context, p *pin, query string, read bool) (context.Context, string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ctx.Err() != nil {
		q.interfered = true
		return nil, "", context.Cause(q.ctx)
	}
	q.active = p
	if p.target == nil {
		return ctx, query, nil
	}
	if dl, ok := q.ctx.Deadline(); ok && read && !q.p.cfg.NoServerDeadline {
		query = p.target.withDeadline(query, time.Until(dl))
	}
	return q.hard, query, nil
}

// stmtConn is the gorm.ConnPool a batch statement runs on: its pinned
// connection, seen through begin.
type stmtConn struct {
	q   *query
	pin *pin
}

// PrepareContext, ExecContext, QueryContext and QueryRowContext make
// stmtConn a gorm.ConnPool.
func (c *stmtConn) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	ctx, query, err := c.q.begin(ctx, c.pin, query, false)
	if err != nil {
		return nil, err
	}
	return c.pin.conn.PrepareContext(ctx, query)
}

func (c *stmtConn) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	ctx, query, err := c.q.begin(ctx, c.pin, query, false)
	if err != nil {
		return nil, err
	}
	return c.pin.conn.ExecContext(ctx, query, args...)
}

func (c *stmtConn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	ctx, query, err := c.q.begin(ctx, c.pin, query, true)
	if err != nil {
		return nil, err
	}
	return c.pin.conn.QueryContext(ctx, query, args...)
}

func (c *stmtConn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	dctx, query, err := c.q.begin(ctx, c.pin, query, true)
	if err != nil {
		// A *sql.Row cannot carry an error; a done context makes
		// database/sql return one without touching the connection.
		return c.pin.conn.QueryRowContext(c.q.ctx, query, args...)
	}
	return c.pin.conn.QueryRowContext(dctx, query, args...)
}
