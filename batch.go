package gormbatch

import (
	"context"
	"database/sql"
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
	"gorm.io/gorm"
)

// QueryOption configures one query of a batch. Pass options to Go, GoValue
// or any finder (among the finder's conditions, as trailing arguments).
type QueryOption interface{ apply(*query) }

type option func(*query)

func (o option) apply(q *query) { o(q) }

// As names a query in the Report, logs and traces. Unnamed queries are
// named after their method and table ("Find users", "Count orders").
func As(name string) QueryOption { return option(func(q *query) { q.name = name }) }

// Optional marks a query whose failure does not fail the batch: Wait's error
// ignores it and FailFast does not fire for it.
func Optional() QueryOption { return option(func(q *query) { q.optional = true }) }

// WithTimeout bounds one query, counted from its start; the batch deadline
// still applies. d must be positive.
func WithTimeout(d time.Duration) QueryOption {
	return option(func(q *query) {
		q.timeout = d
		if d <= 0 {
			q.timeout = -1 // reported by the batch
		}
	})
}

// Scopes applies GORM scopes to one query's own session, like
// (*gorm.DB).Scopes, so one batch can read several tables:
//
//	From(db).
//		Find(&users, "active = ?", true).
//		Count(&n, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&Order{}) }))
func Scopes(funcs ...func(*gorm.DB) *gorm.DB) QueryOption {
	return option(func(q *query) {
		if q.scopes == nil {
			q.scopes = new([]func(*gorm.DB) *gorm.DB)
		}
		*q.scopes = append(*q.scopes, funcs...)
	})
}

// Batch is a group of read queries run concurrently under one deadline.
// Build it with From, add queries with the finders, Go and GoValue, then call
// Wait once. Its methods are safe for concurrent use, and misuse (an invalid
// destination, a bad timeout, adding after Wait) is reported by Wait.
//
// Each query runs on its own session of the *gorm.DB given to From, so that
// session's conditions (Where, Table, Model, ...) apply to every query and
// conditions never bleed between queries; Scopes adds conditions to one.
type Batch struct {
	mu          sync.Mutex // guards every field below
	db          *gorm.DB
	p           *Plugin
	name        string
	timeout     time.Duration
	concurrency int
	failFast    bool
	queries     []*query
	dests       map[uintptr]bool
	err         error // the first misuse, returned by Wait
	waited      bool
}

// From starts a batch on db. The batch deadline is the earlier of db's
// context deadline and Timeout (default Config.Timeout). If db has no
// gormbatch plugin, Wait returns ErrNotRegistered.
func From(db *gorm.DB) *Batch {
	b := &Batch{db: db, p: plugin(db)}
	if b.p == nil {
		b.err = ErrNotRegistered
		return b
	}
	b.timeout, b.concurrency = b.p.cfg.Timeout, b.p.cfg.Concurrency
	return b
}

// Name names the batch in logs and traces.
func (b *Batch) Name(name string) *Batch {
	return b.set(func() error { b.name = name; return nil })
}

// Timeout sets the batch deadline, counted from Wait. d must be positive.
func (b *Batch) Timeout(d time.Duration) *Batch {
	return b.set(func() error {
		if d <= 0 {
			return fmt.Errorf("%w: batch timeout %v must be positive", ErrInvalidConfig, d)
		}
		b.timeout = d
		return nil
	})
}

// Concurrency sets how many queries of this batch run at once (at least 1).
// The plugin's MaxInFlight bound still applies across batches.
func (b *Batch) Concurrency(n int) *Batch {
	return b.set(func() error {
		if n < 1 {
			return fmt.Errorf("%w: concurrency %d must be at least 1", ErrInvalidConfig, n)
		}
		b.concurrency = n
		return nil
	})
}

// FailFast makes the first required query that does not end Done cancel the
// rest of the batch (Canceled, or Skipped if not started, with cause
// ErrFailFast). By default every query runs to its own end.
func (b *Batch) FailFast() *Batch {
	return b.set(func() error { b.failFast = true; return nil })
}

// Find adds db.Find(dest, conds...). dest is written only if the query ends
// Done. QueryOptions may follow the conditions.
func (b *Batch) Find(dest any, conds ...any) *Batch {
	return b.finder("Find", dest, conds, runFind, callerPC())
}

