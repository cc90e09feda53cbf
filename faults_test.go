package gormbatch_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Network and server faults on every server backend. The network faults
// run through faultProxy (faultproxy_helpers_test.go): the application's
// pool, the MySQL kill connections and PostgreSQL's cancel requests all go
// through it.

const (
	faultGrace   = 100 * time.Millisecond
	faultReclaim = 500 * time.Millisecond
	faultMargin  = 2 * time.Second // on top of deadline + KillGrace, for -race on a busy machine
)

var faultConfig = gormbatch.Config{NoServerDeadline: true, KillGrace: faultGrace, ReclaimTimeout: faultReclaim}

// openProxied opens be's test server through a fault proxy.
func openProxied(t *testing.T, be *backend, cfg gormbatch.Config) (*faultProxy, *serverDB) {
	t.Helper()
	_, target := be.via(t, be.dsn(), "")
	px := newFaultProxy(t, be.name, target)
	dsn, _ := be.via(t, be.dsn(), px.Addr())
	s := be.open(t, dsn, &gorm.Config{Logger: logger.Discard})
	s.p = use(t, s.DB, cfg)
	return px, s
}

type outcome struct {
	rep     *gormbatch.Report
	err     error
	elapsed time.Duration
	stuck   bool // Wait did not return in time and was freed by unstick
}

// waitWithin runs b.Wait and returns its outcome. If Wait has not returned
// within bound, promise 1 is broken: the test fails, unstick frees the stuck
// statement (so no goroutine leaks) and the outcome is returned once Wait
// does return.
func waitWithin(t *testing.T, b *gormbatch.Batch, bound time.Duration, unstick func()) outcome {
	t.Helper()
	ch := make(chan outcome, 1)
	start := time.Now()
	go func() {
		rep, err := b.Wait()
		ch <- outcome{rep: rep, err: err, elapsed: time.Since(start)}
	}()
	select {
	case o := <-ch:
		if o.elapsed > bound {
			t.Errorf("PROMISE 1: Wait took %v, bound %v\n%v", o.elapsed, bound, o.rep)
		}
		return o
	case <-time.After(bound):
	}
	t.Errorf("PROMISE 1 BROKEN: Wait has not returned %v after it started; cutting the network to free it", bound)
	unstick()
	select {
	case o := <-ch:
		t.Logf("Wait returned %v after it started, once the network was cut", o.elapsed)
		o.stuck = true
		return o
	case <-time.After(30 * time.Second):
		t.Fatal("Wait still stuck 30s after every proxied connection was cut")
	}
	return outcome{}
}

// healthyBatch runs two fast queries, which must end Done, and a slow one,
// which must be stopped on the server at its own timeout; it returns what
// went wrong.
func healthyBatch(t *testing.T, s *serverDB) error {
	tg := tag(t)
	var users []User
	var n int64
	slowN := int64(-7)
	const timeout = 300 * time.Millisecond // the slow query's own; the batch has 10s
	rep, err := gormbatch.From(s.DB).Timeout(10*time.Second).
		Find(&users, "id <= ?", 5, gormbatch.As("find")).
		Raw(&n, "SELECT COUNT(*) FROM users", gormbatch.As("count")).
		Raw(&slowN, s.be.heavy(tg), gormbatch.As("slow"), gormbatch.Optional(), gormbatch.WithTimeout(timeout)).
		Wait()
	if err != nil || len(users) != 5 || n != seedUsers {
		return fmt.Errorf("%v (users %d, count %d)\n%v", err, len(users), n, rep)
	}
	if r, _ := rep.Get("slow"); r.Status != gormbatch.TimedOut || slowN != -7 || rep.Elapsed > timeout+faultGrace+faultMargin {
		return fmt.Errorf("slow query %v (killed %v, dest %d) after %v: %v", r.Status, r.Killed, slowN, rep.Elapsed, r.Err)
	}
	return within(leaveWithin, func() error {
		ids, err := s.be.running(s.DB, tg)
		if err == nil && len(ids) > 0 {
			err = fmt.Errorf("the stopped query is still on the server: %v", ids)
		}
		return err
	})
}

// batchWorks is healthyBatch reporting with Errorf.
func batchWorks(t *testing.T, s *serverDB) bool {
	t.Helper()
	if err := healthyBatch(t, s); err != nil {
		t.Errorf("healthy batch: %v", err)
		return false
	}
	return true
}

