package gormbatch

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Causes given to the driver's context when the plugin cuts a connection.
var (
	errEnded       = errors.New("gormbatch: query ended")
	errGraceOver   = errors.New("gormbatch: statement did not stop within KillGrace")
	errReclaimOver = errors.New("gormbatch: stopped statement did not answer within ReclaimTimeout")
	errStopFailed  = errors.New("gormbatch: the server did not confirm the stop")
	errSessionGone = errors.New("gormbatch: the statement's server session is gone")
	errGoexit      = errors.New("runtime.Goexit called")
)

// watcher stops a query's statements on the server when the query's context
// ends, within one clean-up budget: everything after the end (the stop, the
// statement returning, the connection going back) must be over KillGrace
// after the deadline (or after the cancel).
//
// Kill safety. begin (conn.go) checks the query's context and marks its pin
// active in one critical section of mu, and onCancel, which runs only after
// the context ended, reads the active pins under mu. So either begin saw the
// context done and refused the statement, or the statement was marked
// active before onCancel looked: a stop can reach only a statement the
// query started. release waits for onCancel (end) and returns a connection
// to the pool only if no stop was sent to it or the stop was delivered,
// which by the seam's contract (dialect.go) cannot reach a later statement.
//
// Settling early. A finder whose context ended can only end TimedOut or
// Canceled, and runs none of the caller's code from then on, so onCancel
// decides its status at once and Wait need not wait for the stop: the
// query's goroutine keeps its connection until the stopped statement
// answers (at most ReclaimTimeout, then the socket is cut) and returns it to
// the pool. The plugin waits for such connections in Close and counts them
// in MaxInFlight until they are back.
//
// The budget. When it runs out (budgetOver) and the connections are not
// back, the query is handed off the same way if only the plugin's code is
// left to run (its run returned); a Go closure still running cannot be (it
// could write after Wait returned), nor can a transaction's connection (the
// caller uses it next): their sockets are cut.
type watcher struct {
	q      *query
	own    func() bool   // stops the query's own context.AfterFunc (WithTimeout); nil: the batch's runs onCancel
	hard   chan struct{} // closed to cut: the driver's context is done on it
	pinArr [1]*pin       // room for pins

	// Lock order: query.mu before mu.
	mu      sync.Mutex // guards the fields below, and every pin's watcher fields
	pins    []*pin     // pins with a server session
	hardErr error      // why hard was closed
	ending  bool       // release has begun: onCancel has nothing to do
	// Made by onCancel, on the cancel path only.
	over    chan struct{}      // closed by release: the run is over, stop no more
	done    chan struct{}      // closed when onCancel returns
	giveUp  context.Context    // ends when nothing more is waited for (stops return)
	abandon context.CancelFunc //
	timer   *time.Timer        // the budget, then the reclaim timeout
	sent    bool               // a stop was sent for one of the statements: Result.Killed
	late    bool               // the budget ran out: stop answers from now on are late
	closed  bool               // release has the connections: nothing may cut them

	out outcome // how the run ended; guarded by query.mu
}

// watch returns the query's watcher, creating it at its first server
// session: from then on the driver sees the hard context.
func (q *query) watch() *watcher {
	if q.w != nil {
		return q.w
	}
	w := &watcher{q: q, hard: make(chan struct{})}
	w.pins = w.pinArr[:0]
	q.w = w // before onCancel can run: it reads q.w
	if q.timeout > 0 {
		w.own = context.AfterFunc(q.ctx, w.onCancel)
	} else {
		q.rs.watch(w)
	}
	return w
}

// unwatch stops what would run onCancel, and reports whether it had not
// started it (then it never will).
func (w *watcher) unwatch() bool {
	if w.own != nil {
		return w.own()
	}
	return w.q.rs.unwatch(w)
}

// onCancel runs once, on its own goroutine, when the query's context ends.
// It starts the budget, settles a finder, and stops every statement that
// may be running. A stop can reach a session between two commands of one
// statement (pgx prepares on a statement-cache miss, go-sql-driver/mysql
// prepares statements with arguments) and be ignored; so while a stopped
// statement is still running, the stop is sent again, KillGrace/2 later and
// then at doubling intervals. That is safe: begin sends nothing new after
// the end, and the connection is reused only once every stop has its
// answer.
func (w *watcher) onCancel() {
	q := w.q
	// The batch's context may end a moment before the query's own (a
	// child: the cancel is still propagating, on a goroutine for a hook's
	// context type). Wait for it, so that the status decision sees the
	// query's context ended for every statement a stop interrupts.
	<-q.ctx.Done()
	end := time.Now()
	if dl, ok := q.ctx.Deadline(); ok && dl.Before(end) && errors.Is(q.ctx.Err(), context.DeadlineExceeded) {
		end = dl // the budget counts from the deadline, not from a late timer
	}
	w.mu.Lock()
	if w.ending {
		w.mu.Unlock()
		return
	}
	w.over, w.done = make(chan struct{}), make(chan struct{})
	w.giveUp, w.abandon = context.WithCancel(context.Background())
	w.timer = time.AfterFunc(time.Until(end.Add(q.p.cfg.KillGrace)), w.budgetOver)
	targets := w.activeLocked()
	w.mu.Unlock()
	defer close(w.done)

	if q.finder && !q.inTx {
		q.settleEarly()
	}
	for again := max(q.p.cfg.KillGrace/2, time.Millisecond); ; again *= 2 {
		if len(targets) == 0 {
			return
		}
		w.stop(targets)
		t := time.NewTimer(again)
		select {
		case <-w.over:
		case <-w.giveUp.Done():
		case <-t.C:
			w.mu.Lock()
			targets = w.activeLocked()
			w.mu.Unlock()
			continue
		}
		t.Stop()
		return
	}
}

