package gormbatch_test

import (
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	"go.uber.org/goleak"
)

// Soak: thousands of random batches (random deadlines, per-query timeouts,
// parent cancels and deadlines, SQL errors, panics in hooks and closures,
// optional/required mixes, FailFast, Concurrency), each checked by runPlan
// against every promise, then a final check that the pool is back to its
// baseline and no goroutine is left.
//
// GORMBATCH_SOAK sets the size: a number of batches per soak test
// ("20000") or a duration per soak test ("10m"); the defaults (2000 SQLite,
// 600 per server, 200 chaos batches per server; a tenth with -short) take
// about a minute in all under -race. GORMBATCH_SOAK_SEED replays a run.

// soakScale shrinks the plans' costs and durations so that thousands of
// batches fit in the default run; deadlines still straddle the queries.
const soakScale = 30

func soakSize(t *testing.T, def int) (batches int, d time.Duration) {
	v := os.Getenv("GORMBATCH_SOAK")
	if v == "" {
		if testing.Short() {
			return def / 10, 0
		}
		return def, 0
	}
	if d, err := time.ParseDuration(v); err == nil {
		return math.MaxInt, d
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("GORMBATCH_SOAK=%q: want a number of batches or a duration", v)
	}
	return n, 0
}

func soakSeed(t *testing.T) uint64 {
	if v := os.Getenv("GORMBATCH_SOAK_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("GORMBATCH_SOAK_SEED=%q", v)
		}
		return s
	}
	return uint64(time.Now().UnixNano())
}

// soak runs plans from rng on the targets in turn until n batches or d.
func soak(t *testing.T, tgs []*planTarget, n int, d time.Duration, lim planLimits, netFault func() func() bool) *runStats {
	seed := soakSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	t.Logf("seed %d (GORMBATCH_SOAK_SEED replays it)", seed)
	var st runStats
	start := time.Now()
	failures := 0
	buf := make([]byte, 96)
	for i := 0; i < n && (d == 0 || time.Since(start) < d); i++ {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		p := decodePlan(&byteSrc{b: buf}, lim)
		var fault func() bool
		if netFault != nil {
			fault = netFault()
		}
		if errs := runPlan(tgs[i%len(tgs)], p, &st, fault); len(errs) > 0 {
			t.Errorf("batch %d on %s (seed %d):\n%s", i, tgs[i%len(tgs)].name, seed, strings.Join(errs, "\n"))
			if failures++; failures == 5 {
				t.Fatal("stopping after 5 failed batches")
			}
		}
	}
	t.Logf("%s in %v: %v", t.Name(), time.Since(start).Round(time.Millisecond), &st)
	return &st
}

func TestSoakSQLite(t *testing.T) {
	db, sqlDB := openSQLitePlain(t)
	p := use(t, db, gormbatch.Config{})
	db.Exec("SELECT 1")
	n, d := soakSize(t, 2000)
	before := goleak.IgnoreCurrent()
	st := soak(t, []*planTarget{sqliteTarget(db, sqlDB, p)}, n, d, planLimits{maxQueries: 8, maxNatural: 150, scale: soakScale}, nil)
	checkPool(t, sqlDB)
	if err := goleak.Find(before); err != nil {
		t.Fatalf("goroutines left after the soak: %v", err)
	}
	if st.status[gormbatch.Done] == 0 || st.status[gormbatch.TimedOut] == 0 || st.status[gormbatch.Panicked] == 0 {
		t.Fatalf("the soak did not exercise the statuses: %v", st)
	}
}

// A server soak alternates two pools: the default plugin (stops and the
// server-side deadline) and stops only (NoServerDeadline).
func TestSoakServer(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		tg := tag(t)
		var tgs []*planTarget
		for _, cfg := range []gormbatch.Config{{ReclaimTimeout: 2 * time.Second}, {NoServerDeadline: true, ReclaimTimeout: 2 * time.Second}} {
			s := openServer(t, be, cfg)
			if !batchWorks(t, s) { // sets up server cancel before the baseline
				t.FailNow()
			}
			reclaimed(t, s.p, s.sqlDB)
			tgs = append(tgs, serverTarget(s, tg, 100*time.Millisecond))
		}
		n, d := soakSize(t, 600)
		before := goleak.IgnoreCurrent()
		st := soak(t, tgs, n, d, planLimits{maxQueries: 8, maxNatural: 150, scale: soakScale}, nil)
		for _, tg := range tgs {
			checkPool(t, tg.sqlDB)
			if n, err := tg.leftovers(); err != nil || n != 0 {
				t.Fatalf("%d tagged statements left on the server (%v)", n, err)
			}
		}
		if err := goleak.Find(append([]goleak.Option{before}, tgs[0].leakIgnore...)...); err != nil {
			t.Fatalf("goroutines left after the soak: %v", err)
		}
		if st.status[gormbatch.Done] == 0 || st.status[gormbatch.TimedOut] == 0 || st.killed == 0 {
			t.Fatalf("the soak did not exercise the statuses: %v", st)
		}
	})
}

// Network chaos: batches through the fault proxy while random connections
// (the application's, the kill connections, cancel requests) are cut at
// random moments. Every promise still holds, except that a cut query may
// end Failed; afterwards a clean batch works.
func TestProxyChaos(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		px, s := openProxied(t, be, gormbatch.Config{KillGrace: 100 * time.Millisecond, ReclaimTimeout: 2 * time.Second})
		if !batchWorks(t, s) {
			t.FailNow()
		}
		tg := serverTarget(s, tag(t), 100*time.Millisecond)
		tg.leakIgnore = append(tg.leakIgnore,
			goleak.IgnoreAnyFunction("github.com/gormbatch/gormbatch_test.(*faultProxy).readClient"),
			goleak.IgnoreAnyFunction("github.com/gormbatch/gormbatch_test.(*faultProxy).readServer"),
			goleak.IgnoreAnyFunction("github.com/gormbatch/gormbatch_test.(*faultProxy).writer"))
		n, d := soakSize(t, 200)
		rng := rand.New(rand.NewPCG(soakSeed(t), 0xc4a05))
		var mu sync.Mutex
		cut := func() func() bool {
			mu.Lock()
			defer mu.Unlock()
			if rng.IntN(100) >= 35 {
				return nil
			}
			after := time.Duration(rng.IntN(15)) * time.Millisecond
			pick := rng.Uint64()
			return func() bool {
				time.Sleep(after) // the fault's moment, not synchronisation
				return px.CutRandom(func(n int) int { return int(pick % uint64(n)) })
			}
		}
		before := goleak.IgnoreCurrent()
		st := soak(t, []*planTarget{tg}, n, d, planLimits{maxQueries: 6, maxNatural: 150, scale: soakScale}, cut)
		accepted, cuts := px.Counts()
		t.Logf("proxy: %d connections accepted, %d cut", accepted, cuts)
		if !batchWorks(t, s) {
			t.Fatal("no clean batch after the chaos")
		}
		reclaimed(t, s.p, s.sqlDB)
		if err := goleak.Find(append([]goleak.Option{before}, tg.leakIgnore...)...); err != nil {
			t.Fatalf("goroutines left after the chaos: %v", err)
		}
		if st.networkFaults == 0 {
			t.Fatal("no fault injected")
		}
	})
}
