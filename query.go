package gormbatch

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"sync"
	"time"

	"gorm.io/gorm"
)

type ctxKey struct{}

// fromContext returns the batch query a statement belongs to, or nil. The
// query travels in Statement.Context because Settings do not survive
// gorm.G and preload sessions.
func fromContext(ctx context.Context) *query {
	if ctx == nil {
		return nil
	}
	q, _ := ctx.Value(ctxKey{}).(*query)
	return q
}

// Value makes a started query the context layer that carries it: its
// parent is the batch's context (saving a context.WithValue per query).
func (q *query) Value(key any) any {
	if key == (ctxKey{}) {
		return q
	}
	return q.parent.Value(key)
}

func (q *query) Deadline() (time.Time, bool) { return q.parent.Deadline() }
func (q *query) Done() <-chan struct{}       { return q.parent.Done() }
func (q *query) Err() error                  { return q.parent.Err() }

// phase is where a started query's goroutine is.
type phase uint8

const (
	running   phase = iota // in its run (closure or finder)
	releasing              // run returned; connections going back
	released               // connections back (or discarded)
)

// query is one query of a batch and its state machine: queued, then skipped
// or started; a started query runs, releases its connections, and ends.
// endLocked is the one place that decides its Status; it runs once, on the
// query's goroutine, or on the watcher's when the query is handed off
// (watch.go).
type query struct {
	// Set when the query is added; read-only afterwards.
	p        *Plugin
	name     string  // As; empty: a default from the method and table
	method   string  // "Find", "Count", ...; empty for Go and GoValue
	dest     any     // what a finder writes; nil for Go
	pc       uintptr // the application's call that added it
	timeout  time.Duration
	scopes   *[]func(*gorm.DB) *gorm.DB
	conds    []any // a finder's conditions
	run      func(tx *gorm.DB, q *query) error
	index    int32 // position in the batch, from 0
	optional bool
	finder   bool // no user code runs after its statements: it may be handed off

	// Owned by the goroutine that runs the query (Wait's until exec).
	inTx      bool // runs on a transaction's connection
	savepoint bool // in a transaction under the batch's savepoint
	tx        *gorm.DB
	parent    context.Context         // the batch's, under the query as a context (Value)
	ctx       context.Context         // soft: batch deadline, own timeout, parent, fail-fast
	cancel    context.CancelCauseFunc // a Go closure's: closes rows it left open
	stopTimer context.CancelFunc      // its own timeout, if any
	started   time.Duration           // since the batch started; 0: not started
	frames    []frame                 // statements in progress (preload nests them)
	pins      []*pin                  // connections it holds (conn.go)
	pin0      pin                     // the first of them, and room for both slices, so
	pinArr    [1]*pin                 // that a query of one statement on one connection
	frameArr  [1]frame                // allocates neither
	w         *watcher                // server cancel; nil without it (watch.go)
	rs        *runState               // its running batch (batch.go)

	// Guarded by mu: shared with the watcher, which may end the query
	// before its goroutine returns.
	mu        sync.Mutex
	phase     phase
	txBroken  bool             // a stopped statement left the transaction unusable
	ended     bool             // its status is decided; destinations are the caller's again
	handedOff bool             // ended by the watcher while its goroutine still runs
	handedAt  time.Duration    // when, since the batch started
	d         dests            // destinations to publish or restore (dest.go)
	pub       [2]reflect.Value // a finder\'s destination and private result, published if Done
	rows      int64
	table     string        // the table of its first statement, for its default name
	connWait  time.Duration // time spent waiting for a pool connection
	res       *Result       // where its result goes: its entry in the batch's Report
}

// outcome is how a query's run ended, as endLocked needs it.
type outcome struct {
	started bool       // false: it never got a slot
	inTime  bool       // it returned before its context ended
	err     error      // what the run returned
	cause   error      // its context's cause when it returned; nil if not done
	panic   *recovered // if it panicked
}

// recovered is a recovered panic.
type recovered struct {
	value any
	stack []byte
}

// skip ends a query that never started.
func (q *query) skip(ctx context.Context) {
	q.ctx = ctx // for hooks: the batch's
	q.mu.Lock()
	res, acts := q.endLocked(outcome{cause: context.Cause(ctx)})
	q.mu.Unlock()
	q.complete(res, acts)
}

// start gives the query its context and session. It runs on Wait's
// goroutine, so the *gorm.DB given to From is only ever read from one
// goroutine; the query's timeout counts from here.
func (q *query) start(parent context.Context, db *gorm.DB) {
	q.started = max(1, time.Since(q.rs.start))
	q.parent = parent
	var base context.Context = q
	for _, h := range q.p.cfg.Hooks {
		if c := h.StartQuery(base, q.info()); c != nil {
			base = c
		}
	}
	if q.timeout > 0 {
		base, q.stopTimer = context.WithTimeoutCause(base, q.timeout,
			timeoutError{"query timeout", q.timeout})
	}
	q.ctx = base
	if !q.finder {
		q.ctx, q.cancel = context.WithCancelCause(base)
	}
	q.pins, q.frames = q.pinArr[:0], q.frameArr[:0]
	q.tx = db.Session(&gorm.Session{Context: q.ctx})
	if q.scopes != nil {
		q.tx = q.tx.Scopes(*q.scopes...)
	}
}