// A stalled network (bytes accepted, nothing forwarded, hang-ups held too)
// holds Wait no longer than deadline + KillGrace: the stalled statement's
// connection is handed off and cut once ReclaimTimeout passes, the pool
// recovers and the next batch works, stops included.
func TestProxyStall(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		scenarios := []struct {
			name  string
			act   action
			query func(string) string
			all   bool
			// during runs once the victim's statement went through the proxy.
			during func(t *testing.T, outside *serverDB, tag string)
		}{
			{"query-never-arrives", stallBefore, be.medium, false, nil},
			{"answer-of-running-query", stallAfter, be.medium, false, nil},
			{"answer-of-finished-query", stallAfter, be.fast, false, nil},
			{"everything-incl-stop", stallAllAfter, be.medium, true, nil},
			// The server drops the victim's session while the network is
			// stalled (a DBA, a timeout, a restart): the client never hears
			// of it.
			{"session-gone-on-server", stallAfter, be.medium, false, func(t *testing.T, outside *serverDB, tag string) {
				id, err := outside.session(tag, 2*time.Second)
				if err == nil {
					err = be.endOutside(outside.DB, id)
				}
				if err != nil {
					t.Errorf("ending the session from outside: %v", err)
				}
			}},
		}
		for _, sc := range scenarios {
			t.Run(sc.name, func(t *testing.T) {
				const timeout = 400 * time.Millisecond
				px, s := openProxied(t, be, faultConfig)
				outside := be.open(t, be.dsn(), &gorm.Config{Logger: logger.Discard})
				if !batchWorks(t, s) { // warm: server cancel setup
					t.FailNow()
				}
				reclaimed(t, s.p, s.sqlDB)
				tg := tag(t)
				fired := px.On(strings.TrimSpace(mark(tg)), sc.act, 1, 0)
				victim := int64(-7)
				var users []User
				b := gormbatch.From(s.DB).Timeout(timeout).Raw(&victim, sc.query(tg), gormbatch.As("victim"))
				if !sc.all {
					b = b.Find(&users, "id <= ?", 10, gormbatch.As("bystander"))
				}
				var victimConn *pconn
				duringDone := make(chan struct{})
				go func() {
					defer close(duringDone)
					select {
					case victimConn = <-fired:
						if sc.during != nil {
							sc.during(t, outside, tg)
						}
					case <-time.After(5 * time.Second):
					}
				}()
				o := waitWithin(t, b, timeout+faultGrace+faultMargin, func() { px.CutAll(); px.Resume() })
				<-duringDone
				t.Logf("Wait returned after %v; %+v\n%v", o.elapsed, s.p.Stats(), o.rep)
				r := status(t, o.rep, "victim", gormbatch.TimedOut)
				if !errors.Is(r.Err, context.DeadlineExceeded) || victim != -7 {
					t.Errorf("victim: err %v, dest %d", r.Err, victim)
				}
				if !sc.all {
					status(t, o.rep, "bystander", gormbatch.Done)
					if len(users) != 10 {
						t.Errorf("bystander: %d rows", len(users))
					}
				}
				reclaimed(t, s.p, s.sqlDB)
				if victimConn == nil {
					t.Fatal("the victim's statement never went through the proxy")
				}
				if !o.stuck && !px.HungUp(victimConn, 2*time.Second) {
					t.Errorf("the stalled connection was not discarded by the client")
				}
				px.Resume()
				batchWorks(t, s)
				outside.gone(t, tg, leaveWithin)
			})
		}
	})
}

// Server cancel setup (flavour detection, the kill connections, the
// session id) talks to the server before the statement starts. A stall
// there must not hold Wait past deadline + KillGrace either.
func TestProxyStallDuringSetup(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		cases := []struct {
			name string
			arm  func(px *faultProxy)
		}{
			{"flavour-detection", func(px *faultProxy) { px.On(be.setupSQL, stallBefore, 1, 0) }},
			{"session-id", func(px *faultProxy) { px.On(be.sessionID, stallBefore, 1, 0) }},
		}
		if be == mysqlBackend {
			cases = append(cases, struct {
				name string
				arm  func(px *faultProxy)
			}{"kill-connections", func(px *faultProxy) { px.StallNew(true) }})
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				const timeout = 300 * time.Millisecond
				px, s := openProxied(t, be, faultConfig)
				s.Exec("SELECT 1") // an idle, logged-in connection; no batch has run yet
				c.arm(px)
				var users []User
				b := gormbatch.From(s.DB).Timeout(timeout).Find(&users, "id <= ?", 3, gormbatch.As("first"))
				o := waitWithin(t, b, timeout+faultGrace+faultMargin, func() { px.CutAll(); px.Resume() })
				t.Logf("Wait returned after %v\n%v", o.elapsed, o.rep)
				if r, ok := o.rep.Get("first"); ok && r.Status != gormbatch.Done && users != nil {
					t.Errorf("PROMISE 4: destination written by a %v query", r.Status)
				}
				px.Resume()
				reclaimed(t, s.p, s.sqlDB)
			})
		}
	})
}

