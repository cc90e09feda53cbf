package main

// The stop clock: timestamps of a traced batch's cancel path, for the
// stop-time breakdown. A traced batch carries a *stopTrace in its context.
// The plugin's side is seen through a gormbatch.Hook (stopHook): the batch
// deadline (StartBatch), kill sent and kill answered (Event), the query's
// end, which comes after its connection is back in the pool (EndQuery), or
// when the query was settled before its connection was back (a stopped
// finder settles at its deadline), the connection's return
// (EventReclaimed). The
// moment the statement itself returned is seen below the plugin, in the
// database driver: on MariaDB by clockConn, a driver.Conn wrapper put around
// every connection of the instrumented pools by their countingConnector; on
// PostgreSQL by pgClock, a pgx QueryTracer (the plugin's PostgreSQL cancel
// needs pgx's own *stdlib.Conn, which a wrapper would hide). Only statements
// carrying heavyTag in a traced context are timestamped.

import (
	"context"
	"database/sql/driver"
	"errors"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/gormbatch/gormbatch"
	"github.com/jackc/pgx/v5"
)

type (
	traceKey struct{} // context key: *stopTrace
	queryKey struct{} // context key: the query's index in its batch
	pgEndKey struct{} // context key: the mark pgClock calls at the end
)

// stopTrace holds the timestamps of one batch.
type stopTrace struct {
	mu       sync.Mutex
	deadline time.Time    // the batch deadline (plugin: BatchInfo.Deadline; naive: the context's)
	waited   time.Time    // Wait (naive: g.Wait) returned
	q        []queryMarks // by query index
}

// queryMarks are one query's moments; zero if they did not happen.
type queryMarks struct {
	killSent     time.Time // EventKillSent (the first)
	killAnswered time.Time // EventKillAnswered or EventKillFailed (the first)
	returned     time.Time // the heavy statement returned to the driver's caller
	ended        time.Time // EndQuery
	reclaimed    time.Time // EventReclaimed: the connection of a query settled early is back
	handoff      bool
	killFailed   bool
	serverLimit  bool
}

func newStopTrace(queries int) *stopTrace { return &stopTrace{q: make([]queryMarks, queries)} }

func withTrace(ctx context.Context, tr *stopTrace) context.Context {
	return context.WithValue(ctx, traceKey{}, tr)
}

func traceOf(ctx context.Context) *stopTrace {
	tr, _ := ctx.Value(traceKey{}).(*stopTrace)
	return tr
}

// mark runs f on query i's marks under the lock.
func (tr *stopTrace) mark(i int, f func(m *queryMarks)) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if i >= 0 && i < len(tr.q) {
		f(&tr.q[i])
	}
}

func (tr *stopTrace) setDeadline(t time.Time) {
	tr.mu.Lock()
	tr.deadline = t
	tr.mu.Unlock()
}

func (tr *stopTrace) setWaited() {
	t := time.Now()
	tr.mu.Lock()
	tr.waited = t
	tr.mu.Unlock()
}

// overshoot is how long after the deadline Wait returned.
func (tr *stopTrace) overshoot() time.Duration {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.waited.Sub(tr.deadline)
}

// stopHook feeds the plugin's side of traced batches into their stopTrace;
// untraced batches cost it a context lookup per call.
type stopHook struct{ gormbatch.NopHook }

func (stopHook) StartBatch(ctx context.Context, b gormbatch.BatchInfo) context.Context {
	if tr := traceOf(ctx); tr != nil {
		tr.setDeadline(b.Deadline)
	}
	return ctx
}

func (stopHook) StartQuery(ctx context.Context, q gormbatch.QueryInfo) context.Context {
	if traceOf(ctx) != nil {
		return context.WithValue(ctx, queryKey{}, q.Index)
	}
	return ctx
}

func (stopHook) EndQuery(ctx context.Context, q gormbatch.QueryInfo, _ gormbatch.Result) {
	if tr := traceOf(ctx); tr != nil {
		t := time.Now()
		tr.mark(q.Index, func(m *queryMarks) { m.ended = t })
	}
}

func (stopHook) Event(ctx context.Context, q gormbatch.QueryInfo, e gormbatch.Event) {
	tr := traceOf(ctx)
	if tr == nil {
		return
	}
	t := time.Now()
	tr.mark(q.Index, func(m *queryMarks) {
		switch e.Kind {
		case gormbatch.EventKillSent:
			if m.killSent.IsZero() {
				m.killSent = t
			}
		case gormbatch.EventKillAnswered, gormbatch.EventKillFailed:
			if m.killAnswered.IsZero() {
				m.killAnswered = t
			}
			m.killFailed = m.killFailed || e.Kind == gormbatch.EventKillFailed
		case gormbatch.EventHandoff:
			m.handoff = true
		case gormbatch.EventReclaimed:
			m.reclaimed = t
		case gormbatch.EventServerLimit:
			m.serverLimit = true
		}
	})
}

// returnMark returns the function that timestamps the return of a traced
// heavy statement (the first call counts), or nil for any other statement.
func returnMark(ctx context.Context, query string) func() {
	if !strings.Contains(query, heavyTag) {
		return nil
	}
	tr := traceOf(ctx)
	i, ok := ctx.Value(queryKey{}).(int)
	if tr == nil || !ok {
		return nil
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			t := time.Now()
			tr.mark(i, func(m *queryMarks) { m.returned = t })
		})
	}
}

// clockConn is a driver.Conn that timestamps when a traced heavy statement
// returns: QueryContext returning an error, or its rows' Next returning
// io.EOF or an error, or Close, whichever is first. Every other call is
// passed through, with the optional interfaces of the wrapped connection.
type clockConn struct{ driver.Conn }

