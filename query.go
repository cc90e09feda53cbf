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

// errEnded is the cancel cause of a query's context once the query is over.
var errEnded = errors.New("gormbatch: query ended")

// query is one query of a batch and its state machine: queued, then either
// skipped or running; running ends in finish, the one place that decides its
// Status and then publishes or restores its destinations.
type query struct {
	// set when added
	name     string
	optional bool
	timeout  time.Duration
	timed    bool
	run      func(tx *gorm.DB, q *query) error
	p        *Plugin
	tx       *gorm.DB // its own session, made by start

	started   time.Time
	ctx       context.Context // soft: batch deadline, own timeout, parent, fail-fast
	cancel    context.CancelCauseFunc
	stopTimer context.CancelFunc // its own timeout, if any

	// touched by the query's goroutine and its kill watcher
	mu         sync.Mutex
	frames     []frame // statements in progress (preload nests them)
	pins       []*pin  // connections checked out, one per pool
	active     *pin    // pin whose statement may be running on the server
	interfered bool    // a statement was cut or refused because ctx was done
	killed     bool    // we sent a kill for one of its statements
	rows       int64
	connWait   time.Duration
	publish    []func() // run if Done
	undo       []func() // run, last first, if not Done

	// server cancel (only with a MySQL/MariaDB pin)
	hard      context.Context // what the driver sees: soft deadline removed
	hardStop  context.CancelCauseFunc
	stopWatch func() bool
	watchDone chan struct{}
	ended     chan struct{}

	res Result
}

// skip ends a query that never started.
func (q *query) skip(ctx context.Context, batchStart time.Time) {
	q.finish(outcome{cause: context.Cause(ctx)})
	q.res.Waited = time.Since(batchStart)
}

// start gives the query its context and session. It runs on Wait's
// goroutine, so the *gorm.DB given to From is only ever read from one
// goroutine; the query's timeout counts from here.
func (q *query) start(parent context.Context, db *gorm.DB) {
	q.started = time.Now()
	base := context.WithValue(parent, ctxKey{}, q)
	if q.timed {
		base, q.stopTimer = context.WithTimeoutCause(base, q.timeout,
			fmt.Errorf("query timeout %v: %w", q.timeout, context.DeadlineExceeded))
	}
	q.ctx, q.cancel = context.WithCancelCause(base)
	q.tx = db.Session(&gorm.Session{Context: q.ctx})
}

// exec runs a started query on the calling goroutine and ends it.
func (q *query) exec(batchStart time.Time) {
	var err error
	returned := false
	// Deferred, so it also runs on runtime.Goexit (t.FailNow in a closure).
	defer func() {
		pv := recover()
		var stack []byte
		if pv == nil && !returned {
			pv = "runtime.Goexit called"
		}
		if pv != nil {
			stack = debug.Stack()
		}
		q.settle()
		cause := context.Cause(q.ctx) // read before release cancels it
		q.release(err)
		q.finish(outcome{started: true, err: err, panicked: pv, stack: stack, cause: cause})
		q.res.Waited = q.started.Sub(batchStart) + q.connWait
		q.res.Ran = time.Since(q.started) - q.connWait
	}()
	err = q.run(q.tx, q)
	returned = true
}

// settle waits for the context's timer when its deadline has already
// passed: a socket deadline taken from the context (a dial, a read) can
// expire a moment before the context's own timer fires, and the error it
// gives must count as the deadline's, not as a failure.
func (q *query) settle() {
	if dl, ok := q.ctx.Deadline(); ok && !time.Now().Before(dl) {
		<-q.ctx.Done()
	}
}

// outcome is how a query's run ended, as finish needs it.
type outcome struct {
	started  bool   // false: it never got a slot
	err      error  // what the query returned
	panicked any    // recovered panic value
	stack    []byte // stack of the panic
	cause    error  // its context's cause when it returned; nil if not done
}

