package gormbatch

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// A scripted server dialect, in the spirit of database/sql's fakedb: SQLite
// runs the statements, and SELECT block() is a statement that runs until
// the script ends it. The script decides what a stop answers and when, and
// what the statement does when it is stopped or cut, so every branch of the
// cancel path (watch.go, conn.go) runs deterministically, with no server.

const fakeDriver = "sqlite3_gormbatch_fake"

var fakeConnects atomic.Int64 // physical connections opened

func init() {
	dialects["fake"] = fakeDialect{}
	sql.Register(fakeDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		fakeConnects.Add(1)
		return c.RegisterFunc("block", func() (int64, error) { return theScript().block() }, false)
	}})
}

// plan is what the scripted server does.
type plan struct {
	stopAfter  time.Duration // the stop answers after this long
	stopResult stopResult    // and answers this
	onStop     string        // what the statement does when the stop starts: "" (keeps running), "return" (returns its row)
	onAnswer   string        // ... when a delivered stop is answered: "interrupt" (fails), "second" (fails at the second stop), "" (keeps running)
	stopNever  bool          // the stop never answers (until its context ends)
	bindErr    error         // bind fails with it
	stmtErr    error         // the statement fails with it at once
}

// script is the running test's server.
type script struct {
	plan
	started chan struct{} // closed when the statement starts
	end     chan error    // the statement returns this (nil: its row)
	once    sync.Once
	stops   atomic.Int32
	cuts    atomic.Int32
}

var current atomic.Pointer[script]

func theScript() *script { return current.Load() }

func newScript(p plan) *script {
	s := &script{plan: p, started: make(chan struct{}), end: make(chan error, 1)}
	current.Store(s)
	return s
}

func (s *script) block() (int64, error) {
	close(s.started)
	if s.stmtErr != nil {
		return 0, s.stmtErr
	}
	if err := <-s.end; err != nil {
		return 0, err
	}
	return 7, nil
}

// finish ends the statement (once).
func (s *script) finish(err error) { s.once.Do(func() { s.end <- err }) }

var (
	errFakeInterrupted = errors.New("fake: interrupted")
	errFakeCut         = errors.New("fake: connection cut")
	errFakeLimit       = errors.New("fake: statement limit")
)

type fakeDialect struct{}

func (fakeDialect) check() error     { return nil }
func (fakeDialect) savepoints() bool { return false }
func (fakeDialect) open(context.Context, *sql.DB, querier) (server, error) {
	return fakeServer{}, nil
}

type fakeServer struct{}

func (fakeServer) bind(context.Context, any, querier) (session, error) {
	if s := theScript(); s != nil && s.bindErr != nil {
		return nil, s.bindErr
	}
	return fakeSession{}, nil
}
func (fakeServer) limit(q string, _ stmtInfo, _ time.Time) string { return q }
func (fakeServer) name() string                                   { return "fake" }
func (fakeServer) close() error                                   { return nil }
func (fakeServer) classify(err error) errKind {
	switch {
	case err != nil && strings.Contains(err.Error(), errFakeInterrupted.Error()):
		return errInterrupted
	case err != nil && strings.Contains(err.Error(), errFakeLimit.Error()):
		return errServerLimit
	}
	return errOther
}

type fakeSession struct{}

func (fakeSession) stop(ctx context.Context) stopResult {
	s := theScript()
	s.stops.Add(1)
	if s.onStop == "return" {
		s.finish(nil)
	}
	wait := s.stopAfter
	if s.stopNever {
		wait = time.Hour
	}
	select {
	case <-time.After(wait):
	case <-ctx.Done():
		return stopFailed
	}
	if s.stopResult == stopDelivered && (s.onAnswer == "interrupt" || s.onAnswer == "second" && s.stops.Load() == 2) {
		s.finish(errFakeInterrupted)
	}
	return s.stopResult
}

func (fakeSession) cut() {
	s := theScript()
	s.cuts.Add(1)
	s.finish(errFakeCut)
}

// fakeDialector is SQLite under the dialect name "fake".
type fakeDialector struct{ sqlite.Dialector }

func (fakeDialector) Name() string { return "fake" }

