package gormbatch

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
	"gorm.io/gorm"
)

// Status is how a query of a batch ended. Every query ends in exactly one.
type Status int

const (
	// Done: the query returned without error before it was cancelled; its
	// destination holds the result.
	Done Status = iota + 1
	// Failed: the query returned an error of its own (SQL error, driver
	// error, a KILL that was not ours, ...).
	Failed
	// TimedOut: the batch deadline, the query's own timeout, a deadline of the
	// parent context or the server-side statement limit stopped it.
	TimedOut
	// Canceled: the parent context was cancelled, or FailFast stopped it.
	Canceled
	// Skipped: the query never started (the batch ended while it waited for a
	// slot).
	Skipped
	// Panicked: the query panicked (in a closure or a GORM hook); Result.Stack
	// holds the stack.
	Panicked
)

var statusNames = [...]string{"", "done", "failed", "timed out", "canceled", "skipped", "panicked"}

// String returns the status in words: "done", "timed out", ...
func (s Status) String() string {
	if s < Done || s > Panicked {
		return fmt.Sprintf("Status(%d)", int(s))
	}
	return statusNames[s]
}

// Result is the outcome of one query of a batch.
type Result struct {
	Name     string
	Status   Status
	Err      error // nil iff Done; wraps context errors or package sentinels
	Optional bool  // its failure does not fail the batch
	Waited   time.Duration
	Ran      time.Duration
	Rows     int64  // rows read by its top-level statements
	Killed   bool   // a server-side kill was sent (or attempted) for one of its statements
	Stack    []byte // set when Panicked
}

// Report lists every query of a batch in the order it was added.
type Report struct {
	Results []Result
	Elapsed time.Duration // from Wait's start to its return
}

// Done returns the results of the queries that ended Done.
func (r *Report) Done() []Result { return r.filter(true) }

// Pending returns the results of the queries that did not end Done, like the
// pending set of asyncio.wait (gormbatch has already cancelled them).
func (r *Report) Pending() []Result { return r.filter(false) }

func (r *Report) filter(done bool) []Result {
	var out []Result
	for _, res := range r.Results {
		if (res.Status == Done) == done {
			out = append(out, res)
		}
	}
	return out
}

// Get returns the first result with the given name.
func (r *Report) Get(name string) (Result, bool) {
	for _, res := range r.Results {
		if res.Name == name {
			return res, true
		}
	}
	return Result{}, false
}

