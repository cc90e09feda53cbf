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
// The budget. When it runs out (budgetOver), a query whose goroutine runs
// only the plugin's code from now on - a finder, or any query whose run has
// returned - is handed off: its status is decided at once and Wait may
// return, while its goroutine keeps the connection until the stopped
// statement answers, at most ReclaimTimeout longer, and then returns it to
// the pool (or cuts it). The plugin waits for such connections in Close and
// counts them in MaxInFlight until they are back. A Go closure still running
// cannot be handed off (it could write after Wait returned), nor can a
// transaction's connection (the caller uses it next): their sockets are cut.
type watcher struct {
	q        *query
	hard     context.Context         // what the driver sees: the soft deadline removed
	hardStop context.CancelCauseFunc // cuts every statement of the query
	unwatch  func() bool             // stops the context.AfterFunc that runs onCancel
	giveUp   context.Context         // ends when nothing more is waited for (stops return)
	abandon  context.CancelFunc
	over     chan struct{} // closed by release: the run is over, stop no more
	done     chan struct{} // closed when onCancel returns

	// Lock order: query.mu before mu.
	mu     sync.Mutex  // guards the fields below, and every pin's watcher fields
	pins   []*pin      // pins with a server session
	sent   bool        // a stop was sent for one of them: Result.Killed
	timer  *time.Timer // the budget, then the reclaim timeout
	late   bool        // handed off: stop answers from now on are late
	since  time.Time   // when it was handed off
	closed bool        // release has the connections: nothing may cut them
}

// watch returns the query's watcher, creating it at its first server
// session: from then on the driver sees the hard context.
func (q *query) watch() *watcher {
	if q.w != nil {
		return q.w
	}
	w := &watcher{q: q, over: make(chan struct{}), done: make(chan struct{})}
	w.hard, w.hardStop = context.WithCancelCause(context.WithoutCancel(q.ctx))
	w.giveUp, w.abandon = context.WithCancel(context.Background())
	q.w = w // before onCancel can run: it reads q.w
	w.unwatch = context.AfterFunc(q.ctx, w.onCancel)
	return w
}

// onCancel runs once, on its own goroutine, when the query's context ends.
// It starts the budget and stops every statement that may be running. A
// stop can reach a session between two commands of one statement (pgx
// prepares on a statement-cache miss, go-sql-driver/mysql prepares
// statements with arguments) and be ignored; so while a stopped statement
// is still running, the stop is sent again, KillGrace/2 later and then at
// doubling intervals. That is safe: begin sends nothing new after the end,
// and the connection is reused only once every stop has its answer.
func (w *watcher) onCancel() {
	defer close(w.done)
	q := w.q
	end := time.Now()
	if dl, ok := q.ctx.Deadline(); ok && dl.Before(end) && errors.Is(q.ctx.Err(), context.DeadlineExceeded) {
		end = dl // the budget counts from the deadline, not from a late timer
	}
	w.mu.Lock()
	w.timer = time.AfterFunc(time.Until(end.Add(q.p.cfg.KillGrace)), w.budgetOver)
	w.mu.Unlock()
	for again := max(q.p.cfg.KillGrace/2, time.Millisecond); ; again *= 2 {
		if !w.stopActive() {
			return
		}
		t := time.NewTimer(again)
		select {
		case <-w.over:
		case <-w.giveUp.Done():
		case <-t.C:
			continue
		}
		t.Stop()
		return
	}
}

// stopActive sends a stop for every statement still running and reports
// whether there was one.
func (w *watcher) stopActive() bool {
	q := w.q
	w.mu.Lock()
	var targets []*pin
	for _, p := range w.pins {
		if p.active && !p.cut {
			p.stopSent = true
			targets = append(targets, p)
		}
	}
	w.sent = w.sent || len(targets) > 0
	w.mu.Unlock()
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
	return len(targets) > 0
}

// budgetOver runs when the clean-up budget is spent: it hands the query off
// or cuts its statements.
func (w *watcher) budgetOver() {
	q := w.q
	q.mu.Lock()
	w.mu.Lock()
	closed := w.closed
	w.mu.Unlock()
	if q.ended || closed {
		q.mu.Unlock()
		return
	}
	if !q.handoffOK() {
		q.mu.Unlock()
		w.cut(errGraceOver)
		return
	}
	o := q.out
	if q.phase == running { // a finder still in its statement
		o = outcome{started: true, cause: context.Cause(q.ctx)}
	}
	q.handedOff = true
	q.p.reclaiming.Add(1)
	res, undo, publish := q.endLocked(o)
	q.mu.Unlock()

	w.mu.Lock()
	if !w.closed {
		w.late, w.since = true, time.Now()
		w.timer = time.AfterFunc(q.p.cfg.ReclaimTimeout, func() { w.cut(errReclaimOver) })
	}
	w.mu.Unlock()
	q.p.emit(q, Event{Kind: EventHandoff})
	q.complete(res, undo, publish)
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
	w.mu.Unlock()
	w.abandon()
	hard := len(cut) == 0 // nothing to cut: stop whatever the driver runs
	for _, p := range cut {
		hard = !p.sess.cut() || hard
		w.q.p.emit(w.q, Event{Kind: EventCut, Server: p.srv.name(), Err: cause})
	}
	if hard {
		w.hardStop(cause)
	}
}

// end stops watching the context and waits for what onCancel started (its
// stops, bounded by the budget or the reclaim timeout).
func (w *watcher) end() {
	close(w.over)
	if !w.unwatch() {
		<-w.done
	}
}

// close is called by release before any connection goes back: from then on
// nothing cuts them. It returns when the query was handed off.
func (w *watcher) close() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.timer != nil {
		w.timer.Stop()
	}
	return w.since
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