// finish decides the status (the only place that does) and then publishes
// or restores destinations.
func (q *query) finish(o outcome) {
	r := Result{Name: q.name, Optional: q.optional, Rows: q.rows}
	err, cause := o.err, o.cause
	cut := cause != nil && (q.interfered || q.killed || err != nil)
	switch {
	case !o.started:
		r.Status, r.Err = Skipped, fmt.Errorf("%w: %w", ErrSkipped, cause)
	case o.panicked != nil:
		r.Status, r.Err, r.Stack = Panicked, fmt.Errorf("%w: %v", ErrPanicked, o.panicked), o.stack
	case err == nil && !cut:
		// Returned before its context ended, or ended without anything
		// cut or killed. A kill racing in after the run returned (the
		// watcher fired at the deadline just then) cannot change results
		// already read.
		r.Status = Done
	case cut && errors.Is(cause, context.DeadlineExceeded):
		r.Status, r.Err = TimedOut, wrapCause(cause, err)
	case cut:
		if !errors.Is(cause, context.Canceled) { // a custom cause: keep errors.Is(err, context.Canceled)
			cause = fmt.Errorf("%w: %w", cause, context.Canceled)
		}
		r.Status, r.Err = Canceled, wrapCause(cause, err)
	case isServerTimeout(err):
		r.Status, r.Err = TimedOut, fmt.Errorf("%w: server statement limit: %w", context.DeadlineExceeded, err)
	default:
		r.Status, r.Err = Failed, err
	}
	r.Killed = q.killed && r.Status != Done
	if r.Status == Done {
		for _, f := range q.publish {
			f()
		}
	} else {
		for i := len(q.undo) - 1; i >= 0; i-- {
			q.undo[i]()
		}
	}
	q.publish, q.undo = nil, nil
	q.res = r
}

// wrapCause returns the context's cause, with the query's own error when
// it says more than the context error.
func wrapCause(cause, err error) error {
	if err == nil || errors.Is(err, cause) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return cause
	}
	return fmt.Errorf("%w (%w)", cause, err)
}

// release stops the kill watcher, cancels what the driver sees (so open rows
// are closed, not drained) and returns every pinned connection, first
// consuming a kill that no statement was seen to take. It runs on every
// path, panics included, before finish touches destinations. err is what
// the run returned.
func (q *query) release(err error) {
	took := isMySQLError(err, erQueryInterrupted) // the killed statement reported it
	q.mu.Lock()
	q.active = nil
	q.mu.Unlock()
	if q.stopWatch != nil {
		close(q.ended)
		if !q.stopWatch() {
			<-q.watchDone
		}
		q.hardStop(errEnded)
	}
	q.cancel(errEnded)
	if q.stopTimer != nil {
		q.stopTimer()
	}
	for _, p := range q.pins {
		if p.killed && !p.interrupted && !took {
			p.target.s.consume(p.conn, q.p.cfg.KillGrace)
		}
		p.conn.Close()
	}
	q.pins = nil
}

func (q *query) onDone(f func()) { q.publish = append(q.publish, f) }

// scan runs tx.Scan into a private copy of dest, published only if Done:
// Scan writes outside GORM's query callbacks.
func (q *query) scan(tx *gorm.DB, dest any) error {
	v := reflect.ValueOf(dest)
	priv := reflect.New(v.Type().Elem())
	if v.Kind() == reflect.Map {
		priv = reflect.New(v.Type())
	}
	priv.Elem().Set(fresh(reflect.Indirect(v)))
	res := tx.Scan(priv.Interface())
	q.mu.Lock()
	q.active = nil // Scan has closed its rows: the statement is over
	if res.Error == nil {
		q.rows += res.RowsAffected
	}
	q.mu.Unlock()
	if res.Error != nil {
		return res.Error
	}
	q.onDone(func() { setValue(v, priv.Elem()) })
	return nil
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
	if pool := sqlPool(st.ConnPool); pool != nil && db.Error == nil {
		if c, err := q.pin(st.Context, pool); err != nil {
			db.AddError(err)
		} else {
			st.ConnPool = c
		}
	}
	q.mu.Lock()
	top := len(q.frames) == 0
	q.mu.Unlock()
	if swap && top {
		// Even after an error: Count writes its destination after the
		// callbacks whatever happened, and the undo must cover it.
		f.priv, f.model = q.swapDest(st)
	}
	q.mu.Lock()
	q.frames = append(q.frames, f)
	q.mu.Unlock()
}

