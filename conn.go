package gormbatch

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
)

// Pinned connections. Every statement of a batch query runs on a connection
// the query holds for its whole run: one checked out of each pool it uses
// (GORM's, or the one dbresolver chose), or the transaction's. Statements
// reach it through stmtConn, whose methods pass begin: the one place that
// refuses writes, refuses anything once the query's context has ended, adds
// the server-side limit, and tells the watcher a statement may be running.

// pin is one connection a batch query holds.
type pin struct {
	key  any       // what GORM's statement named: a *sql.DB, *sql.Tx or *sql.Conn
	on   querier   // what statements run on
	conn *sql.Conn // checked out by the query, which returns it; nil when borrowed (a transaction's)
	srv  server    // nil without server cancel
	sess session   // nil without server cancel
	sc   stmtConn

	// Guarded by the query's watcher.mu.
	active   bool       // a statement may be running on it
	stopSent bool       // the watcher asked the server to stop it
	cut      bool       // its socket was cut
	dead     bool       // a statement reported the session gone
	stop     stopResult // the answer
}

// pinFor returns the statement connection for a GORM connection pool,
// pinning one on first use. Waiting for a pool's connection respects the
// query's context and counts as waiting time.
func (q *query) pinFor(db *gorm.DB, cp gorm.ConnPool) (*stmtConn, error) {
	cp = unwrapPrepared(cp)
	for _, p := range q.pins {
		if p.key == cp {
			return &p.sc, nil
		}
	}
	p := &q.pin0
	if len(q.pins) > 0 {
		p = &pin{}
	}
	p.key = cp
	switch c := cp.(type) {
	case *sql.DB:
		t0 := time.Now()
		conn, err := c.Conn(q.ctx)
		q.mu.Lock()
		q.connWait += time.Since(t0)
		q.mu.Unlock()
		if err != nil {
			return nil, err
		}
		p.on, p.conn = conn, conn
	case querier: // a transaction, a db.Connection conn, or another pool type
		p.on = c
	default:
		return nil, nil
	}
	p.sc = stmtConn{q: q, pin: p}
	q.pins = append(q.pins, p)
	if q.p.dialect != nil {
		if err := q.bind(db, p); err != nil {
			return nil, err
		}
	}
	return &p.sc, nil
}

// unwrapPrepared looks through GORM's PrepareStmt mode: batch statements
// run directly on the pinned connection (prepared by the driver as usual),
// so that they can be stopped on the server.
func unwrapPrepared(cp gorm.ConnPool) gorm.ConnPool {
	for {
		switch c := cp.(type) {
		case *gorm.PreparedStmtDB:
			cp = c.ConnPool
		case *gorm.PreparedStmtTX:
			cp = c.Tx
		default:
			return cp
		}
	}
}

// bind sets up server cancel for a pin: the pool's server (opened once) and
// the connection's session. If that fails, ServerCancelAuto runs the query
// with the driver's own cancel (and says so); ServerCancelRequire fails it.
func (q *query) bind(db *gorm.DB, p *pin) error {
	var pool *sql.DB
	var dc any
	var err error
	switch c := p.key.(type) {
	case *sql.DB:
		pool = c
		dc, err = rawConn(p.conn)
	case *sql.Tx:
		if pool, err = db.DB(); err == nil {
			var ok bool
			if dc, ok = txDriverConn(c); !ok {
				err = fmt.Errorf("%w: cannot reach the transaction's driver connection", errNoServerCancel)
			}
		}
	case *sql.Conn: // db.Connection: its pool is GORM's
		if pool, err = db.DB(); err == nil {
			dc, err = rawConn(c)
		}
	default:
		return nil // a pool type of its own: the driver's cancel
	}
	w := q.watch()
	var srv server
	var sess session
	if err == nil {
		srv, err = q.p.server(w, pool, p.on)
	}
	if err == nil {
		sess, err = srv.bind(w, dc, p.on)
	}
	if err != nil {
		q.p.setupFailed(q, err)
		if q.p.cfg.ServerCancel == ServerCancelRequire {
			return fmt.Errorf("gormbatch: server cancel setup: %w", err)
		}
		return nil
	}
	w.mu.Lock()
	p.srv, p.sess = srv, sess
	w.pins = append(w.pins, p)
	w.mu.Unlock()
	return nil
}