func (c *clockConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	qc, ok := c.Conn.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	done := returnMark(ctx, query)
	rows, err := qc.QueryContext(ctx, query, args)
	switch {
	case done == nil || errors.Is(err, driver.ErrSkip):
		return rows, err
	case err != nil:
		done()
		return nil, err
	}
	return &clockRows{Rows: rows, done: done}, nil
}

func (c *clockConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if ec, ok := c.Conn.(driver.ExecerContext); ok {
		return ec.ExecContext(ctx, query, args)
	}
	return nil, driver.ErrSkip
}

func (c *clockConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if pc, ok := c.Conn.(driver.ConnPrepareContext); ok {
		return pc.PrepareContext(ctx, query)
	}
	return c.Conn.Prepare(query)
}

func (c *clockConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if bc, ok := c.Conn.(driver.ConnBeginTx); ok {
		return bc.BeginTx(ctx, opts)
	}
	return c.Conn.Begin() //nolint:staticcheck // the driver has nothing else
}

func (c *clockConn) Ping(ctx context.Context) error {
	if p, ok := c.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *clockConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *clockConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *clockConn) CheckNamedValue(nv *driver.NamedValue) error {
	if ch, ok := c.Conn.(driver.NamedValueChecker); ok {
		return ch.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// clockRows calls done when the statement's last answer is in.
type clockRows struct {
	driver.Rows
	done func()
}

func (r *clockRows) Next(dest []driver.Value) error {
	err := r.Rows.Next(dest)
	if err != nil {
		r.done()
	}
	return err
}

func (r *clockRows) Close() error {
	err := r.Rows.Close()
	r.done()
	return err
}

// pgClock is the PostgreSQL side of clockConn: pgx calls TraceQueryEnd when
// the statement's rows are closed, which its Next does as soon as the last
// row or the error is read.
type pgClock struct{}

func (pgClock) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if done := returnMark(ctx, d.SQL); done != nil {
		return context.WithValue(ctx, pgEndKey{}, done)
	}
	return ctx
}

func (pgClock) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if done, ok := ctx.Value(pgEndKey{}).(func()); ok {
		done()
	}
}

// The steps of the breakdown, in order. Each is measured in ms past the
// batch deadline.
var (
	// The plugin settles a stopped finder at its deadline: Wait returns
	// first, and the stop and the connection's return go on after it.
	pluginSteps = []string{"Wait returned", "kill sent", "kill answered", "statement returned", "connection back"}
	naiveSteps  = []string{"statement returned", "Wait returned"}
)

// pluginMoments returns, for each query of the batch the plugin sent a
// kill for, its moments in ms past the deadline, in pluginSteps order (NaN
// for a moment that did not happen). "connection back" is EndQuery, or
// EventReclaimed for a query settled before its connection was back.
func (tr *stopTrace) pluginMoments() [][]float64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out [][]float64
	for _, m := range tr.q {
		if m.killSent.IsZero() {
			continue
		}
		back := m.ended
		if !m.reclaimed.IsZero() { // the query was settled before its connection was back
			back = m.reclaimed
		}
		out = append(out, tr.since(tr.waited, m.killSent, m.killAnswered, m.returned, back))
	}
	return out
}

// naiveMoments returns, for each heavy statement of the batch, its return
// and the batch's return, in ms past the deadline.
func (tr *stopTrace) naiveMoments() [][]float64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out [][]float64
	for _, m := range tr.q {
		if !m.returned.IsZero() {
			out = append(out, tr.since(m.returned, tr.waited))
		}
	}
	return out
}

func (tr *stopTrace) since(ts ...time.Time) []float64 {
	out := make([]float64, len(ts))
	for i, t := range ts {
		out[i] = math.NaN()
		if !t.IsZero() {
			out[i] = ms(t.Sub(tr.deadline))
		}
	}
	return out
}

// counts returns how many queries were handed off, had a kill fail, were
// stopped by the server-side limit, and ran a heavy statement past the
// deadline without a kill.
func (tr *stopTrace) counts() (handoffs, killFailed, serverLimit, notKilled int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, m := range tr.q {
		if m.handoff {
			handoffs++
		}
		if m.killFailed {
			killFailed++
		}
		if m.serverLimit {
			serverLimit++
		}
		if m.killSent.IsZero() && m.returned.After(tr.deadline) {
			notKilled++
		}
	}
	return
}

// StopStep is one step of the stop-time breakdown.
type StopStep struct {
	Step string `json:"step"`
	N    int    `json:"n"` // stopped statements for which the moment was seen
	// At*: when the step happened, in ms past the deadline (cumulative).
	AtP50 *float64 `json:"at_p50_ms"`
	AtP99 *float64 `json:"at_p99_ms"`
	// Inc*: the step's own duration, from the previous step (the deadline
	// for the first), per statement.
	IncP50 *float64 `json:"inc_p50_ms"`
	IncP99 *float64 `json:"inc_p99_ms"`
}

// breakdown turns per-statement moments into steps.
func breakdown(names []string, moments [][]float64) []StopStep {
	steps := make([]StopStep, len(names))
	for k, name := range names {
		var at, inc []float64
		for _, m := range moments {
			if math.IsNaN(m[k]) {
				continue
			}
			at = append(at, m[k])
			prev := 0.0
			if k > 0 {
				prev = m[k-1]
			}
			if !math.IsNaN(prev) {
				inc = append(inc, m[k]-prev)
			}
		}
		steps[k] = StopStep{Step: name, N: len(at),
			AtP50: finite(round3(percentile(at, 50))), AtP99: finite(round3(percentile(at, 99))),
			IncP50: finite(round3(percentile(inc, 50))), IncP99: finite(round3(percentile(inc, 99)))}
	}
	return steps
}
