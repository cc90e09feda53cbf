// Command bench measures gormbatch against the naive errgroup baseline on
// SQLite, MariaDB and PostgreSQL, in the same run, prints tables, and
// writes results.json, bench.txt (Go benchmark format, for benchstat) and
// results.png. See README.md.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Results is the content of results.json.
type Results struct {
	Meta map[string]any `json:"meta"`
	// Figures: every headline figure, plugin beside naive, in figureOrder
	// then backend order; null values where not measured.
	Figures []*Figure `json:"figures"`
	// StopTime: the stop-time breakdown per server ("mariadb",
	// "postgres"); null where not measured.
	StopTime map[string]*StopTime `json:"stop_time"`
	Growth   []GrowthRow          `json:"growth"`
	// Stability: what two back-to-back runs must agree within.
	Stability Stability `json:"stability"`
}

// figureOrder is the order figures are printed, stored and drawn in.
var figureOrder = []string{
	"overhead_ratio", "overhead_cpu_ratio", "alloc_bytes_per_query", "allocs_per_query",
	"overshoot_p50_ms", "overshoot_p99_ms", "orphans_after_wait", "reconnects_per_cancel",
	"neighbour_p99_ratio", "overload_wait_p99_ms", "overload_reconnects_per_cancel", "overload_failed_fraction",
	"concurrent_batches_per_s", "concurrent_wait_p99_ms", "speedup_8x50ms",
}

var backendOrder = []string{"sqlite", "mariadb", "postgres"}

func main() {
	if v := os.Getenv(hogEnv); v != "" {
		os.Exit(runHog(v))
	}
	os.Exit(run())
}

