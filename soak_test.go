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
// optional/required mixes, FailFast, Limit), each checked by runPlan
// against every promise, then a final check that the pool is back to its
// baseline and no goroutine is left.
//
// GORMBATCH_SOAK sets the size: a number of batches per soak test
// ("20000") or a duration per soak test ("10m"); the defaults (2000 SQLite,
// 1200 MariaDB, 300 chaos batches; a tenth with -short) take about 30-50 s
// in all under -race. GORMBATCH_SOAK_SEED replays a run.

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

// soak runs plans from rng on the backends in turn until n batches or d.
func soak(t *testing.T, bes []*backend, n int, d time.Duration, lim planLimits, netFault func() func() bool) *runStats {
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
		if errs := runPlan(bes[i%len(bes)], p, &st, fault); len(errs) > 0 {
			t.Errorf("batch %d on %s (seed %d):\n%s", i, bes[i%len(bes)].name, seed, strings.Join(errs, "\n"))
			if failures++; failures == 5 {
				t.Fatal("stopping after 5 failed batches")
			}
		}
	}
	t.Logf("%s (%s) in %v: %v", t.Name(), bes[0].name, time.Since(start).Round(time.Millisecond), &st)
	if st.countZeroed > 0 {
		t.Errorf("promise 4: %d Count queries that did not end Done had their destination set to 0", st.countZeroed)
	}
	return &st
}

func TestSoakSQLite(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	db.Exec("SELECT 1")
	n, d := soakSize(t, 2000)
	before := goleak.IgnoreCurrent()
	st := soak(t, []*backend{sqliteBackend(db, sqlDB)}, n, d, planLimits{maxQueries: 8, maxNatural: 150, scale: soakScale}, nil)
	checkPool(t, sqlDB)
	if err := goleak.Find(before); err != nil {
		t.Fatalf("goroutines left after the soak: %v", err)
	}
	if st.status[gormbatch.Done] == 0 || st.status[gormbatch.TimedOut] == 0 || st.status[gormbatch.Panicked] == 0 {
		t.Fatalf("the soak did not exercise the statuses: %v", st)
	}
}

// The MariaDB soak alternates two pools: the default plugin (kill and
// server-side deadline) and kills only (NoServerDeadline).
func TestSoakMySQL(t *testing.T) {
	tg := strings.ReplaceAll(tag(t), "/", "-")
	var bes []*backend
	for _, cfg := range []gormbatch.Config{{}, {NoServerDeadline: true}} {
		db, sqlDB, _ := openMySQL(t, cfg)
		if !batchWorks(t, db, sqlDB) { // opens the kill pool before the baseline
			t.FailNow()
		}
		bes = append(bes, mysqlBackend(db, sqlDB, tg, 100*time.Millisecond))
	}
	n, d := soakSize(t, 1200)
	before := goleak.IgnoreCurrent()
	st := soak(t, bes, n, d, planLimits{maxQueries: 8, maxNatural: 150, scale: soakScale}, nil)
	for _, be := range bes {
		checkPool(t, be.sqlDB)
		if n, err := be.leftovers(); err != nil || n != 0 {
			t.Fatalf("%d tagged statements left on the server (%v)", n, err)
		}
	}
	if err := goleak.Find(append([]goleak.Option{before}, bes[0].leakIgnore...)...); err != nil {
		t.Fatalf("goroutines left after the soak: %v", err)
	}
	if st.status[gormbatch.Done] == 0 || st.status[gormbatch.TimedOut] == 0 || st.killed == 0 {
		t.Fatalf("the soak did not exercise the statuses: %v", st)
	}
}

// Network chaos: batches through the fault proxy while random connections
// (the application's and the kill pool's) are cut at random moments. Every
// promise still holds, except that a cut query may end Failed; afterwards
// a clean batch works.
func TestMySQLProxyChaos(t *testing.T) {
	px, db, sqlDB, _ := openProxied(t, gormbatch.Config{KillGrace: 100 * time.Millisecond})
	if !batchWorks(t, db, sqlDB) {
		t.FailNow()
	}
	be := mysqlBackend(db, sqlDB, strings.ReplaceAll(tag(t), "/", "-"), 100*time.Millisecond)
	be.leakIgnore = append(be.leakIgnore,
		goleak.IgnoreAnyFunction("github.com/gormbatch/gormbatch_test.(*faultProxy).readClient"),
		goleak.IgnoreAnyFunction("github.com/gormbatch/gormbatch_test.(*faultProxy).readServer"),
		goleak.IgnoreAnyFunction("github.com/gormbatch/gormbatch_test.(*faultProxy).writer"))
	n, d := soakSize(t, 300)
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
			time.Sleep(after)
			return px.CutRandom(func(n int) int { return int(pick % uint64(n)) })
		}
	}
	before := goleak.IgnoreCurrent()
	st := soak(t, []*backend{be}, n, d, planLimits{maxQueries: 6, maxNatural: 150, scale: soakScale}, cut)
	accepted, cuts := px.Counts()
	t.Logf("proxy: %d connections accepted, %d cut", accepted, cuts)
	if !batchWorks(t, db, sqlDB) {
		t.Fatal("no clean batch after the chaos")
	}
	checkPool(t, sqlDB)
	if err := goleak.Find(append([]goleak.Option{before}, be.leakIgnore...)...); err != nil {
		t.Fatalf("goroutines left after the chaos: %v", err)
	}
	if st.networkFaults == 0 {
		t.Fatal("no fault injected")
	}
}