// First adds db.First(dest, conds...); see Find.
func (b *Batch) First(dest any, conds ...any) *Batch {
	return b.finder("First", dest, conds, runFirst, callerPC())
}

// Take adds db.Take(dest, conds...); see Find.
func (b *Batch) Take(dest any, conds ...any) *Batch {
	return b.finder("Take", dest, conds, runTake, callerPC())
}

// Last adds db.Last(dest, conds...); see Find.
func (b *Batch) Last(dest any, conds ...any) *Batch {
	return b.finder("Last", dest, conds, runLast, callerPC())
}

// The finders' runs (functions, not closures: a query holds its arguments).
func runFind(tx *gorm.DB, q *query) error  { return tx.Find(q.dest, q.conds...).Error }
func runFirst(tx *gorm.DB, q *query) error { return tx.First(q.dest, q.conds...).Error }
func runTake(tx *gorm.DB, q *query) error  { return tx.Take(q.dest, q.conds...).Error }
func runLast(tx *gorm.DB, q *query) error  { return tx.Last(q.dest, q.conds...).Error }

// Count adds db.Count(count) on the query's session: set the table with
// the *gorm.DB given to From (Model, Table) or with Scopes. *count is
// written only if the query ends Done.
func (b *Batch) Count(count *int64, opts ...QueryOption) *Batch {
	return b.add("Count", count, opts, callerPC(), func(tx *gorm.DB, q *query) error {
		var n int64 // GORM writes Count's destination even on failure
		if err := tx.Count(&n).Error; err != nil {
			return err
		}
		q.onDone(func() { *count = n })
		return nil
	})
}

// Pluck adds db.Pluck(column, dest) on the query's session (see Count);
// dest is written only if Done.
func (b *Batch) Pluck(column string, dest any, opts ...QueryOption) *Batch {
	return b.add("Pluck", dest, opts, callerPC(), func(tx *gorm.DB, _ *query) error {
		return tx.Pluck(column, dest).Error
	})
}

// Scan adds db.Scan(dest) on the query's session: a Raw query or a
// Model/Table chain given to From, or set with Scopes. dest is written only
// if Done.
func (b *Batch) Scan(dest any, opts ...QueryOption) *Batch {
	return b.add("Scan", dest, opts, callerPC(), func(tx *gorm.DB, q *query) error {
		return q.scan(tx, dest)
	})
}

// Raw adds db.Raw(sql, values...).Scan(dest); dest is written only if Done.
// The statement must be a read (ErrWriteInBatch otherwise). QueryOptions may
// follow the values.
func (b *Batch) Raw(dest any, sql string, values ...any) *Batch {
	values, opts := splitOptions(values)
	return b.add("Raw", dest, opts, callerPC(), func(tx *gorm.DB, q *query) error {
		return q.scan(tx.Raw(sql, values...), dest)
	})
}

// Go adds a closure that runs any read chain on tx, a session whose context
// is the query's (pass tx.Statement.Context to gorm.G[T] calls). fn must
// return when that context is done; Wait waits for it.
//
// Destinations that GORM fills through its query callbacks (Find, First,
// Take, Last, Pluck, Count, also through gorm.G) are read into a private
// value and copied to the destination when the statement succeeds, so fn can
// use them at once; if the query does not end Done they are restored to
// their value before the statement. Scan, Row and Rows write outside those
// callbacks and are not restored: use GoValue for them.
func (b *Batch) Go(name string, fn func(tx *gorm.DB) error, opts ...QueryOption) *Batch {
	pc := callerPC()
	if fn == nil {
		return b.set(func() error { return fmt.Errorf("%w: nil func for %q", ErrInvalidConfig, name) })
	}
	return b.addQuery(&query{name: name, pc: pc, run: func(tx *gorm.DB, _ *query) error { return fn(tx) }}, nil, opts)
}

// GoValue adds fn to b like Go, and stores the value fn returns in *dest
// only if the query ends Done. Use it for Scan, Row or Rows, or any result
// computed in Go.
func GoValue[T any](b *Batch, name string, dest *T, fn func(tx *gorm.DB) (T, error), opts ...QueryOption) *Batch {
	pc := callerPC()
	if fn == nil || dest == nil {
		return b.set(func() error { return fmt.Errorf("%w: nil func or dest for %q", ErrInvalidDest, name) })
	}
	return b.addQuery(&query{name: name, pc: pc, dest: dest, run: func(tx *gorm.DB, q *query) error {
		v, err := fn(tx)
		if err == nil {
			q.onDone(func() { *dest = v })
		}
		return err
	}}, dest, opts)
}