// A connection cut by the network fails its query (Failed, or TimedOut when
// it was cut at the deadline); the pool recovers and the next batch works.
func TestProxyCut(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		cases := []struct {
			name    string
			warm    bool                // run a batch first (server cancel set up)
			match   func(string) string // statement to cut on
			act     action
			delay   time.Duration
			timeout time.Duration
			want    gormbatch.Status
		}{
			{"mid-query", true, func(tg string) string { return strings.TrimSpace(mark(tg)) }, cutAfter, 100 * time.Millisecond, 10 * time.Second, gormbatch.Failed},
			{"before-query", true, func(tg string) string { return strings.TrimSpace(mark(tg)) }, cutBefore, 0, 10 * time.Second, gormbatch.Failed},
			{"the-stop", true, func(string) string { return be.stopMark }, cutBefore, 0, 300 * time.Millisecond, gormbatch.TimedOut},
			{"session-id-lookup", false, func(string) string { return be.sessionID }, cutBefore, 0, 10 * time.Second, gormbatch.Failed},
			{"server-cancel-setup", false, func(string) string { return be.setupSQL }, cutBefore, 0, 10 * time.Second, gormbatch.Failed},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				px, s := openProxied(t, be, faultConfig)
				if c.warm && !batchWorks(t, s) {
					t.FailNow()
				}
				reclaimed(t, s.p, s.sqlDB)
				tg := tag(t)
				fired := px.On(c.match(tg), c.act, 1, c.delay)
				victim := int64(-7)
				o := waitWithin(t, gormbatch.From(s.DB).Timeout(c.timeout).Raw(&victim, be.medium(tg), gormbatch.As("victim")),
					c.timeout+faultGrace+faultMargin, func() { px.CutAll(); px.Resume() })
				t.Logf("Wait returned after %v\n%v", o.elapsed, o.rep)
				reclaimed(t, s.p, s.sqlDB) // a finder settles at its deadline; its stop goes on
				if len(fired) == 0 {
					t.Fatal("the fault was never injected")
				}
				r := status(t, o.rep, "victim", c.want)
				if r.Err == nil || victim != -7 {
					t.Errorf("victim: err %v, dest %d", r.Err, victim)
				}
				if c.want == gormbatch.Failed && (errors.Is(r.Err, context.DeadlineExceeded) || errors.Is(r.Err, context.Canceled)) {
					t.Errorf("a cut connection is the query's own failure, got %v", r.Err)
				}
				reclaimed(t, s.p, s.sqlDB)
				// The pool recovers: the next batch works. If not, tell a
				// transient failure from a permanent one.
				if err := healthyBatch(t, s); err != nil {
					permanent := true
					for range 3 {
						if healthyBatch(t, s) == nil {
							permanent = false
							break
						}
					}
					t.Errorf("the next batch after a connection was cut during %s failed (permanently: %v): %v", c.name, permanent, err)
				}
				s.gone(t, tg, leaveWithin)
			})
		}
	})
}

// A query whose statement or session is stopped by someone else on the
// server is Failed (its own error, not TimedOut), the plugin sent no stop,
// and batches keep working afterwards, on a pool of one connection.
func TestForeignStopThenBatches(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		for _, c := range []struct {
			name string
			stop func(*gorm.DB, int64) error
		}{{"statement", be.stopOutside}, {"session", be.endOutside}} {
			t.Run(c.name, func(t *testing.T) {
				s := openServer(t, be, gormbatch.Config{KillGrace: faultGrace})
				s.sqlDB.SetMaxOpenConns(1)
				s.sqlDB.SetMaxIdleConns(1)
				outside := be.open(t, be.dsn(), &gorm.Config{Logger: logger.Discard})
				if !batchWorks(t, s) {
					t.FailNow()
				}
				connects := s.connects.Load()
				tg := tag(t)
				stopped, done := make(chan error, 1), make(chan struct{})
				go func() { stopped <- outside.stopUntil(tg, c.stop, done) }()
				victim := int64(-7)
				rep, err := gormbatch.From(s.DB).Timeout(20*time.Second).Raw(&victim, be.heavy(tg), gormbatch.As("victim")).Wait()
				close(done)
				if serr := <-stopped; serr != nil {
					t.Fatalf("the outside stop was not sent: %v", serr)
				}
				r := status(t, rep, "victim", gormbatch.Failed)
				t.Logf("%s stopped from outside: %v after %v", c.name, r.Err, rep.Elapsed)
				if r.Killed || victim != -7 || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
					t.Errorf("killed %v, dest %d, err %v", r.Killed, victim, err)
				}
				if rep.Elapsed > 5*time.Second {
					t.Errorf("Wait took %v: the victim was not stopped by the outside stop", rep.Elapsed)
				}
				checkPool(t, s.sqlDB)
				outside.gone(t, tg, leaveWithin)
				for i := range 5 {
					if !batchWorks(t, s) {
						t.Fatalf("batch %d after the outside stop failed", i)
					}
				}
				n := s.connects.Load() - connects
				t.Logf("%d new connections after the outside stop", n)
				if c.name == "statement" && n != 0 {
					t.Errorf("a stopped statement keeps its connection, yet %d new connections were opened", n)
				}
				if c.name == "session" && n < 1 {
					t.Errorf("the ended session's connection was reused: no new connection")
				}
			})
		}
	})
}