// leave is the After callback's work: publish a successful statement's
// private destination, put back what enter replaced, and mark the
// connection idle if the statement is over (Query and Exec statements are;
// Row statements end when their rows are closed).
func (q *query) leave(db *gorm.DB, over bool) {
	st := db.Statement
	q.mu.Lock()
	i := len(q.frames) - 1
	for i >= 0 && q.frames[i].stmt != st {
		i--
	}
	if i < 0 {
		q.mu.Unlock()
		return
	}
	f := q.frames[i]
	q.frames = append(q.frames[:i], q.frames[i+1:]...)
	top := len(q.frames) == 0
	if over && top {
		q.active = nil
	}
	if db.Error != nil && q.ctx.Err() != nil {
		q.interfered = true
	}
	if sc, ok := st.ConnPool.(*stmtConn); ok && isMySQLError(db.Error, erQueryInterrupted) {
		sc.pin.interrupted = true // it took the kill: nothing left to consume
	}
	if top && db.Error == nil && db.RowsAffected > 0 { // Row statements report -1
		q.rows += db.RowsAffected
	}
	q.mu.Unlock()

	st.ConnPool = f.pool
	if f.priv.IsValid() {
		if db.Error == nil {
			setValue(reflect.ValueOf(f.dest), f.priv.Elem())
		}
		if f.model {
			st.Model = f.dest
		}
		st.Dest = f.dest
		st.ReflectValue = indirect(reflect.ValueOf(f.dest))
	}
}

// swapDest points the statement at a private copy of its destination and
// records how to restore the original. It returns the private pointer (an
// invalid Value if the destination is not one it can copy) and whether
// Statement.Model, being the destination, was swapped too.
func (q *query) swapDest(st *gorm.Statement) (priv reflect.Value, model bool) {
	v := reflect.ValueOf(st.Dest)
	if !v.IsValid() || (v.Kind() != reflect.Pointer && v.Kind() != reflect.Map) || v.IsNil() {
		return reflect.Value{}, false
	}
	cur := reflect.Indirect(v)
	snap := reflect.New(cur.Type())
	if cur.Kind() == reflect.Map {
		snap.Elem().Set(fresh(cur)) // publishing rewrites a map in place
	} else {
		snap.Elem().Set(cur) // publishing replaces the value, never writes into it
	}
	q.undo = append(q.undo, func() { setValue(v, snap.Elem()) })

	priv = reflect.New(cur.Type())
	priv.Elem().Set(fresh(cur))
	if v.Kind() == reflect.Pointer && st.Model == st.Dest {
		st.Model, model = priv.Interface(), true
	}
	if v.Kind() == reflect.Map {
		st.Dest = priv.Elem().Interface()
	} else {
		st.Dest = priv.Interface()
	}
	st.ReflectValue = indirect(priv)
	return priv, model
}

// fresh returns a copy of v that GORM can scan into without writing to v's
// memory: slices start empty (GORM reuses a slice's backing array), maps and
// pointers are copied one level deep, other values by value.
func fresh(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Slice:
		return reflect.Zero(v.Type())
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		m := reflect.MakeMapWithSize(v.Type(), v.Len())
		for it := v.MapRange(); it.Next(); {
			m.SetMapIndex(it.Key(), it.Value())
		}
		return m
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		p := reflect.New(v.Type().Elem())
		p.Elem().Set(fresh(v.Elem()))
		return p
	}
	return v
}

// setValue stores val into the destination dst (a pointer, or a map whose
// contents are replaced).
func setValue(dst, val reflect.Value) {
	if dst.Kind() == reflect.Map {
		dst.Clear()
		for it := val.MapRange(); it.Next(); {
			dst.SetMapIndex(it.Key(), it.Value())
		}
		return
	}
	dst.Elem().Set(val)
}

// indirect follows pointers like gorm's Execute does for ReflectValue.
func indirect(v reflect.Value) reflect.Value {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() && v.CanAddr() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	return v
}
