package main

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"time"

	"gorm.io/gorm"
)

// Figure is one entry of results.json. Plugin and Naive are null when the
// figure could not be measured (MariaDB unreachable).
type Figure struct {
	Name    string         `json:"name"`
	Unit    string         `json:"unit"`
	Plugin  *float64       `json:"plugin"`
	Naive   *float64       `json:"naive"`
	Goal    float64        `json:"goal"`
	Better  string         `json:"better"` // "lower" or "higher"
	Meets   *bool          `json:"plugin_meets_goal"`
	Backend string         `json:"backend,omitempty"`
	Note    string         `json:"note,omitempty"`
	Extra   map[string]any `json:"extra,omitempty"`
}

func (f *Figure) set(plugin, naive float64) {
	f.Plugin, f.Naive = finite(plugin), finite(naive)
	if f.Plugin == nil {
		return
	}
	ok := plugin <= f.Goal
	if f.Better == "higher" {
		ok = plugin >= f.Goal
	}
	f.Meets = &ok
}

// The figures, in the order they are printed and drawn.
var figureSpecs = []Figure{
	{Name: "overshoot_p99_ms", Unit: "ms past deadline", Goal: 3, Better: "lower"},
	{Name: "orphans_after_wait", Unit: "queries per batch", Goal: 0, Better: "lower"},
	{Name: "reconnects_per_cancel", Unit: "connections per cancel", Goal: 0.01, Better: "lower"},
	{Name: "neighbour_p99_ratio", Unit: "p99 heavy / p99 calm", Goal: 1.5, Better: "lower"},
	{Name: "overhead_ratio_sqlite", Unit: "time per batch / naive", Goal: 1.10, Better: "lower"},
	{Name: "overhead_ratio_mariadb", Unit: "time per batch / naive", Goal: 1.10, Better: "lower"},
	{Name: "speedup_8x50ms", Unit: "sequential / concurrent", Goal: 6.5, Better: "higher"},
}

func newFigure(name string) *Figure {
	for _, f := range figureSpecs {
		if f.Name == name {
			f.Extra = map[string]any{}
			return &f
		}
	}
	panic("unknown figure " + name)
}

// GrowthRow is one batch size of the growth table.
type GrowthRow struct {
	Backend             string  `json:"backend"`
	Size                int     `json:"size"`
	Batches             int     `json:"batches"`
	PluginUsPerQuery    float64 `json:"plugin_us_per_query"`
	PluginBytesPerQuery float64 `json:"plugin_bytes_per_query"`
	PluginAllocsPerQ    float64 `json:"plugin_allocs_per_query"`
	NaiveUsPerQuery     float64 `json:"naive_us_per_query"`
	NaiveBytesPerQuery  float64 `json:"naive_bytes_per_query"`
	NaiveAllocsPerQ     float64 `json:"naive_allocs_per_query"`
}

// options are the size knobs, set from the flags.
type options struct {
	rounds          int           // rounds per mode: overshoot/orphans/reconnects
	speedupRounds   int           // rounds per mode: speedup
	overheadRounds  int           // rounds per mode: overhead
	batches         int           // batches per overhead round
	neighbourRounds int           // rounds of the four neighbour segments
	segment         time.Duration // length of one neighbour segment
	growthQueries   int           // queries per batch size and mode
	growthMax       int           // largest growth batch size
	heavyScale      int           // c in seq_1_to_c of the heavy query
	deadline        time.Duration // batch deadline of the overshoot and neighbour figures
}

// bench holds the open databases.
type bench struct {
	opts   options
	dsn    string
	sqlite *pair
	maria  *pair    // nil: MariaDB unreachable or skipped
	mon    *monitor // with maria
	rng    *rand.Rand
	warn   func(format string, args ...any)
	failed map[string]map[string]int // figure -> mode -> queries failed on their own
}

func (b *bench) ids(n int) []uint {
	ids := make([]uint, n)
	for i := range ids {
		ids[i] = uint(1 + b.rng.IntN(seedItems))
	}
	return ids
}

type mode struct {
	name string
	run  runner
	db   *gorm.DB
}

func modes(p *pair) []mode {
	return []mode{{"plugin", pluginRunner(p.plugin), p.plugin}, {"naive", naiveRunner(p.naive), p.naive}}
}