// String formats the report as a table, one query a line.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "batch: %d queries in %v\n", len(r.Results), r.Elapsed.Round(time.Millisecond))
	for _, res := range r.Results {
		fmt.Fprintf(&b, "  %-24s %-10s waited %-8v ran %-8v rows %d", res.Name, res.Status,
			res.Waited.Round(time.Millisecond), res.Ran.Round(time.Millisecond), res.Rows)
		if res.Err != nil {
			fmt.Fprintf(&b, "  (%v)", res.Err)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// QueryOption configures one query of a batch. Pass options to Go, GoValue
// or any finder (among the finder's conditions, as trailing arguments).
type QueryOption func(*query)

// As names a query in the Report. Finders are named after their method and
// destination by default.
func As(name string) QueryOption { return func(q *query) { q.name = name } }

// Optional marks a query whose failure does not fail the batch: Wait's error
// ignores it and FailFast does not fire for it.
func Optional() QueryOption { return func(q *query) { q.optional = true } }

// WithTimeout bounds one query, counted from its start; the batch deadline
// still applies. d must be positive.
func WithTimeout(d time.Duration) QueryOption {
	return func(q *query) { q.timeout, q.timed = d, true }
}

// Batch is a group of read queries run concurrently under one deadline.
// Build it with From, add queries with the finders, Go and GoValue, then call
// Wait once. Its methods are safe for concurrent use, and misuse (an invalid
// destination, a bad timeout, adding after Wait) is reported by Wait.
//
// Each query runs on its own session of the *gorm.DB given to From, so that
// session's conditions (Where, Table, Model, ...) apply to every query and
// conditions never bleed between queries.
type Batch struct {
	mu       sync.Mutex
	db       *gorm.DB
	p        *Plugin
	timeout  time.Duration
	limit    int
	failFast bool
	queries  []*query
	dests    map[uintptr]bool
	err      error
	waited   bool
}

// From starts a batch on db. The batch deadline is the earlier of db's
// context deadline and Timeout (default Config.Timeout). If db has no
// gormbatch plugin, Wait returns ErrNotRegistered.
func From(db *gorm.DB) *Batch {
	b := &Batch{db: db, p: plugin(db), dests: map[uintptr]bool{}}
	if b.p == nil {
		b.err = ErrNotRegistered
		return b
	}
	b.timeout, b.limit = b.p.cfg.Timeout, b.p.cfg.Limit
	return b
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

// Limit sets how many queries of this batch run at once (at least 1). The
// plugin's MaxInFlight bound still applies across batches.
func (b *Batch) Limit(n int) *Batch {
	return b.set(func() error {
		if n < 1 {
			return fmt.Errorf("%w: limit %d must be at least 1", ErrInvalidConfig, n)
		}
		b.limit = n
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
	return b.finder("Find", dest, conds, (*gorm.DB).Find)
}

// First adds db.First(dest, conds...); see Find.
func (b *Batch) First(dest any, conds ...any) *Batch {
	return b.finder("First", dest, conds, (*gorm.DB).First)
}

// Take adds db.Take(dest, conds...); see Find.
func (b *Batch) Take(dest any, conds ...any) *Batch {
	return b.finder("Take", dest, conds, (*gorm.DB).Take)
}

// Last adds db.Last(dest, conds...); see Find.
func (b *Batch) Last(dest any, conds ...any) *Batch {
	return b.finder("Last", dest, conds, (*gorm.DB).Last)
}

// Count adds db.Count(count) on the batch's session (set its Model or Table
// in the *gorm.DB given to From). *count is written only if the query ends
// Done.
func (b *Batch) Count(count *int64, opts ...QueryOption) *Batch {
	return b.add("Count", count, opts, func(tx *gorm.DB, _ *query) error {
		return tx.Count(count).Error
	})
}

// Pluck adds db.Pluck(column, dest); dest is written only if Done.
func (b *Batch) Pluck(column string, dest any, opts ...QueryOption) *Batch {
	return b.add("Pluck "+column, dest, opts, func(tx *gorm.DB, _ *query) error {
		return tx.Pluck(column, dest).Error
	})
}

// Scan adds db.Scan(dest) on the batch's session: a Raw query or a
// Model/Table chain given to From. dest is written only if Done.
func (b *Batch) Scan(dest any, opts ...QueryOption) *Batch {
	return b.add("Scan", dest, opts, func(tx *gorm.DB, q *query) error {
		return q.scan(tx, dest)
	})
}

// Raw adds db.Raw(sql, values...).Scan(dest); dest is written only if Done.
// QueryOptions may follow the values.
func (b *Batch) Raw(dest any, sql string, values ...any) *Batch {
	values, opts := splitOptions(values)
	return b.add("Raw", dest, opts, func(tx *gorm.DB, q *query) error {
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
	if fn == nil {
		return b.set(func() error { return fmt.Errorf("%w: nil func for %q", ErrInvalidConfig, name) })
	}
	return b.addQuery(name, nil, false, append([]QueryOption{As(name)}, opts...), func(tx *gorm.DB, _ *query) error {
		return fn(tx)
	})
}

// GoValue adds fn to b like Go, and stores the value fn returns in *dest
// only if the query ends Done. Use it for Scan, Row or Rows, or any result
// computed in Go.
func GoValue[T any](b *Batch, name string, dest *T, fn func(tx *gorm.DB) (T, error), opts ...QueryOption) *Batch {
	if fn == nil || dest == nil {
		return b.set(func() error { return fmt.Errorf("%w: nil func or dest for %q", ErrInvalidDest, name) })
	}
	return b.add(name, dest, append([]QueryOption{As(name)}, opts...), func(tx *gorm.DB, q *query) error {
		v, err := fn(tx)
		if err == nil {
			q.onDone(func() { *dest = v })
		}
		return err
	})
}

// Wait runs the batch and returns when every query has ended or at the batch
// deadline, whichever is first; at the deadline running queries are
// cancelled (TimedOut, or Canceled when the parent context was cancelled)
// and queued ones are Skipped. When Wait returns, no goroutine of the batch
// is left, every connection it took is back in the pool, and only Done
// queries have written their destinations.
//
// The error is nil iff every required (not Optional) query is Done;
// otherwise it is an *Error naming them, which errors.Is matches against
// context.DeadlineExceeded, context.Canceled and this package's sentinels.
// Misuse returns a nil Report and an error wrapping ErrNotRegistered,
// ErrInvalidConfig, ErrInvalidDest or ErrWaited.
//
// Inside a transaction (From on a *gorm.DB from Begin or Transaction) the
// queries share the transaction's connection, so they run one at a time in
// the order added, still under the deadline.
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

func (b *Batch) finder(method string, dest any, args []any, f func(*gorm.DB, any, ...any) *gorm.DB) *Batch {
	conds, opts := splitOptions(args)
	return b.add(method, dest, opts, func(tx *gorm.DB, _ *query) error {
		return f(tx, dest, conds...).Error
	})
}

func splitOptions(args []any) (rest []any, opts []QueryOption) {
	for _, a := range args {
		if o, ok := a.(QueryOption); ok {
			opts = append(opts, o)
		} else {
			rest = append(rest, a)
		}
	}
	return rest, opts
}

// add validates and appends a query that writes dest.
func (b *Batch) add(method string, dest any, opts []QueryOption, run func(*gorm.DB, *query) error) *Batch {
	return b.addQuery(method, dest, true, opts, run)
}

// addQuery validates and appends a query; needDest is false for Go closures.
func (b *Batch) addQuery(method string, dest any, needDest bool, opts []QueryOption, run func(*gorm.DB, *query) error) *Batch {
	return b.set(func() error {
		q := &query{name: fmt.Sprintf("%s %T", method, dest), run: run, p: b.p}
		for _, o := range opts {
			o(q)
		}
		if q.timed && q.timeout <= 0 {
			return fmt.Errorf("%w: timeout %v of %q must be positive", ErrInvalidConfig, q.timeout, q.name)
		}
		if needDest {
			key, err := destKey(dest)
			if err != nil {
				return fmt.Errorf("%w: %s: %v", ErrInvalidDest, q.name, err)
			}
			if b.dests[key] {
				return fmt.Errorf("%w: %s: destination already used by another query of the batch", ErrInvalidDest, q.name)
			}
			b.dests[key] = true
		}
		b.queries = append(b.queries, q)
		return nil
	})
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

// run executes the queries and builds the report.
func (b *Batch) run(qs []*query) (*Report, error) {
	start := time.Now()
	parent := b.db.Statement.Context
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancelCause := context.WithCancelCause(parent)
	defer cancelCause(nil)
	if b.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, b.timeout,
			fmt.Errorf("batch deadline %v: %w", b.timeout, context.DeadlineExceeded))
		defer cancel()
	}
	var failOnce sync.Once
	fail := func(q *query) {
		if b.failFast && !q.optional && q.res.Status != Done {
			failOnce.Do(func() { cancelCause(fmt.Errorf("%w: %s %s", ErrFailFast, q.name, q.res.Status)) })
		}
	}
	if isTx(b.db) {
		// One connection: run one at a time, in order, under the deadline.
		for _, q := range qs {
			if ctx.Err() != nil {
				q.skip(ctx, start)
				continue
			}
			q.start(ctx, b.db)
			q.exec(start)
			fail(q)
		}
	} else {
		global, n := b.p.slots(b.db)
		if fromContext(parent) != nil {
			// A batch started inside a batch query: its parent already
			// holds a slot, so waiting for another could deadlock.
			global = nil
		}
		limit := b.limit
		if limit == 0 {
			limit = n
			if limit == 0 {
				limit = 8
			}
		}
		local := semaphore.NewWeighted(int64(limit))
		var wg sync.WaitGroup
		for _, q := range qs {
			if !acquire(ctx, local) {
				q.skip(ctx, start)
				continue
			}
			if global != nil && !acquire(ctx, global) {
				local.Release(1)
				q.skip(ctx, start)
				continue
			}
			q.start(ctx, b.db)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer local.Release(1)
				if global != nil {
					defer global.Release(1)
				}
				q.exec(start)
				fail(q)
			}()
		}
		wg.Wait()
	}

	rep := &Report{Results: make([]Result, len(qs))}
	var failed []Result
	for i, q := range qs {
		rep.Results[i] = q.res
		if q.res.Status != Done && !q.optional {
			failed = append(failed, q.res)
		}
	}
	rep.Elapsed = time.Since(start)
	if failed != nil {
		return rep, &Error{Failed: failed}
	}
	return rep, nil
}

// acquire takes a slot unless ctx is done (semaphore.Acquire may succeed on
// a done context when a slot is free).
func acquire(ctx context.Context, s *semaphore.Weighted) bool {
	return ctx.Err() == nil && s.Acquire(ctx, 1) == nil
}

func isTx(db *gorm.DB) bool {
	_, ok := db.Statement.ConnPool.(gorm.TxCommitter)
	return ok
}
