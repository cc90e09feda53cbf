package gormbatch_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
)

// Overload: both cores saturated by two CPU-hog processes while 8 clients
// run dashboard batches (2 CPU-heavy reads + 3 point reads, 200 ms
// deadline). Promise 1 must hold on every batch, within the scheduler
// allowance the README states, and a stop the server answers late must not
// turn into a reconnect (promise 3): new connections per cancelled query
// stay at or below 0.05.

const (
	overloadDeadline = 200 * time.Millisecond
	overloadGrace    = 100 * time.Millisecond
	// overloadAllowance is how late, past deadline + KillGrace, Wait may
	// return with both cores saturated: the operating system then runs
	// this process's timers late, most on PostgreSQL under -race, whose
	// cancel requests fork on the starved server (the log line says how
	// late each step was). Half the batches must stay within 50 ms. The
	// README's Limits state both figures.
	overloadAllowance = 500 * time.Millisecond
)

// lateness records, through the plugin's hooks, how late each step of the
// cancel path ran: the stop sent after the deadline, its answer time, and
// the handoff after the budget (deadline + KillGrace).
type lateness struct {
	gormbatch.NopHook
	mu                 sync.Mutex
	seen               map[context.Context]bool // queries whose first stop was recorded
	sent, answer, hand []time.Duration
}

func (h *lateness) Event(ctx context.Context, _ gormbatch.QueryInfo, e gormbatch.Event) {
	dl, ok := ctx.Deadline()
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch e.Kind {
	case gormbatch.EventKillSent:
		if !h.seen[ctx] { // the first stop; later ones are re-sends
			h.seen[ctx] = true
			h.sent = append(h.sent, time.Since(dl))
		}
	case gormbatch.EventKillAnswered:
		h.answer = append(h.answer, e.Elapsed)
	case gormbatch.EventHandoff:
		h.hand = append(h.hand, time.Since(dl.Add(overloadGrace)))
	}
}

// dist formats p50/p99/max of xs.
func dist(xs []time.Duration) string {
	if len(xs) == 0 {
		return "none"
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return fmt.Sprintf("p50 %v p99 %v max %v", r(xs[len(xs)/2]), r(xs[len(xs)*99/100]), r(xs[len(xs)-1]))
}

// TestHelperHog is not a test: it is the CPU hog process the overload
// tests start (GORMBATCH_HOG set to how long to spin).
func TestHelperHog(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("GORMBATCH_HOG"))
	if err != nil {
		t.Skip("helper process of the overload tests")
	}
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}