// begin is called before every statement on a pinned connection. It returns
// the context the driver sees and the SQL to send.
func (q *query) begin(ctx context.Context, p *pin, query string) (context.Context, string, error) {
	info := q.p.stmts.classify(query)
	if !info.read {
		return nil, "", ErrWriteInBatch
	}
	w := q.w
	if w == nil || p.sess == nil {
		return ctx, query, nil // the driver sees the soft context and cancels itself
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// Kill safety (watch.go): the check and marking it active are one
	// critical section with respect to onCancel. The batch's context is
	// done before onCancel runs for it; the query's may lag an instant.
	if q.ctx.Err() != nil || q.parent.Err() != nil {
		<-q.ctx.Done()
		return nil, "", context.Cause(q.ctx)
	}
	p.active = true
	if dl, ok := q.ctx.Deadline(); ok && !q.p.cfg.NoServerDeadline {
		// KillGrace later than the deadline: the kill stops the
		// statement, the limit is the safety net if it cannot.
		query = p.srv.limit(query, info, dl.Add(q.p.cfg.KillGrace))
	}
	if _, ok := p.sess.(cutter); ok && q.finder {
		// GORM closes a finder's rows on every path (deferred), so none
		// are left for the driver's context to close, and this session
		// cuts without that context: the driver sees one that never ends,
		// and neither database/sql nor the driver starts anything per
		// statement to watch it. A closure may leave rows open: it keeps
		// the watcher's context (TestServerOpenRows).
		return context.WithoutCancel(ctx), query, nil
	}
	if ctx == q.ctx { // no statement-level values (tracing): the query's
		return w, query, nil
	}
	return driverCtx{ctx, w}, query, nil
}

// idle tells the watcher that no statement of the query runs any more.
func (q *query) idle() {
	if w := q.w; w != nil {
		w.mu.Lock()
		for _, p := range w.pins {
			p.active = false
		}
		w.mu.Unlock()
	}
}

// noteErr looks at a finished statement's error (on pin p; nil: any of the
// query's): a stop by the server's own time limit is reported, and a
// session gone makes its connection be discarded.
func (q *query) noteErr(p *pin, err error) {
	w := q.w
	if err == nil || w == nil {
		return
	}
	w.mu.Lock()
	limit := false
	for _, wp := range w.pins {
		if p != nil && wp != p {
			continue
		}
		switch wp.srv.classify(err) {
		case errServerLimit:
			limit = true
		case errGone:
			wp.dead = true
		}
	}
	w.mu.Unlock()
	if limit {
		q.p.emit(q, Event{Kind: EventServerLimit, Err: err})
	}
}

// release returns or discards every pinned connection: once the watcher
// has the answers of the stops it sent, a connection goes back to the pool
// if nothing was sent to it or its stop was delivered, and is discarded
// otherwise. A transaction's connection that is not safe marks the query
// txBroken. It runs on every path, panics included.
func (q *query) release() {
	w := q.w
	if w != nil {
		w.end()
		w.close()
	}
	if q.cancel != nil {
		q.cancel(errEnded) // database/sql closes rows a closure left open
	}
	if q.stopTimer != nil {
		q.stopTimer()
	}
	if w != nil {
		// Open rows (a closure that never closed them) are closed by
		// database/sql when the driver's context ends, not drained.
		w.hardStop(errEnded)
	}
	for _, p := range q.pins {
		keep := w == nil || w.keep(p)
		switch {
		case p.conn != nil && keep:
			p.conn.Close()
		case p.conn != nil:
			discard(p.conn)
		case !keep || q.savepoint && !q.rollback(p):
			q.mu.Lock()
			q.txBroken = true
			q.mu.Unlock()
		}
	}
	q.pins = nil
}

// rollback returns a transaction to the batch's savepoint after a query
// that failed or was stopped (PostgreSQL aborts the transaction then),
// within KillGrace, and reports whether the transaction is usable.
func (q *query) rollback(p *pin) bool {
	q.mu.Lock()
	o := q.w.out
	q.mu.Unlock()
	if o.err == nil && o.panic == nil && !q.w.killed() {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), q.p.cfg.KillGrace)
	defer cancel()
	_, err := p.on.ExecContext(ctx, "ROLLBACK TO SAVEPOINT gormbatch")
	return err == nil
}

// discard closes a pinned connection instead of returning it to the pool.
func discard(c *sql.Conn) {
	c.Raw(func(any) error { return driver.ErrBadConn })
	c.Close()
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
	ctx, query, err := c.q.begin(ctx, c.pin, query)
	if err != nil {
		return nil, err
	}
	return c.pin.on.PrepareContext(ctx, query)
}

func (c *stmtConn) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	ctx, query, err := c.q.begin(ctx, c.pin, query)
	if err != nil {
		return nil, err
	}
	return c.pin.on.ExecContext(ctx, query, args...)
}

func (c *stmtConn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	ctx, query, err := c.q.begin(ctx, c.pin, query)
	if err != nil {
		return nil, err
	}
	return c.pin.on.QueryContext(ctx, query, args...)
}

func (c *stmtConn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	dctx, query, err := c.q.begin(ctx, c.pin, query)
	if err != nil {
		return errRow(err)
	}
	return c.pin.on.QueryRowContext(dctx, query, args...)
}

// errRow returns a *sql.Row holding err: database/sql builds a Row's error
// only from a statement, so this one runs on a driver of its own whose
// statements fail with the error their context carries. Nothing is sent
// anywhere, and the throwaway pool is closed at once (a Row keeps its
// error, not its pool).
func errRow(err error) *sql.Row {
	db := sql.OpenDB(errConnector{})
	defer db.Close()
	return db.QueryRowContext(context.WithValue(context.Background(), errKey{}, err), "")
}

type (
	errKey       struct{}
	errConnector struct{}
	errConn      struct{}
)

func (errConnector) Connect(context.Context) (driver.Conn, error) { return errConn{}, nil }
func (errConnector) Driver() driver.Driver                        { return nil }
func (errConn) Prepare(string) (driver.Stmt, error)               { return nil, errors.ErrUnsupported }
func (errConn) Close() error                                      { return nil }
func (errConn) Begin() (driver.Tx, error)                         { return nil, errors.ErrUnsupported }
func (errConn) QueryContext(ctx context.Context, _ string, _ []driver.NamedValue) (driver.Rows, error) {
	return nil, ctx.Value(errKey{}).(error)
}