func run() int {
	var (
		long         = flag.Bool("long", false, "fuller run: more rounds, longer segments (several minutes)")
		sqliteOnly   = flag.Bool("sqlite-only", false, "skip MariaDB and PostgreSQL: run the SQLite figures only")
		skipPostgres = flag.Bool("skip-postgres", false, "skip PostgreSQL")
		skipOverload = flag.Bool("skip-overload", false, "skip the overload figures (CPU hogs)")
		out          = flag.String("out", ".", "directory for results.json, bench.txt and results.png")
		dsn          = flag.String("dsn", "", "MariaDB DSN (default $GORMBATCH_MYSQL_DSN, else "+defaultMariaDSN+")")
		pgDSN        = flag.String("pg-dsn", "", "PostgreSQL DSN (default $GORMBATCH_POSTGRES_DSN, else \""+defaultPostgresDSN+"\")")
		seed         = flag.Uint64("seed", 1, "seed for the primary keys read")
		compare      = flag.String("compare", "", "a results.json of an earlier run: print whether this run's medians agree with it")
		o            options
	)
	flag.IntVar(&o.overheadRounds, "overhead-rounds", 30, "paired plugin/naive rounds of the overhead figures")
	flag.IntVar(&o.batches, "batches", 25, "batches of 8 PK reads per overhead round and mode on a server (4× on SQLite)")
	flag.StringVar(&o.benchtime, "benchtime", "300ms", "testing.Benchmark time per mode for the allocation figures (a duration, or Nx)")
	flag.IntVar(&o.rounds, "rounds", 12, "rounds per mode of the overshoot/orphans/reconnects/stop-time batches; speedup uses half as many (at least 3)")
	flag.DurationVar(&o.segment, "duration", 2*time.Second, "length of one neighbour segment (4 segments per neighbour round)")
	flag.IntVar(&o.neighbourRounds, "neighbour-rounds", 2, "neighbour rounds (plugin/naive × calm/heavy segments each)")
	flag.DurationVar(&o.overloadSegment, "overload-duration", 3*time.Second, "length of one overload segment (2 per overload round)")
	flag.IntVar(&o.overloadRounds, "overload-rounds", 1, "overload rounds (a plugin and a naive segment each)")
	flag.IntVar(&o.overloadClients, "overload-clients", 8, "client goroutines of the overload figure")
	flag.DurationVar(&o.concurrentSegment, "concurrent-duration", 500*time.Millisecond, "length of one concurrent-batches segment (2 per round)")
	flag.IntVar(&o.concurrentRounds, "concurrent-rounds", 6, "concurrent-batches rounds (a plugin and a naive segment each)")
	flag.IntVar(&o.growthQueries, "growth-queries", 2048, "queries per batch size and mode in the growth table (at least one batch)")
	flag.IntVar(&o.growthMax, "growth-max", 4096, "largest growth batch size (1, 2, 4, ... 256, 1024, 4096)")
	flag.IntVar(&o.heavyScale, "heavy-scale", 50, "c in MariaDB's heavy query seq_1_to_c (50: about 2 s of one core)")
	flag.IntVar(&o.pgHeavyRows, "pg-heavy-rows", 30_000_000, "rows of PostgreSQL's heavy query generate_series (30 M: about 4 s of one core)")
	flag.DurationVar(&o.deadline, "deadline", 200*time.Millisecond, "batch deadline of the overshoot, neighbour and overload figures")
	flag.DurationVar(&o.schedulerAllowance, "scheduler-allowance", 25*time.Millisecond, "added to KillGrace in the overload Wait goal (one CFS period on a saturated 2-core machine)")
	flag.Parse()
	if *long {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"overhead-rounds": "100", "batches": "50", "benchtime": "1s",
			"rounds": "40", "duration": "6s", "neighbour-rounds": "4", "overload-duration": "6s", "overload-rounds": "2",
			"concurrent-duration": "1s", "concurrent-rounds": "12", "growth-queries": "8192"} {
			if !set[name] {
				flag.Set(name, v)
			}
		}
	}
	o.speedupRounds = max(3, o.rounds/2)
	if o.overheadRounds < 1 || o.batches < 1 || o.rounds < 1 || o.neighbourRounds < 1 || o.overloadRounds < 1 ||
		o.overloadClients < 1 || o.concurrentRounds < 1 || o.growthQueries < 1 || o.growthMax < 1 || o.heavyScale < 1 ||
		o.pgHeavyRows < 1 || o.deadline <= 0 || o.segment <= 0 || o.overloadSegment <= 0 || o.concurrentSegment <= 0 {
		fmt.Fprintln(os.Stderr, "bench: every size flag must be positive")
		return 2
	}
	testing.Init() // testing.Benchmark reads -test.benchtime
	if err := flag.Set("test.benchtime", o.benchtime); err != nil {
		fmt.Fprintln(os.Stderr, "bench: -benchtime:", err)
		return 2
	}
	*dsn = firstOf(*dsn, os.Getenv("GORMBATCH_MYSQL_DSN"), defaultMariaDSN)
	*pgDSN = firstOf(*pgDSN, os.Getenv("GORMBATCH_POSTGRES_DSN"), defaultPostgresDSN)

	start := time.Now()
	ctx := context.Background()
	b := &bench{o: o, rng: rand.New(rand.NewPCG(*seed, 0)),
		warn: func(format string, args ...any) { fmt.Fprintf(os.Stderr, "warning: "+format+"\n", args...) }}
	dir, err := os.MkdirTemp("", "gormbatch-bench-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	sqlitePair, err := openSQLitePair(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: sqlite:", err)
		return 1
	}
	defer sqlitePair.Close()

	skip := map[string]string{}
	switch {
	case *sqliteOnly:
		skip["mariadb"], skip["postgres"] = "skipped (-sqlite-only)", "skipped (-sqlite-only)"
	case *skipPostgres:
		skip["postgres"] = "skipped (-skip-postgres)"
	}
	backends := []*backend{sqliteBackend()}
	for _, s := range []struct{ name, dsn string }{{"mariadb", *dsn}, {"postgres", *pgDSN}} {
		k := &backend{name: s.name, skip: skip[s.name]}
		if k.skip == "" {
			k = openServer(ctx, s.name, s.dsn, o)
		}
		if k.up() {
			fmt.Printf("%s %s at %s\n", k.label, k.version, k.addr())
		} else {
			fmt.Printf("%s: %s; its figures are null\n", s.name, k.skip)
		}
		backends = append(backends, k)
	}
	// On Ctrl-C: stop the hogs, the heavy queries still running and remove
	// the SQLite files before exiting.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "interrupted: stopping CPU hogs and leftover heavy queries")
		stopAllHogs()
		for _, k := range backends {
			if k.mon != nil {
				kctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
				k.killOrphans(kctx)
				cancel()
			}
		}
		os.RemoveAll(dir)
		os.Exit(130)
	}()

	res := &Results{StopTime: map[string]*StopTime{"mariadb": nil, "postgres": nil}}
	var figs []*Figure
	phase := func(k *backend, name string, f func()) {
		if !k.up() {
			f() // placeholders
			return
		}
		t0 := time.Now()
		fmt.Printf("  %-46s", name+" ("+k.name+") ...")
		f()
		fmt.Printf(" %5.1fs\n", time.Since(t0).Seconds())
	}
	openPair := func(k *backend, instrumented bool) *pair {
		if !k.up() {
			return nil
		}
		if k.name == "sqlite" {
			return sqlitePair
		}
		p, err := k.openPair(instrumented)
		if err != nil {
			k.skip = fmt.Sprintf("%s: opening pools: %v", k.label, err)
			b.warn("%s", k.skip)
			return nil
		}
		return p
	}
	for _, k := range backends {
		p := openPair(k, false)
		phase(k, "overhead, 8 PK reads", func() { figs = append(figs, b.overhead(k, p)...) })
		phase(k, "growth", func() {
			if p != nil {
				res.Growth = append(res.Growth, b.growth(k, p)...)
			}
		})
		phase(k, "concurrent batches", func() { figs = append(figs, b.concurrentFigures(k, p)...) })
		phase(k, "speedup, 8 × 50 ms", func() { figs = append(figs, b.speedupFigure(k, p)) })
		if k.name == "sqlite" {
			continue
		}
		if p != nil {
			p.Close()
		}
		p = openPair(k, true)
		phase(k, "overshoot / orphans / reconnects / stop time", func() {
			fs, st := b.deadlineFigures(ctx, k, p)
			figs = append(figs, fs...)
			res.StopTime[k.name] = st
		})
		phase(k, "neighbour p99", func() { figs = append(figs, b.neighbourFigure(ctx, k, p)) })
		if *skipOverload {
			fs := b.overloadFigures(ctx, k, nil)
			for _, f := range fs {
				f.Note = "not measured: skipped (-skip-overload)"
			}
			figs = append(figs, fs...)
		} else {
			phase(k, "overload (2 CPU hogs)", func() { figs = append(figs, b.overloadFigures(ctx, k, p)...) })
		}
		if p != nil {
			p.Close()
		}
		k.close()
	}

	skips := map[string]string{}
	for _, k := range backends {
		skips[k.name] = k.skip
	}
	for _, f := range figs {
		b.finish(f, skips[f.Backend], strings.HasPrefix(f.Name, "overload_"))
	}
	slices.SortStableFunc(figs, func(x, y *Figure) int {
		if d := slices.Index(figureOrder, x.Name) - slices.Index(figureOrder, y.Name); d != 0 {
			return d
		}
		return slices.Index(backendOrder, x.Backend) - slices.Index(backendOrder, y.Backend)
	})
	res.Figures = figs
	res.Stability = stability(figs)
	wall := time.Since(start)
	res.Meta = meta(o, *long, backends, wall)
	for _, k := range backends {
		if fs := b.failed["growth/"+k.name]; len(fs) > 0 {
			res.Meta["growth_failed_queries_"+k.name] = fs
		}
	}

	printTables(res)
	if *compare != "" {
		if err := compareRuns(*compare, res.Stability); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -compare:", err)
			return 1
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	jsonPath := filepath.Join(*out, "results.json")
	txtPath := filepath.Join(*out, "bench.txt")
	pngPath := filepath.Join(*out, "results.png")
	if err := os.WriteFile(jsonPath, append(js, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if err := b.lines.write(txtPath, cpuModel()); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if err := drawChart(res, pngPath); err != nil {
		fmt.Fprintln(os.Stderr, "bench: chart:", err)
		return 1
	}
	fmt.Printf("\nwrote %s, %s and %s (%.1fs)\n", jsonPath, txtPath, pngPath, wall.Seconds())
	fmt.Printf("compare two runs: benchstat old/bench.txt %s; plugin vs naive: benchstat -col /mode %s\n", txtPath, txtPath)
	return 0
}

func firstOf(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

func meta(o options, long bool, backends []*backend, wall time.Duration) map[string]any {
	m := map[string]any{
		"date":       time.Now().Format(time.RFC3339),
		"nproc":      runtime.NumCPU(),
		"cpu_model":  cpuModel(),
		"go_version": runtime.Version(),
		"os_arch":    runtime.GOOS + "/" + runtime.GOARCH,
		"long":       long,
		"wall_s":     round3(wall.Seconds()),
		"options": map[string]any{
			"overhead_rounds": o.overheadRounds, "batches": o.batches, "benchtime": o.benchtime,
			"rounds": o.rounds, "speedup_rounds": o.speedupRounds,
			"neighbour_rounds": o.neighbourRounds, "segment": o.segment.String(),
			"overload_rounds": o.overloadRounds, "overload_segment": o.overloadSegment.String(), "overload_clients": o.overloadClients,
			"concurrent_rounds": o.concurrentRounds, "concurrent_segment": o.concurrentSegment.String(),
			"growth_queries": o.growthQueries, "growth_max": o.growthMax,
			"heavy_scale": o.heavyScale, "pg_heavy_rows": o.pgHeavyRows,
			"deadline": o.deadline.String(), "scheduler_allowance": o.schedulerAllowance.String(),
			"pool_size": poolSize, "kill_grace": killGrace.String(),
		},
	}
	for _, k := range backends {
		if k.name == "sqlite" {
			continue
		}
		m[k.name+"_version"], m[k.name+"_addr"] = nil, nil
		if k.version != "" {
			m[k.name+"_version"], m[k.name+"_addr"] = k.version, k.addr()
		}
		if k.skip != "" {
			m[k.name+"_skipped"] = k.skip
		}
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		deps := map[string]string{}
		for _, d := range bi.Deps {
			switch d.Path {
			case "gorm.io/gorm", "gorm.io/driver/mysql", "gorm.io/driver/sqlite", "gorm.io/driver/postgres",
				"github.com/go-sql-driver/mysql", "github.com/mattn/go-sqlite3", "github.com/jackc/pgx/v5", "golang.org/x/sync":
				deps[d.Path] = d.Version
			}
		}
		m["modules"] = deps
	}
	return m
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