// Wait runs the batch and returns when every query has ended or at the batch
// deadline, whichever is first; at the deadline running queries are
// cancelled (TimedOut, or Canceled when the parent context was cancelled)
// and queued ones are Skipped. Cancelled statements are stopped on the
// server where the dialect allows it, within Config.KillGrace: Wait returns
// by the deadline plus KillGrace.
//
// When Wait returns, only Done queries have written their destinations, no
// goroutine of the batch is left, and every connection it took is back in
// the pool - except the connection of a stopped statement the server has
// not answered within KillGrace, which the plugin holds until it does (at
// most ReclaimTimeout; see Config.KillGrace): that query's status is
// already final and nothing of it writes anything after Wait returns.
//
// The error is nil iff every required (not Optional) query is Done;
// otherwise it is an *Error naming them, which errors.Is matches against
// context.DeadlineExceeded, context.Canceled and this package's sentinels.
// Misuse returns a nil Report and an error wrapping ErrNotRegistered,
// ErrInvalidConfig, ErrInvalidDest or ErrWaited.
//
// Inside a transaction (From on a *gorm.DB from Begin or Transaction) the
// queries share the transaction's connection, so they run one at a time in
// the order added, still under the deadline, and the transaction stays
// usable after a cancelled query unless the error wraps ErrTxBroken.
func (b *Batch) Wait() (*Report, error) {
	b.mu.Lock()
	if b.waited {
		b.mu.Unlock()
		return nil, ErrWaited
	}
	b.waited = true
	err, qs := b.err, b.queries
	b.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return b.run(qs)
}

// callerPC returns the program counter of the application's call of the
// exported method that calls callerPC.
func callerPC() uintptr {
	var pcs [1]uintptr
	runtime.Callers(3, pcs[:])
	return pcs[0]
}

// set applies a batch setting under the lock, recording the first error.
func (b *Batch) set(f func() error) *Batch {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.waited {
		if b.err == nil {
			b.err = ErrWaited
		}
		return b
	}
	if err := f(); err != nil && b.err == nil {
		b.err = err
	}
	return b
}

func (b *Batch) finder(method string, dest any, args []any, run func(*gorm.DB, *query) error, pc uintptr) *Batch {
	conds, opts := splitOptions(args)
	return b.addQuery(&query{method: method, dest: dest, conds: conds, pc: pc, finder: true, run: run}, dest, opts)
}

// splitOptions separates QueryOptions from a finder's conditions (args
// itself when it holds none).
func splitOptions(args []any) (rest []any, opts []QueryOption) {
	i := 0
	for i < len(args) {
		if _, ok := args[i].(QueryOption); ok {
			break
		}
		i++
	}
	if i == len(args) {
		return args, nil
	}
	for _, a := range args {
		if o, ok := a.(QueryOption); ok {
			opts = append(opts, o)
		} else {
			rest = append(rest, a)
		}
	}
	return rest, opts
}

// add appends a finder: a query whose only code is the plugin's and GORM's.
func (b *Batch) add(method string, dest any, opts []QueryOption, pc uintptr, run func(*gorm.DB, *query) error) *Batch {
	return b.addQuery(&query{method: method, dest: dest, pc: pc, finder: true, run: run}, dest, opts)
}

// addQuery validates and appends q; dest, if not nil, must be a pointer or
// map no other query of the batch writes.
func (b *Batch) addQuery(q *query, dest any, opts []QueryOption) *Batch {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.check(q, dest, opts); err != nil {
		if b.err == nil {
			b.err = err
		}
		return b
	}
	q.index = int32(len(b.queries))
	b.queries = append(b.queries, q)
	return b
}

// check applies q's options and validates it (b.mu held).
func (b *Batch) check(q *query, dest any, opts []QueryOption) error {
	if b.waited {
		return ErrWaited
	}
	q.p = b.p
	for _, o := range opts {
		o.apply(q)
	}
	label := q.name
	if label == "" {
		label = q.method
	}
	if q.timeout < 0 {
		return fmt.Errorf("%w: WithTimeout of %q must be positive", ErrInvalidConfig, label)
	}
	if q.finder || dest != nil {
		key, err := destKey(dest)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidDest, label, err)
		}
		if b.dests[key] {
			return fmt.Errorf("%w: %s: destination already used by another query of the batch", ErrInvalidDest, label)
		}
		if b.dests == nil {
			b.dests = map[uintptr]bool{}
		}
		b.dests[key] = true
	}
	return nil
}