// exec runs a started query on the calling goroutine, releases its
// connections and ends it, on every path: errors, panics, runtime.Goexit.
func (q *query) exec() {
	var o outcome
	defer func() {
		if pv := recover(); pv != nil || !o.started {
			if pv == nil {
				pv = errGoexit // t.FailNow in a closure
			}
			o = outcome{started: true, panic: &recovered{pv, debug.Stack()}}
		}
		q.mu.Lock()
		q.phase = releasing
		if q.w != nil {
			q.w.out = o // for a handoff while releasing
		}
		q.mu.Unlock()
		q.release()
		q.mu.Lock()
		q.phase = released
		handed, handedAt := q.handedOff, q.handedAt
		res, acts := q.endLocked(o)
		q.mu.Unlock()
		q.rs.released()
		if handed {
			q.p.emit(q, Event{Kind: EventReclaimed, Elapsed: time.Since(q.rs.start) - handedAt})
			q.p.reclaiming.Done()
			return
		}
		q.complete(res, acts)
	}()
	err := q.run(q.tx, q)
	o = q.returned(err)
}

// returned is the outcome of a run that returned err: whether it answered
// in time is read here, where its last statement has returned.
func (q *query) returned(err error) outcome {
	o := outcome{started: true, err: err, inTime: q.ctx.Err() == nil}
	if dl, ok := q.ctx.Deadline(); ok && !time.Now().Before(dl) {
		// Past the deadline: not in time, even if the context's timer has
		// not fired yet. Wait for it, so the cause is the deadline's.
		o.inTime = false
		<-q.ctx.Done()
	}
	o.cause = context.Cause(q.ctx)
	return o
}

// endLocked decides the query's status (the only place that does), unless
// it is already decided (then it returns nothing: the result belongs to the
// caller of Wait), and returns the result and what to do to its
// destinations. q.mu must be held.
func (q *query) endLocked(o outcome) (r Result, acts dests) {
	if q.ended {
		return Result{}, nil
	}
	q.ended = true
	now := time.Since(q.rs.start)
	r = Result{Name: q.displayName(), Optional: q.optional, Rows: q.rows, Waited: now}
	err, cause := o.err, o.cause
	switch {
	case !o.started:
		r.Status, r.Err = Skipped, fmt.Errorf("%w: %w", ErrSkipped, cause)
	case o.panic != nil:
		r.Status, r.Stack = Panicked, o.panic.stack
		if pe, ok := o.panic.value.(error); ok {
			r.Err = fmt.Errorf("%w: %w", ErrPanicked, pe)
		} else {
			r.Err = fmt.Errorf("%w: %v", ErrPanicked, o.panic.value)
		}
	case err == nil && o.inTime && !q.txBroken:
		r.Status = Done
	case cause != nil && errors.Is(cause, context.DeadlineExceeded):
		r.Status, r.Err = TimedOut, wrapCause(cause, err)
	case cause != nil:
		if !errors.Is(cause, context.Canceled) { // a custom cause: keep errors.Is(err, context.Canceled)
			cause = fmt.Errorf("%w: %w", cause, context.Canceled)
		}
		r.Status, r.Err = Canceled, wrapCause(cause, err)
	case q.serverLimit(err):
		r.Status, r.Err = TimedOut, fmt.Errorf("%w: server statement limit: %w", context.DeadlineExceeded, err)
	default:
		r.Status, r.Err = Failed, err
	}
	if q.txBroken && r.Status != Done && r.Status != Panicked {
		r.Err = fmt.Errorf("%w: %w", r.Err, ErrTxBroken)
	}
	r.Killed = r.Status != Done && q.w.killed()
	if q.started > 0 {
		r.Waited = q.started + q.connWait
		r.Ran = now - q.started - q.connWait
	}
	*q.res = r
	if r.Status == Done && q.pub[0].IsValid() {
		setValue(q.pub[0], q.pub[1])
	}
	return r, q.d.take()
}

// settleEarly decides the status of a finder whose context ended while its
// run goes on (watch.go): Wait need not wait for the stop.
func (q *query) settleEarly() {
	q.mu.Lock()
	if q.ended || q.phase != running {
		q.mu.Unlock()
		return // its run returned: it ends the usual way
	}
	res, acts := q.handOffLocked(outcome{started: true, cause: context.Cause(q.ctx)})
	q.mu.Unlock()
	q.complete(res, acts)
}

// handOffLocked decides the status of a query whose goroutine keeps its
// connections after Wait may have returned (q.mu held).
func (q *query) handOffLocked(o outcome) (Result, dests) {
	q.handedOff, q.handedAt = true, time.Since(q.rs.start)
	q.p.reclaiming.Add(1)
	q.p.stats.reclaiming.Add(1)
	return q.endLocked(o)
}