func openFake(t *testing.T, cfg Config) (*gorm.DB, *sql.DB, *Plugin) {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "fake.db")
	db, err := gorm.Open(fakeDialector{sqlite.Dialector{DriverName: fakeDriver, DSN: dsn}}, &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, _ := db.DB()
	sqlDB.SetMaxOpenConns(1)
	sqlDB.SetMaxIdleConns(1)
	t.Cleanup(func() { sqlDB.Close() })
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := New(cfg)
	if err := db.Use(p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := db.Exec("SELECT 1").Error; err != nil { // open the pool's connection
		t.Fatal(err)
	}
	return db, sqlDB, p
}

// TestFakeCancelPath runs each branch of the cancel path on the scripted
// dialect: a 100ms deadline, KillGrace 100ms, one connection. Each case
// checks the status, Killed, Wait's bound (a finder returns at its
// deadline, before the budget: it is settled early), the destination,
// whether the budget ran out (a handoff), and whether the connection was
// kept or discarded (a new physical connection opened).
func TestFakeCancelPath(t *testing.T) {
	const deadline, grace = 100 * time.Millisecond, 100 * time.Millisecond
	const bound = deadline + grace + 150*time.Millisecond // scheduling allowance under -race
	cases := []struct {
		name    string
		s       plan
		closure bool // a Go closure (not handed off while it runs)
		status  Status
		kept    bool   // the connection went back to the pool
		cut     bool   // its socket was cut
		handoff bool   // the budget ran out before the connection was back
		release string // after Wait: "answer" lets the statement return, "" waits for ReclaimTimeout
		stops   int32  // exactly this many stops sent (0: at least one)
	}{
		{name: "kill delivered", s: plan{stopAfter: 5 * time.Millisecond, stopResult: stopDelivered, onAnswer: "interrupt"},
			status: TimedOut, kept: true},
		// The first kill reaches the session between two commands of the
		// statement and is ignored; the second, sent KillGrace/2 later,
		// stops it within the budget.
		{name: "first kill lands between two commands", s: plan{stopAfter: 5 * time.Millisecond, stopResult: stopDelivered, onAnswer: "second"},
			status: TimedOut, kept: true, stops: 2},
		{name: "kill lands after the statement returned", s: plan{stopAfter: 30 * time.Millisecond, stopResult: stopDelivered, onStop: "return"},
			status: TimedOut, kept: true},
		{name: "kill fails", s: plan{stopAfter: 5 * time.Millisecond, stopResult: stopFailed},
			status: TimedOut, cut: true},
		{name: "session gone", s: plan{stopAfter: 5 * time.Millisecond, stopResult: stopGone},
			status: TimedOut, cut: true},
		{name: "statement never returns, finder", s: plan{stopAfter: 5 * time.Millisecond, stopResult: stopDelivered},
			status: TimedOut, kept: true, handoff: true, release: "answer"},
		{name: "statement never returns, reclaim timeout", s: plan{stopAfter: 5 * time.Millisecond, stopResult: stopDelivered},
			status: TimedOut, cut: true, handoff: true},
		{name: "statement never returns, closure", s: plan{stopAfter: 5 * time.Millisecond, stopResult: stopDelivered},
			closure: true, status: TimedOut, cut: true},
		{name: "kill answered after the budget", s: plan{stopAfter: 3 * grace, stopResult: stopDelivered, onStop: "return"},
			status: TimedOut, kept: true, handoff: true},
		{name: "kill never answered, statement returned", s: plan{stopNever: true, onStop: "return"},
			status: TimedOut, handoff: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db, sqlDB, p := openFake(t, Config{KillGrace: grace, ReclaimTimeout: 300 * time.Millisecond})
			s := newScript(c.s)
			connects := fakeConnects.Load()
			v := int64(-1)
			b := From(db).Timeout(deadline)
			if c.closure {
				b.Go("q", func(tx *gorm.DB) error { return tx.Raw("SELECT block()").Scan(&v).Error })
			} else {
				b.Raw(&v, "SELECT block()", As("q"))
			}
			rep, err := b.Wait()
			if rep == nil {
				t.Fatal(err)
			}
			r := rep.Results[0]
			t.Logf("Wait %v: %v %v; stops %d, cuts %d; %+v", rep.Elapsed, r.Status, r.Err, s.stops.Load(), s.cuts.Load(), p.Stats())
			if r.Status != c.status || !r.Killed || err == nil {
				t.Errorf("status %v killed %v err %v; want %v, killed", r.Status, r.Killed, err, c.status)
			}
			if rep.Elapsed > bound {
				t.Errorf("Wait took %v, bound %v", rep.Elapsed, bound)
			}
			if !c.closure && rep.Elapsed >= deadline+grace {
				t.Errorf("a finder's Wait took %v: it waited for the stop instead of settling at the deadline", rep.Elapsed)
			}
			if v != -1 {
				t.Errorf("destination written: %d", v)
			}
			if c.handoff {
				<-time.After(deadline + grace - rep.Elapsed + 50*time.Millisecond) // past the budget
				if st := p.Stats(); st.Handoffs != 1 || st.Reclaiming != 1 || sqlDB.Stats().InUse != 1 {
					t.Errorf("past the budget: %+v, InUse %d", st, sqlDB.Stats().InUse)
				}
				if c.release == "answer" {
					s.finish(errFakeInterrupted) // the server answers the stopped statement late
				}
			}
			p.reclaiming.Wait()
			if st := p.Stats(); (st.Handoffs == 1) != c.handoff {
				t.Errorf("handoffs %d, want handoff %v", st.Handoffs, c.handoff)
			}
			if n := sqlDB.Stats().InUse; n != 0 {
				t.Errorf("InUse %d after the query ended", n)
			}
			if c.stops > 0 && s.stops.Load() != c.stops {
				t.Errorf("%d stops sent, want %d", s.stops.Load(), c.stops)
			}
			if (s.cuts.Load() > 0) != c.cut {
				t.Errorf("cuts %d, want cut %v", s.cuts.Load(), c.cut)
			}
			// The connection was kept iff the next statement needs no new one.
			if err := db.Exec("SELECT 1").Error; err != nil {
				t.Fatal(err)
			}
			if kept := fakeConnects.Load() == connects; kept != c.kept {
				t.Errorf("connection kept %v, want %v", kept, c.kept)
			}
			if st := p.Stats(); st.KillsSent < 1 || st.TimedOut != 1 || st.Reclaiming != 0 || st.InFlight != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// lateCtx is a context derived from its parent whose end reaches it late,
// as a hook's context may (context propagates a foreign type's cancel on a
// goroutine of its own).
type lateCtx struct {
	context.Context
	done chan struct{}
}

func (c *lateCtx) Done() <-chan struct{} { return c.done }
func (c *lateCtx) Err() error {
	select {
	case <-c.done:
		return c.Context.Err()
	default:
		return nil
	}
}

// lateHook gives every query a lateCtx that ends 50ms after its parent.
type lateHook struct{ NopHook }

func (lateHook) StartQuery(ctx context.Context, _ QueryInfo) context.Context {
	c := &lateCtx{Context: ctx, done: make(chan struct{})}
	go func() {
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond)
		close(c.done)
	}()
	return c
}

// The status rule: the batch's end (its deadline, or FailFast) starts the
// stop while the query's own context has not ended yet. The stop must wait
// for it, so a statement our stop interrupted ends TimedOut or Canceled,
// never Failed with the server's "interrupted" error.
func TestFakeStopWaitsForTheQueryContext(t *testing.T) {
	for _, failFast := range []bool{false, true} {
		for _, closure := range []bool{false, true} {
			db, _, p := openFake(t, Config{KillGrace: 100 * time.Millisecond, MaxInFlight: -1, Hooks: []Hook{lateHook{}}})
			s := newScript(plan{stopAfter: 5 * time.Millisecond, stopResult: stopDelivered, onAnswer: "interrupt"})
			v := int64(-1)
			b := From(db).Timeout(100 * time.Millisecond)
			want := TimedOut
			if failFast {
				b.FailFast().Go("boom", func(*gorm.DB) error { <-s.started; return errors.New("boom") })
				want = Canceled
			}
			if closure {
				b.Go("q", func(tx *gorm.DB) error { return tx.Raw("SELECT block()").Scan(&v).Error })
			} else {
				b.Raw(&v, "SELECT block()", As("q"))
			}
			rep, _ := b.Wait()
			if r, _ := rep.Get("q"); r.Status != want || !r.Killed || v != -1 {
				t.Errorf("failFast %v, closure %v: %v (killed %v, dest %d): %v; want %v", failFast, closure, r.Status, r.Killed, v, r.Err, want)
			}
			p.reclaiming.Wait()
		}
	}
}