// destKey checks that dest is a non-nil pointer or map and returns its
// address, to catch two queries sharing a destination.
func destKey(dest any) (uintptr, error) {
	v := reflect.ValueOf(dest)
	switch {
	case !v.IsValid():
		return 0, fmt.Errorf("destination is nil")
	case v.Kind() != reflect.Pointer && v.Kind() != reflect.Map:
		return 0, fmt.Errorf("destination must be a pointer, got %T", dest)
	case v.IsNil():
		return 0, fmt.Errorf("destination is a nil %T", dest)
	}
	return v.Pointer(), nil
}

// runState is what the queries of one running batch share.
type runState struct {
	p      *Plugin
	start  time.Time           // when Wait started
	ctx    context.Context     // the batch's
	wg     sync.WaitGroup      // queries started and not settled
	local  *semaphore.Weighted // this batch's concurrency
	global *semaphore.Weighted // MaxInFlight; nil: unbounded or nested
	fail   func(*query)        // FailFast; nil without it
	w      watched
}

// watched are the watchers (watch.go) whose onCancel the batch's context
// starts when it ends: one context.AfterFunc for the batch (set up in run
// before any query starts), not one per query, and no lock. A query's
// watcher sits in the slot of its index; whoever empties a slot holding a
// watcher decides its fate: cancelAll starts its onCancel, unwatch stops
// watching it.
type watched struct {
	cancelled atomic.Bool               // the batch's context ended
	ws        []atomic.Pointer[watcher] // by query index
}

// watch registers w; if the batch's context has ended it starts w's
// onCancel at once. A watcher stored before cancelAll empties its slot is
// started there; one stored after sees cancelled (both are sequentially
// consistent) and starts itself, unless cancelAll got to it.
func (rs *runState) watch(w *watcher) {
	slot := &rs.w.ws[w.q.index]
	slot.Store(w)
	if rs.w.cancelled.Load() && slot.Swap(nil) != nil {
		go w.onCancel()
	}
}

// unwatch removes w and reports whether its onCancel had not been started
// (then it never will).
func (rs *runState) unwatch(w *watcher) bool {
	return rs.w.ws[w.q.index].Swap(nil) != nil
}

// cancelAll starts the onCancel of every watcher when the batch's context
// ends.
func (rs *runState) cancelAll() {
	rs.w.cancelled.Store(true)
	for i := range rs.w.ws {
		if w := rs.w.ws[i].Swap(nil); w != nil {
			go w.onCancel()
		}
	}
}

// settled is called once per query, when its status is decided.
func (rs *runState) settled(q *query) {
	if rs.fail != nil {
		rs.fail(q)
	}
	if rs.local != nil && q.started > 0 {
		rs.local.Release(1)
		rs.wg.Done()
	}
}

// released is called once per started query, when its connections are back.
func (rs *runState) released() {
	if rs.local != nil {
		rs.p.stats.inFlight.Add(-1)
		if rs.global != nil {
			rs.global.Release(1)
		}
	}
}