// prime checks n connections out of db's pool at once and returns them, so
// the pool again holds n usable connections: the new server connections
// this takes replace the ones the last batch lost.
func prime(ctx context.Context, db *gorm.DB, n int) error {
	sqlDB, err := db.DB()
	if err != nil {
		return err
	}
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := sqlDB.Conn(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	return nil
}

// trimIdle closes the idle connections of db's pool beyond n.
func trimIdle(db *gorm.DB, n int) {
	if sqlDB, err := db.DB(); err == nil {
		sqlDB.SetMaxIdleConns(n)
		sqlDB.SetMaxIdleConns(poolSize)
	}
}

// alternate returns the modes in round r's order: plugin first on even
// rounds, naive first on odd ones, so neither always runs on a warmer
// machine.
func alternate(ms []mode, r int) []mode {
	if r%2 == 0 {
		return ms
	}
	out := slices.Clone(ms)
	slices.Reverse(out)
	return out
}

// check counts queries that failed on their own (not by the deadline) per
// figure and mode, warning once per pair: such a figure is not trustworthy,
// and finish marks it so.
func (b *bench) check(fig, mode string, o outcome) {
	if o.failed == 0 {
		return
	}
	if b.failed == nil {
		b.failed = map[string]map[string]int{}
	}
	if b.failed[fig] == nil {
		b.failed[fig] = map[string]int{}
	}
	if b.failed[fig][mode] == 0 {
		b.warn("%s, %s: queries failed on their own (first: %v)", fig, mode, o.firstErr)
	}
	b.failed[fig][mode] += o.failed
}

// finish marks a figure whose batches had queries failing on their own.
func (b *bench) finish(f *Figure) {
	fs := b.failed[f.Name]
	if len(fs) == 0 {
		return
	}
	f.Extra["failed_queries"] = fs
	f.Note = fmt.Sprintf("UNRELIABLE: queries failed on their own %v; ", fs) + f.Note
	if fs["plugin"] > 0 && f.Meets != nil {
		no := false
		f.Meets = &no
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank percentile of xs (p in 0..100).
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// finite returns &x, or nil for NaN and infinities (JSON has no NaN).
func finite(x float64) *float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	return &x
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// --- overshoot, orphans, reconnects -------------------------------------

// deadlineFigures runs batches of 2 heavy + 2 fast queries under the
// deadline, alternating plugin and naive rounds. Per round it measures how
// far past the deadline Wait returned, how many heavy queries are still
// running on the server 50 ms later (then kills them), and the server's
// Connections delta around the round. After each round the pool is primed
// back to the batch's width (4 connections) before Connections is read
// again, so the delta is the number of connections the round lost; the idle
// pools are trimmed to that width first, so spare idle connections cannot
// hide the losses.
func (b *bench) deadlineFigures(ctx context.Context) []*Figure {
	over, orph, reco := newFigure("overshoot_p99_ms"), newFigure("orphans_after_wait"), newFigure("reconnects_per_cancel")
	if b.maria == nil {
		return append(b.sqliteOvershoot(), orph, reco)
	}
	jobs := append(rawJobs(heavySQL(b.opts.heavyScale), 2), pointReads(b.ids(2)...)...)
	type acc struct {
		overshoot             []float64
		orphans, maxOrphans   int
		orphanAgeMS           float64
		conns, cancels, batch int
		perRound              []int
	}
	stats := map[string]*acc{"plugin": {}, "naive": {}}
	round := func(m mode, measure bool) error {
		c0, err := b.mon.connections(ctx)
		if err != nil {
			return err
		}
		o := m.run(jobs, b.opts.deadline)
		time.Sleep(50 * time.Millisecond)
		os, err := b.mon.orphans(ctx)
		if err != nil {
			return err
		}
		if _, err := b.mon.killOrphans(ctx); err != nil {
			return err
		}
		if err := prime(ctx, m.db, len(jobs)); err != nil {
			return err
		}
		c1, err := b.mon.connections(ctx)
		if err != nil {
			return err
		}
		b.check("overshoot_p99_ms", m.name, o)
		if !measure {
			return nil
		}
		a := stats[m.name]
		a.overshoot = append(a.overshoot, ms(o.elapsed-b.opts.deadline))
		a.orphans += len(os)
		a.maxOrphans = max(a.maxOrphans, len(os))
		for _, x := range os {
			a.orphanAgeMS = max(a.orphanAgeMS, x.timeMS)
		}
		a.conns += int(c1 - c0)
		a.perRound = append(a.perRound, int(c1-c0))
		a.cancels += o.cancelled
		a.batch++
		return nil
	}
	ms2 := modes(b.maria)
	for _, m := range ms2 { // warm up: pools, the plugin's kill connections
		trimIdle(m.db, len(jobs))
		if err := round(m, false); err != nil {
			b.warn("deadline figures: %v", err)
			return []*Figure{over, orph, reco}
		}
	}
	for r := range b.opts.rounds {
		for _, m := range alternate(ms2, r) {
			if err := round(m, true); err != nil {
				b.warn("deadline figures: %v", err)
				return []*Figure{over, orph, reco}
			}
		}
	}
	p, n := stats["plugin"], stats["naive"]
	over.Backend, orph.Backend, reco.Backend = "mariadb", "mariadb", "mariadb"
	over.set(round3(percentile(p.overshoot, 99)), round3(percentile(n.overshoot, 99)))
	over.Extra["plugin_p50_ms"] = round3(percentile(p.overshoot, 50))
	over.Extra["naive_p50_ms"] = round3(percentile(n.overshoot, 50))
	over.Extra["rounds"] = p.batch
	r1 := func(xs []float64) []float64 {
		out := make([]float64, len(xs))
		for i, x := range xs {
			out[i] = math.Round(x*10) / 10
		}
		return out
	}
	over.Extra["plugin_samples_ms"], over.Extra["naive_samples_ms"] = r1(p.overshoot), r1(n.overshoot)
	over.Extra["deadline_ms"] = ms(b.opts.deadline)
	over.Note = fmt.Sprintf("batch of 2 heavy (%s) + 2 PK reads", heavySQL(b.opts.heavyScale))
	orph.set(round3(float64(p.orphans)/float64(p.batch)), round3(float64(n.orphans)/float64(n.batch)))
	orph.Extra["plugin_max"], orph.Extra["naive_max"] = p.maxOrphans, n.maxOrphans
	orph.Extra["plugin_total"], orph.Extra["naive_total"] = p.orphans, n.orphans
	orph.Extra["heavy_per_batch"] = 2
	orph.Extra["plugin_oldest_ms"], orph.Extra["naive_oldest_ms"] = p.orphanAgeMS, n.orphanAgeMS
	orph.Note = "tagged heavy queries in PROCESSLIST 50 ms after Wait returned, then killed by the harness"
	perCancel := func(a *acc) float64 {
		if a.cancels == 0 {
			return math.NaN()
		}
		return round3(float64(a.conns) / float64(a.cancels))
	}
	reco.set(perCancel(p), perCancel(n))
	reco.Extra["plugin_new_connections"], reco.Extra["naive_new_connections"] = p.conns, n.conns
	reco.Extra["plugin_cancelled"], reco.Extra["naive_cancelled"] = p.cancels, n.cancels
	reco.Extra["plugin_per_round"], reco.Extra["naive_per_round"] = p.perRound, n.perRound
	reco.Note = "SHOW GLOBAL STATUS 'Connections' delta around each round (pool primed back to 4 connections), read on one long-lived monitor connection"
	return []*Figure{over, orph, reco}
}

// sqliteOvershoot is the overshoot figure without MariaDB: 2 queries that
// nap through every row (seconds) + 2 PK reads.
func (b *bench) sqliteOvershoot() []*Figure {
	over := newFigure("overshoot_p99_ms")
	jobs := append(rawJobs(sqliteHeavySQL, 2), pointReads(b.ids(2)...)...)
	res := map[string][]float64{}
	ms2 := modes(b.sqlite)
	for _, m := range ms2 {
		m.run(jobs, b.opts.deadline)
	}
	for r := range b.opts.rounds {
		for _, m := range alternate(ms2, r) {
			o := m.run(jobs, b.opts.deadline)
			b.check("overshoot_p99_ms", m.name, o)
			res[m.name] = append(res[m.name], ms(o.elapsed-b.opts.deadline))
		}
	}
	over.Backend = "sqlite"
	over.set(round3(percentile(res["plugin"], 99)), round3(percentile(res["naive"], 99)))
	over.Extra["plugin_p50_ms"] = round3(percentile(res["plugin"], 50))
	over.Extra["naive_p50_ms"] = round3(percentile(res["naive"], 50))
	over.Extra["rounds"] = b.opts.rounds
	over.Note = "SQLite fallback: 2 queries napping 1 ms per row over 5000 rows + 2 PK reads"
	return []*Figure{over}
}

// --- neighbour -----------------------------------------------------------

// neighbourFigure measures the p99 of a PK lookup looped on its own pool
// while batches (3 PK reads + 1 heavy query, or 4 PK reads for the calm
// baseline) start every deadline+50ms. Segments alternate plugin/naive and
// calm/heavy; leftovers are killed after each segment.
func (b *bench) neighbourFigure(ctx context.Context) *Figure {
	f := newFigure("neighbour_p99_ratio")
	if b.maria == nil {
		return f
	}
	nb, err := sql.Open("mysql", b.dsn)
	if err != nil {
		b.warn("neighbour: %v", err)
		return f
	}
	defer nb.Close()
	nb.SetMaxOpenConns(1)
	nb.SetMaxIdleConns(1)
	if err := nb.PingContext(ctx); err != nil {
		b.warn("neighbour: %v", err)
		return f
	}
	lat := map[string][]float64{}
	orphansKilled := map[string]int{}
	pace := b.opts.deadline + 50*time.Millisecond
	segment := func(m mode, heavy bool) error {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var xs []float64
		var nerr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := 1
			for {
				select {
				case <-stop:
					return
				default:
				}
				var v int
				t0 := time.Now()
				if err := nb.QueryRowContext(ctx, "SELECT Value FROM gb_bench_items WHERE id = ?", id).Scan(&v); err != nil {
					nerr = err
					return
				}
				xs = append(xs, ms(time.Since(t0)))
				id = id%seedItems + 1
				time.Sleep(2 * time.Millisecond)
			}
		}()
		end := time.Now().Add(b.opts.segment)
		for time.Now().Before(end) {
			next := time.Now().Add(pace)
			jobs := pointReads(b.ids(3)...)
			if heavy {
				jobs = append(jobs, job{sql: heavySQL(b.opts.heavyScale)})
			} else {
				jobs = append(jobs, job{pk: b.ids(1)[0]})
			}
			b.check("neighbour_p99_ratio", m.name, m.run(jobs, b.opts.deadline))
			time.Sleep(time.Until(next))
		}
		close(stop)
		wg.Wait()
		if nerr != nil {
			return fmt.Errorf("neighbour query: %w", nerr)
		}
		key := m.name + map[bool]string{false: "/calm", true: "/heavy"}[heavy]
		lat[key] = append(lat[key], xs...)
		k, err := b.mon.killOrphans(ctx)
		orphansKilled[m.name] += k
		return err
	}
	ms2 := modes(b.maria)
	for r := range b.opts.neighbourRounds {
		for _, m := range alternate(ms2, r) {
			for _, heavy := range []bool{false, true} {
				if err := segment(m, heavy); err != nil {
					b.warn("neighbour: %v", err)
					return f
				}
			}
		}
	}
	p99 := func(k string) float64 { return percentile(lat[k], 99) }
	f.Backend = "mariadb"
	f.set(round3(p99("plugin/heavy")/p99("plugin/calm")), round3(p99("naive/heavy")/p99("naive/calm")))
	for _, k := range []string{"plugin/calm", "plugin/heavy", "naive/calm", "naive/heavy"} {
		f.Extra[k+"_p99_ms"] = round3(p99(k))
		f.Extra[k+"_p50_ms"] = round3(percentile(lat[k], 50))
		f.Extra[k+"_samples"] = len(lat[k])
	}
	f.Extra["plugin_orphans_killed_by_harness"] = orphansKilled["plugin"]
	f.Extra["naive_orphans_killed_by_harness"] = orphansKilled["naive"]
	f.Note = fmt.Sprintf("PK lookup loop on its own 1-connection pool; a batch every %v, %v segments", pace, b.opts.segment)
	return f
}

// --- overhead ------------------------------------------------------------

// overheadFigure times batches of 8 PK reads, plugin vs naive, in
// alternating rounds.
func (b *bench) overheadFigure(backend string, p *pair) *Figure {
	f := newFigure("overhead_ratio_" + backend)
	if p == nil {
		return f
	}
	total := map[string]time.Duration{}
	count := map[string]int{}
	perBatch := map[string][]float64{}
	ms2 := modes(p)
	for _, m := range ms2 { // warm up
		for range 20 {
			m.run(pointReads(b.ids(8)...), 2*time.Second)
		}
	}
	batches := b.opts.batches
	if p.backend == "sqlite" {
		batches *= 4 // about 5× faster than over loopback TCP: same wall time
	}
	for r := range b.opts.overheadRounds {
		for _, m := range alternate(ms2, r) {
			for range batches {
				o := m.run(pointReads(b.ids(8)...), 2*time.Second)
				b.check(f.Name, m.name, o)
				total[m.name] += o.total
				count[m.name]++
				perBatch[m.name] = append(perBatch[m.name], float64(o.total)/float64(time.Microsecond))
			}
		}
	}
	mean := func(k string) float64 { return float64(total[k]) / float64(count[k]) / float64(time.Microsecond) }
	f.Backend = p.backend
	f.set(round3(mean("plugin")/mean("naive")), 1)
	f.Extra["plugin_us_per_batch"], f.Extra["naive_us_per_batch"] = round3(mean("plugin")), round3(mean("naive"))
	f.Extra["plugin_p50_us"] = round3(percentile(perBatch["plugin"], 50))
	f.Extra["naive_p50_us"] = round3(percentile(perBatch["naive"], 50))
	f.Extra["batches_per_mode"] = count["plugin"]
	f.Extra["p50_ratio"] = round3(percentile(perBatch["plugin"], 50) / percentile(perBatch["naive"], 50))
	f.Note = "mean time per batch of 8 PK reads, including building the batch; naive is 1 by definition"
	return f
}

// --- speedup -------------------------------------------------------------

// speedupFigure runs 8 × 50 ms queries concurrently (plugin at limit 8,
// naive errgroup) and sequentially, in rotating order.
func (b *bench) speedupFigure() *Figure {
	f := newFigure("speedup_8x50ms")
	p, q := b.sqlite, "SELECT nap(50)"
	if b.maria != nil {
		p, q = b.maria, "SELECT SLEEP(0.05)"
	}
	jobs := rawJobs(q, 8)
	ms3 := append(modes(p), mode{"sequential", sequentialRunner(p.naive), p.naive})
	res := map[string][]float64{}
	for _, m := range ms3 {
		m.run(jobs, 5*time.Second)
	}
	for r := range b.opts.speedupRounds {
		for i := range ms3 {
			m := ms3[(i+r)%len(ms3)]
			o := m.run(jobs, 5*time.Second)
			b.check("speedup_8x50ms", m.name, o)
			res[m.name] = append(res[m.name], ms(o.total))
		}
	}
	seq := percentile(res["sequential"], 50)
	f.Backend = p.backend
	f.set(round3(seq/percentile(res["plugin"], 50)), round3(seq/percentile(res["naive"], 50)))
	f.Extra["sequential_p50_ms"] = round3(seq)
	f.Extra["plugin_p50_ms"] = round3(percentile(res["plugin"], 50))
	f.Extra["naive_p50_ms"] = round3(percentile(res["naive"], 50))
	f.Extra["rounds"] = b.opts.speedupRounds
	f.Note = fmt.Sprintf("8 × %q: median sequential time / median batch time (plugin default limit, pool of %d)", q, poolSize)
	return f
}

// --- growth --------------------------------------------------------------

// growth times batches of 1, 2, 4, ... growthMax PK reads, and the bytes
// and allocations per query (runtime.MemStats deltas), plugin and naive.
func (b *bench) growth(p *pair) []GrowthRow {
	var rows []GrowthRow
	var m0, m1 runtime.MemStats
	measure := func(name string, run runner, size, batches int) (us, bytes, allocs float64) {
		idss := make([][]job, batches)
		for i := range idss {
			idss[i] = pointReads(b.ids(size)...)
		}
		run(idss[0], 5*time.Second) // warm
		runtime.ReadMemStats(&m0)
		t0 := time.Now()
		for _, jobs := range idss {
			b.check("growth", name, run(jobs, 5*time.Second))
		}
		el := time.Since(t0)
		runtime.ReadMemStats(&m1)
		n := float64(size * batches)
		return float64(el) / float64(time.Microsecond) / n,
			float64(m1.TotalAlloc-m0.TotalAlloc) / n,
			float64(m1.Mallocs-m0.Mallocs) / n
	}
	pr, nr := pluginRunner(p.plugin), naiveRunner(p.naive)
	for size := 1; size <= b.opts.growthMax; size *= 2 {
		batches := max(2, b.opts.growthQueries/size)
		row := GrowthRow{Backend: p.backend, Size: size, Batches: batches}
		row.PluginUsPerQuery, row.PluginBytesPerQuery, row.PluginAllocsPerQ = measure("plugin", pr, size, batches)
		row.NaiveUsPerQuery, row.NaiveBytesPerQuery, row.NaiveAllocsPerQ = measure("naive", nr, size, batches)
		for _, x := range []*float64{&row.PluginUsPerQuery, &row.PluginBytesPerQuery, &row.PluginAllocsPerQ,
			&row.NaiveUsPerQuery, &row.NaiveBytesPerQuery, &row.NaiveAllocsPerQ} {
			*x = math.Round(*x*10) / 10
		}
		rows = append(rows, row)
	}
	return rows
}