// complete applies the decided result to the destinations, reports it and
// tells Wait. It runs once per query, after endLocked, without q.mu.
func (q *query) complete(r Result, acts dests) {
	acts.apply(r.Status == Done)
	q.p.queryEnded(q, r)
	q.rs.settled(q)
}

// wrapCause returns the context's cause, with the query's own error when
// it says more than the context error.
func wrapCause(cause, err error) error {
	if err == nil || errors.Is(err, cause) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return cause
	}
	return fmt.Errorf("%w (%w)", cause, err)
}

// serverLimit reports an error from the server-side limit the plugin adds.
func (q *query) serverLimit(err error) bool {
	if err == nil || q.w == nil {
		return false
	}
	q.w.mu.Lock()
	defer q.w.mu.Unlock()
	for _, p := range q.w.pins {
		if p.srv.classify(err) == errServerLimit {
			return true
		}
	}
	return false
}

// handoffOK reports whether the query may be handed off now (q.mu held).
func (q *query) handoffOK() bool {
	return !q.inTx && (q.finder || q.phase == releasing)
}

// label is the query's name for logs and hooks.
func (q *query) label() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.displayName()
}

// displayName is the query's name: As, or its method and table
// ("Find users", "Count orders"), or "Raw #3". q.mu must be held.
func (q *query) displayName() string {
	switch {
	case q.name != "":
		return q.name
	case q.table != "":
		return q.p.names.get(q.method, q.table)
	}
	if t := q.p.tableOf(q.dest); t != "" {
		return q.p.names.get(q.method, t)
	}
	return fmt.Sprintf("%s #%d", q.method, q.index+1)
}

// info describes the query to hooks.
func (q *query) info() QueryInfo {
	return QueryInfo{Name: q.label(), Index: int(q.index), Optional: q.optional, PC: q.pc, Dialect: q.p.dialectName}
}

// names caches default query names, so a batch does not build the same
// "Find users" string for every query.
type names struct{ m sync.Map }

func (n *names) get(method, table string) string {
	type key struct{ method, table string }
	k := key{method, table}
	if v, ok := n.m.Load(k); ok {
		return v.(string)
	}
	v, _ := n.m.LoadOrStore(k, method+" "+table)
	return v.(string)
}

// frame is a statement in progress: what the Before callback replaced, for
// the After callback to put back.
type frame struct {
	stmt  *gorm.Statement
	pool  gorm.ConnPool
	dest  any
	priv  reflect.Value // private destination, if swapped
	model bool          // Statement.Model was the destination and was swapped too
}

// enter is the Before callback's work: pin a connection for the statement's
// pool and, for top-level Query statements, swap the destination for a
// private copy.
func (q *query) enter(db *gorm.DB, swap bool) {
	st := db.Statement
	f := frame{stmt: st, pool: st.ConnPool, dest: st.Dest}
	if db.Error == nil {
		if sc, err := q.pinFor(db, st.ConnPool); err != nil {
			db.AddError(err)
		} else if sc != nil {
			st.ConnPool = sc
		}
	}
	if swap && len(q.frames) == 0 {
		// Even after an error: Count writes its destination after the
		// callbacks whatever happened, and the undo must cover it.
		f.priv, f.model = q.swapDest(st, !q.finder)
	}
	q.frames = append(q.frames, f)
}

// leave is the After callback's work: publish a successful statement's
// private destination, put back what enter replaced, and tell the watcher
// the statement is over when it is (Query and Exec statements are; Row
// statements end when their rows are closed).
func (q *query) leave(db *gorm.DB, over bool) {
	st := db.Statement
	i := len(q.frames) - 1
	for i >= 0 && q.frames[i].stmt != st {
		i--
	}
	if i < 0 {
		return
	}
	f := q.frames[i]
	q.frames = append(q.frames[:i], q.frames[i+1:]...)
	top := len(q.frames) == 0
	if sc, ok := st.ConnPool.(*stmtConn); ok {
		if over && top {
			q.idle()
		}
		if over {
			q.noteErr(sc.pin, db.Error)
		}
	}
	st.ConnPool = f.pool

	q.mu.Lock()
	if top && db.Error == nil && db.RowsAffected > 0 { // Row statements report -1
		q.rows += db.RowsAffected
	}
	if top && q.table == "" {
		q.table = st.Table
	}
	if f.priv.IsValid() && db.Error == nil && !q.ended {
		if q.finder { // no code of the caller's runs after it: publish at the end
			q.pub = [2]reflect.Value{reflect.ValueOf(f.dest), f.priv.Elem()}
		} else { // a Go closure may read it at once
			setValue(reflect.ValueOf(f.dest), f.priv.Elem())
		}
	}
	q.mu.Unlock()
	if f.priv.IsValid() {
		if f.model {
			st.Model = f.dest
		}
		st.Dest = f.dest
		st.ReflectValue = indirect(reflect.ValueOf(f.dest))
	}
}