// hogs starts n CPU hog processes spinning for at most d, and returns a
// function that stops them.
func hogs(t *testing.T, n int, d time.Duration) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var cmds []*exec.Cmd
	for range n {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperHog$", "-test.count=1")
		cmd.Env = append(os.Environ(), "GORMBATCH_HOG="+d.String(), "GOMAXPROCS=1")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			for _, c := range cmds {
				c.Wait()
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestOverload(t *testing.T) {
	if testing.Short() {
		t.Skip("saturates both cores for seconds")
	}
	eachServer(t, func(t *testing.T, be *backend) {
		late := &lateness{seen: map[context.Context]bool{}}
		s := openServer(t, be, gormbatch.Config{KillGrace: overloadGrace, MaxInFlight: 48, Hooks: []gormbatch.Hook{late}})
		s.sqlDB.SetMaxOpenConns(64)
		s.sqlDB.SetMaxIdleConns(64)
		tg := tag(t)
		const clients = 8
		dashboard := func() (*gormbatch.Report, error) {
			var users []User
			var a, b []User
			h1, h2 := int64(-1), int64(-1)
			rep, err := gormbatch.From(s.DB).Timeout(overloadDeadline).
				Raw(&h1, be.heavy(tg), gormbatch.As("heavy1")).
				Raw(&h2, be.heavy(tg), gormbatch.As("heavy2")).
				Find(&users, "id <= ?", 5, gormbatch.As("users")).
				First(&a, 7, gormbatch.As("a")).
				Take(&b, "id = ?", 9, gormbatch.As("b")).
				Wait()
			if h1 != -1 || h2 != -1 {
				err = fmt.Errorf("PROMISE 4: a heavy destination was written: %d %d", h1, h2)
			}
			return rep, err
		}
		run := func(d time.Duration) (overs []time.Duration, cancelled int, own []string) {
			var mu sync.Mutex
			var wg sync.WaitGroup
			end := time.Now().Add(d)
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(end) {
						rep, err := dashboard()
						mu.Lock()
						overs = append(overs, rep.Elapsed-overloadDeadline)
						for _, r := range rep.Results {
							switch r.Status {
							case gormbatch.TimedOut, gormbatch.Canceled, gormbatch.Skipped:
								cancelled++
							case gormbatch.Failed, gormbatch.Panicked:
								own = append(own, fmt.Sprintf("%s %v: %v", r.Name, r.Status, r.Err))
							}
						}
						if err != nil && !isDeadline(err) {
							own = append(own, err.Error())
						}
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			return overs, cancelled, own
		}
		run(time.Second) // set up server cancel
		reclaimed(t, s.p, s.sqlDB)
		s.gone(t, tg, leaveWithin)
		// A warm pool: as many connections as batch queries may hold
		// (MaxInFlight), so new ones can only replace lost ones.
		var conns []*sql.Conn
		for range 48 {
			c, err := s.sqlDB.Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		for _, c := range conns {
			c.Close()
		}
		before, stats0 := s.connects.Load(), s.p.Stats()
		waits0, wait0 := gormbatch.KillPoolWait(s.p)
		late.mu.Lock()
		late.sent, late.answer, late.hand = nil, nil, nil
		late.mu.Unlock()

		stop := hogs(t, 2, 30*time.Second)
		overs, cancelled, own := run(6 * time.Second)
		stop()
		reclaimed(t, s.p, s.sqlDB)
		s.gone(t, tg, 10*time.Second)

		slices.Sort(overs)
		st := s.p.Stats()
		newConns := s.connects.Load() - before
		late.mu.Lock()
		waits, wait := gormbatch.KillPoolWait(s.p)
		t.Logf("%d batches with both cores saturated: Wait past the deadline %s; first stop sent after the deadline %s, stops answered in %s (kill connections waited for %d times, %v in all), handoff after deadline+KillGrace %s; %d queries cancelled, %d new connections (%.3f per cancel); kills sent %d, answered %d (late %d), failed %d; cuts %d; handoffs %d",
			len(overs), dist(overs), dist(late.sent), dist(late.answer), waits-waits0, (wait - wait0).Round(time.Millisecond), dist(late.hand), cancelled, newConns,
			float64(newConns)/float64(max(cancelled, 1)), st.KillsSent-stats0.KillsSent, st.KillsAnswered-stats0.KillsAnswered,
			st.KillsLate-stats0.KillsLate, st.KillsFailed-stats0.KillsFailed, st.Cuts-stats0.Cuts, st.Handoffs-stats0.Handoffs)
		late.mu.Unlock()
		if bound := overloadGrace + overloadAllowance; overs[len(overs)-1] > bound {
			t.Errorf("PROMISE 1: Wait returned %v past the deadline, bound KillGrace %v + allowance %v", overs[len(overs)-1], overloadGrace, overloadAllowance)
		}
		if p50 := overs[len(overs)/2]; p50 > overloadGrace+50*time.Millisecond {
			t.Errorf("PROMISE 1: half the batches returned more than %v past the deadline (p50 %v)", overloadGrace+50*time.Millisecond, p50)
		}
		if per := float64(newConns) / float64(max(cancelled, 1)); per > 0.05 {
			t.Errorf("PROMISE 3: %.3f new connections per cancelled query, want at most 0.05", per)
		}
		if len(own) > 0 {
			t.Errorf("%d queries failed on their own, first: %s", len(own), own[0])
		}
	})
}

// isDeadline reports a batch error made only of cancelled queries.
func isDeadline(err error) bool {
	var be *gormbatch.Error
	if !errors.As(err, &be) {
		return false
	}
	for _, r := range be.Failed {
		if r.Status != gormbatch.TimedOut && r.Status != gormbatch.Canceled && r.Status != gormbatch.Skipped {
			return false
		}
	}
	return true
}