// run executes the queries and builds the report.
func (b *Batch) run(qs []*query) (*Report, error) {
	start := time.Now()
	p := b.p
	p.stats.batches.Add(1)
	parent := b.db.Statement.Context
	if parent == nil {
		parent = context.Background()
	}
	info := BatchInfo{Name: b.name, Queries: len(qs), Dialect: p.dialectName}
	info.Deadline, _ = parent.Deadline()
	if d := start.Add(b.timeout); b.timeout > 0 && (info.Deadline.IsZero() || d.Before(info.Deadline)) {
		info.Deadline = d
	}
	ctx := parent
	for _, h := range p.cfg.Hooks {
		if c := h.StartBatch(ctx, info); c != nil {
			ctx = c
		}
	}
	var failFast context.CancelCauseFunc
	if b.failFast {
		ctx, failFast = context.WithCancelCause(ctx)
		defer failFast(nil)
	}
	if b.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, start.Add(b.timeout), timeoutError{"batch deadline", b.timeout})
		defer cancel()
	}

	rs := &runState{p: p, start: start, ctx: ctx}
	if p.dialect != nil { // server cancel: watchers register (watch.go)
		rs.w.ws = make([]atomic.Pointer[watcher], len(qs))
		stop := context.AfterFunc(ctx, rs.cancelAll)
		defer stop()
	}
	rep := &Report{Results: make([]Result, len(qs))}
	if failFast != nil {
		var once sync.Once
		rs.fail = func(q *query) {
			if !q.optional && q.res.Status != Done {
				once.Do(func() { failFast(fmt.Errorf("%w: %s %s", ErrFailFast, q.res.Name, q.res.Status)) })
			}
		}
	}
	inTx := isTx(b.db)
	for i, q := range qs {
		q.res, q.inTx, q.rs = &rep.Results[i], inTx, rs
	}
	if inTx {
		b.runTx(ctx, qs)
	} else {
		b.runPool(ctx, parent, qs, rs)
	}

	var failed []Result
	for _, r := range rep.Results {
		if r.Status != Done && !r.Optional {
			failed = append(failed, r)
		}
	}
	rep.Elapsed = time.Since(start)
	var err error
	if failed != nil {
		err = &Error{Failed: failed}
	}
	for _, h := range p.cfg.Hooks {
		h.EndBatch(ctx, info, rep, err)
	}
	return rep, err
}

// runPool runs the queries concurrently, each on connections of its own,
// within this batch's concurrency and the plugin's MaxInFlight.
func (b *Batch) runPool(ctx, parent context.Context, qs []*query, rs *runState) {
	p := b.p
	global, n := p.inFlight(b.db)
	if fromContext(parent) != nil {
		// A batch started inside a batch query: its parent already holds
		// a slot, so waiting for another could deadlock.
		global = nil
	}
	limit := b.concurrency
	if limit == 0 {
		limit = n
		if limit == 0 {
			limit = 8
		}
	}
	rs.local, rs.global = semaphore.NewWeighted(int64(limit)), global
	for _, q := range qs {
		if p.acquire(ctx, rs.local) != nil {
			q.skip(ctx)
			continue
		}
		if global != nil && p.acquire(ctx, global) != nil {
			rs.local.Release(1)
			q.skip(ctx)
			continue
		}
		p.stats.inFlight.Add(1)
		q.start(ctx, b.db)
		rs.wg.Add(1)
		go q.exec()
	}
	rs.wg.Wait()
}

// acquire takes a slot of sem for a query, unless ctx ends first; only a
// wait for a slot (none was free) is timed, as slot wait.
func (p *Plugin) acquire(ctx context.Context, sem *semaphore.Weighted) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if sem.TryAcquire(1) {
		return nil
	}
	t0 := time.Now()
	err := sem.Acquire(ctx, 1)
	p.stats.slotWait.Add(int64(time.Since(t0)))
	return err
}

// runTx runs the queries one at a time on the transaction's connection, in
// order, under the deadline. Where a failed or stopped statement aborts
// the transaction (PostgreSQL), the batch runs under a savepoint and rolls
// back to it after such a query, so the transaction stays usable.
func (b *Batch) runTx(ctx context.Context, qs []*query) {
	tx, _ := unwrapPrepared(b.db.Statement.ConnPool).(*sql.Tx)
	d := dialects[b.p.dialectName]
	sp := tx != nil && d != nil && d.savepoints() && b.savepoint(ctx, tx, "SAVEPOINT gormbatch")
	for _, q := range qs {
		if ctx.Err() != nil {
			q.skip(ctx)
			continue
		}
		q.savepoint = sp
		q.start(ctx, b.db)
		q.exec()
	}
	if sp {
		b.savepoint(ctx, tx, "RELEASE SAVEPOINT gormbatch")
	}
}

// savepoint runs a savepoint statement on the transaction, bounded by the
// batch deadline plus KillGrace, and reports whether it worked.
func (b *Batch) savepoint(ctx context.Context, tx *sql.Tx, stmt string) bool {
	sctx := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		sctx, cancel = context.WithDeadline(sctx, dl.Add(b.p.cfg.KillGrace))
		defer cancel()
	}
	_, err := tx.ExecContext(sctx, stmt)
	return err == nil
}

func isTx(db *gorm.DB) bool {
	_, ok := db.Statement.ConnPool.(gorm.TxCommitter)
	return ok
}