// activeLocked returns the pins whose statement may still run, marking
// them as sent a stop (w.mu held).
func (w *watcher) activeLocked() []*pin {
	var targets []*pin
	for _, p := range w.pins {
		if p.active && !p.cut {
			p.stopSent = true
			targets = append(targets, p)
		}
	}
	w.sent = w.sent || len(targets) > 0
	return targets
}

// stop sends a stop to each target and waits for the answers.
func (w *watcher) stop(targets []*pin) {
	q := w.q
	for _, p := range targets {
		t0 := time.Now()
		q.p.emit(q, Event{Kind: EventKillSent, Server: p.srv.name()})
		res := p.sess.stop(w.giveUp)
		w.mu.Lock()
		p.stop = res
		late := w.late
		w.mu.Unlock()
		e := Event{Kind: EventKillAnswered, Server: p.srv.name(), Elapsed: time.Since(t0), Late: late}
		switch {
		case res == stopGone:
			e.Kind, e.Err = EventKillFailed, errSessionGone
		case res != stopDelivered:
			e.Kind, e.Err = EventKillFailed, errStopFailed
		}
		q.p.emit(q, e)
		if res != stopDelivered && w.giveUp.Err() == nil {
			// The connection is dead, or the stop may never come: do not
			// wait for the statement.
			w.cut(e.Err)
		}
	}
}

// budgetOver runs when the clean-up budget is spent with the connections
// not back: it hands the query off, or cuts its statements.
func (w *watcher) budgetOver() {
	q := w.q
	q.mu.Lock()
	w.mu.Lock()
	closed := w.closed
	w.mu.Unlock()
	if closed {
		q.mu.Unlock()
		return
	}
	if !q.ended && !q.handoffOK() {
		q.mu.Unlock()
		w.cut(errGraceOver)
		return
	}
	var res Result
	var acts dests
	settle := !q.ended // else settled early
	if settle {
		res, acts = q.handOffLocked(w.out)
	}
	q.mu.Unlock()

	w.mu.Lock()
	if !w.closed {
		w.late = true
		w.timer = time.AfterFunc(q.p.cfg.ReclaimTimeout, func() { w.cut(errReclaimOver) })
	}
	w.mu.Unlock()
	q.p.emit(q, Event{Kind: EventHandoff})
	if settle {
		q.complete(res, acts)
	}
}

// cut closes the sockets of the statements that may still run (the driver
// then returns at once) and stops waiting for any stop's answer.
func (w *watcher) cut(cause error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	var cut []*pin
	for _, p := range w.pins {
		if p.active && !p.cut {
			p.cut = true
			cut = append(cut, p)
		}
	}
	abandon := w.abandon
	w.mu.Unlock()
	if abandon != nil {
		abandon()
	}
	hard := len(cut) == 0 // nothing to cut: stop whatever the driver runs
	for _, p := range cut {
		if c, ok := p.sess.(cutter); ok {
			c.cut()
		} else {
			hard = true
		}
		w.q.p.emit(w.q, Event{Kind: EventCut, Server: p.srv.name(), Err: cause})
	}
	if hard {
		w.hardStop(cause)
	}
}

// hardStop ends the driver's context: a statement running on a connection
// the dialect cannot cut itself is cut by its driver, and database/sql
// closes rows left open.
func (w *watcher) hardStop(cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hardErr == nil {
		w.hardErr = cause
		close(w.hard)
	}
}

// end stops watching the context and waits for what onCancel started (its
// stops, bounded by the budget or the reclaim timeout).
func (w *watcher) end() {
	if w.unwatch() {
		return // onCancel never ran, and never will
	}
	w.mu.Lock()
	w.ending = true
	over, done := w.over, w.done
	w.mu.Unlock()
	if over != nil {
		close(over)
		<-done
	}
}

// close is called by release before any connection goes back: from then on
// nothing cuts them.
func (w *watcher) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.timer != nil {
		w.timer.Stop()
	}
}

// keep reports whether a pin's connection may go back to the pool.
func (w *watcher) keep(p *pin) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !p.cut && !p.dead && (!p.stopSent || p.stop == stopDelivered)
}

// killed reports whether a stop was sent for one of the query's statements.
func (w *watcher) killed() bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sent
}

// A watcher is the context a driver sees for a batch statement on a
// connection with server cancel: the query's values, but done only when
// the watcher cuts (never at the soft deadline). driverCtx is the same with
// a statement's own values (a tracing span).
func (w *watcher) Deadline() (time.Time, bool) { return time.Time{}, false }
func (w *watcher) Done() <-chan struct{}       { return w.hard }
func (w *watcher) Value(key any) any           { return w.q.ctx.Value(key) }
func (w *watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hardErr != nil {
		return context.Canceled
	}
	return nil
}

type driverCtx struct {
	context.Context // values
	w               *watcher
}

func (c driverCtx) Deadline() (time.Time, bool) { return c.w.Deadline() }
func (c driverCtx) Done() <-chan struct{}       { return c.w.Done() }
func (c driverCtx) Err() error                  { return c.w.Err() }
