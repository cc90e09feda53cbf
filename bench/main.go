// Command bench measures gormbatch against the naive errgroup baseline on
// SQLite and MariaDB, prints a table, and writes results.json and
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
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

const defaultDSN = "root@tcp(127.0.0.1:3306)/test"

// Results is the content of results.json.
type Results struct {
	Meta    map[string]any `json:"meta"`
	Figures []*Figure      `json:"figures"`
	Growth  []GrowthRow    `json:"growth"`
}

func main() {
	os.Exit(run())
}

func run() int {
	var (
		long       = flag.Bool("long", false, "fuller run: more rounds, longer segments (several minutes)")
		sqliteOnly = flag.Bool("sqlite-only", false, "skip MariaDB: run the SQLite figures only")
		out        = flag.String("out", ".", "directory for results.json and results.png")
		dsn        = flag.String("dsn", "", "MariaDB DSN (default $GORMBATCH_MYSQL_DSN, else "+defaultDSN+")")
		seed       = flag.Uint64("seed", 1, "seed for the primary keys read")
		o          options
	)
	flag.IntVar(&o.rounds, "rounds", 12, "rounds per mode of the overshoot/orphans/reconnects batches; speedup and overhead use half as many (at least 3)")
	flag.DurationVar(&o.segment, "duration", 3*time.Second, "length of one neighbour segment (4 segments per neighbour round)")
	flag.IntVar(&o.neighbourRounds, "neighbour-rounds", 2, "neighbour rounds (plugin/naive × calm/heavy segments each)")
	flag.IntVar(&o.batches, "batches", 200, "batches of 8 PK reads per overhead round on MariaDB (4× as many on SQLite)")
	flag.IntVar(&o.growthQueries, "growth-queries", 2048, "queries per batch size and mode in the growth table")
	flag.IntVar(&o.growthMax, "growth-max", 256, "largest batch size of the growth table")
	flag.IntVar(&o.heavyScale, "heavy-scale", 50, "c in the heavy query's seq_1_to_c (50: about 2 s of CPU)")
	flag.DurationVar(&o.deadline, "deadline", 200*time.Millisecond, "batch deadline of the overshoot, orphans, reconnects and neighbour figures")
	flag.Parse()
	if *long {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"rounds": "40", "duration": "6s", "neighbour-rounds": "4",
			"batches": "1000", "growth-queries": "8192"} {
			if !set[name] {
				flag.Set(name, v)
			}
		}
	}
	o.speedupRounds = max(3, o.rounds/2)
	o.overheadRounds = max(3, o.rounds/2)
	if o.rounds < 1 || o.neighbourRounds < 1 || o.batches < 1 || o.growthQueries < 1 || o.growthMax < 1 ||
		o.heavyScale < 1 || o.deadline <= 0 || o.segment <= 0 {
		fmt.Fprintln(os.Stderr, "bench: every size flag must be positive")
		return 2
	}
	if *dsn == "" {
		*dsn = os.Getenv("GORMBATCH_MYSQL_DSN")
	}
	if *dsn == "" {
		*dsn = defaultDSN
	}
	start := time.Now()
	ctx := context.Background()

	b := &bench{opts: o, dsn: *dsn, rng: rand.New(rand.NewPCG(*seed, 0)),
		warn: func(format string, args ...any) { fmt.Fprintf(os.Stderr, "warning: "+format+"\n", args...) }}

	dir, err := os.MkdirTemp("", "gormbatch-bench-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if b.sqlite, err = openSQLitePair(dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench: sqlite:", err)
		return 1
	}
	defer b.sqlite.Close()

	mariaVersion := ""
	if *sqliteOnly {
		fmt.Println("MariaDB skipped (-sqlite-only): running the SQLite figures only.")
	} else if err := b.openMaria(ctx); err != nil {
		fmt.Printf("MariaDB unreachable at %s: %v\n", mariaAddr(*dsn), err)
		fmt.Println("Running the SQLite figures only; set GORMBATCH_MYSQL_DSN (or -dsn) to a reachable MariaDB for the rest.")
	} else {
		mariaVersion = b.mon.version
		defer b.mon.Close()
		defer b.maria.Close()
		defer b.dropMariaTable()
		fmt.Printf("MariaDB %s at %s\n", mariaVersion, mariaAddr(*dsn))
	}
	// On Ctrl-C, kill the heavy queries still running and remove the SQLite
	// files before exiting.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		if b.mon != nil {
			fmt.Fprintln(os.Stderr, "interrupted: killing leftover heavy queries")
			kctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
			b.mon.killOrphans(kctx)
			cancel()
		}
		os.RemoveAll(dir)
		os.Exit(130)
	}()

	phase := func(name string) func() {
		t0 := time.Now()
		fmt.Printf("  %-44s", name+" ...")
		return func() { fmt.Printf(" %5.1fs\n", time.Since(t0).Seconds()) }
	}
	res := &Results{}
	figs := map[string]*Figure{}
	keep := func(fs ...*Figure) {
		for _, f := range fs {
			figs[f.Name] = f
		}
	}

	done := phase("overhead, 8 PK reads (sqlite)")
	keep(b.overheadFigure("sqlite", b.sqlite))
	done()
	if b.maria != nil {
		done = phase("overhead, 8 PK reads (mariadb)")
	}
	keep(b.overheadFigure("mariadb", b.maria))
	if b.maria != nil {
		done()
	}
	done = phase("growth (sqlite)")
	res.Growth = append(res.Growth, b.growth(b.sqlite)...)
	done()
	if b.maria != nil {
		done = phase("growth (mariadb)")
		res.Growth = append(res.Growth, b.growth(b.maria)...)
		done()
	}
	done = phase("speedup, 8 × 50 ms")
	keep(b.speedupFigure())
	done()
	done = phase("overshoot / orphans / reconnects")
	keep(b.deadlineFigures(ctx)...)
	done()
	if b.maria != nil {
		done = phase("neighbour p99")
	}
	keep(b.neighbourFigure(ctx))
	if b.maria != nil {
		done()
	}

	for _, spec := range figureSpecs {
		f := figs[spec.Name]
		if f.Plugin == nil && f.Note == "" {
			f.Note = "not measured: needs MariaDB"
		}
		b.finish(f)
		res.Figures = append(res.Figures, f)
	}
	wall := time.Since(start)
	res.Meta = meta(o, *long, mariaVersion, mariaAddr(*dsn), b.maria != nil, wall)
	if fs := b.failed["growth"]; len(fs) > 0 {
		res.Meta["growth_failed_queries"] = fs
	}

	printTable(res)
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	jsonPath, pngPath := filepath.Join(*out, "results.json"), filepath.Join(*out, "results.png")
	if err := os.WriteFile(jsonPath, append(js, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if err := drawChart(res, pngPath); err != nil {
		fmt.Fprintln(os.Stderr, "bench: chart:", err)
		return 1
	}
	fmt.Printf("\nwrote %s and %s (%.1fs)\n", jsonPath, pngPath, wall.Seconds())
	return 0
}

// openMaria connects the monitor and the plugin/naive pools.
func (b *bench) openMaria(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	mon, err := openMonitor(cctx, b.dsn)
	if err != nil {
		return err
	}
	if !isMariaDB(mon.version) {
		mon.Close()
		return fmt.Errorf("server %s is not MariaDB", mon.version)
	}
	// Nothing of an earlier, interrupted run may skew the figures.
	if _, err := mon.killOrphans(cctx); err != nil {
		mon.Close()
		return err
	}
	p, err := openMariaPair(b.dsn)
	if err != nil {
		mon.Close()
		return err
	}
	b.mon, b.maria = mon, p
	return nil
}

func (b *bench) dropMariaTable() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.mon.killOrphans(ctx)
	b.mon.conn.ExecContext(ctx, "DROP TABLE IF EXISTS gb_bench_items")
}

func meta(o options, long bool, mariaVersion, addr string, maria bool, wall time.Duration) map[string]any {
	m := map[string]any{
		"date":       time.Now().Format(time.RFC3339),
		"nproc":      runtime.NumCPU(),
		"cpu_model":  cpuModel(),
		"go_version": runtime.Version(),
		"os_arch":    runtime.GOOS + "/" + runtime.GOARCH,
		"long":       long,
		"wall_s":     round3(wall.Seconds()),
		"options": map[string]any{
			"rounds": o.rounds, "speedup_rounds": o.speedupRounds, "overhead_rounds": o.overheadRounds,
			"batches": o.batches, "neighbour_rounds": o.neighbourRounds, "segment": o.segment.String(),
			"growth_queries": o.growthQueries, "growth_max": o.growthMax, "heavy_scale": o.heavyScale,
			"deadline": o.deadline.String(), "pool_size": poolSize,
		},
		"mariadb_version": nil,
	}
	if maria {
		m["mariadb_version"] = mariaVersion
		m["mariadb_addr"] = addr
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		deps := map[string]string{}
		for _, d := range bi.Deps {
			switch d.Path {
			case "gorm.io/gorm", "gorm.io/driver/mysql", "gorm.io/driver/sqlite",
				"github.com/go-sql-driver/mysql", "github.com/mattn/go-sqlite3", "golang.org/x/sync":
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

func fmtVal(x *float64) string {
	if x == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", *x)
}

func printTable(res *Results) {
	fmt.Printf("\n%s, %d cores, %s, MariaDB %v\n\n", res.Meta["cpu_model"], res.Meta["nproc"], res.Meta["go_version"], orNA(res.Meta["mariadb_version"]))
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "figure\tbackend\tplugin\tnaive\tgoal\tplugin meets goal\tunit")
	for _, f := range res.Figures {
		meets := "n/a"
		if f.Meets != nil {
			meets = map[bool]string{true: "yes", false: "NO"}[*f.Meets]
		}
		goal := fmt.Sprintf("<= %g", f.Goal)
		if f.Better == "higher" {
			goal = fmt.Sprintf(">= %g", f.Goal)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Name, orNA(f.Backend), fmtVal(f.Plugin), fmtVal(f.Naive), goal, meets, f.Unit)
	}
	w.Flush()
	if len(res.Growth) > 0 {
		fmt.Println("\ngrowth: batches of N PK reads, per query")
		w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(w, "backend\tN\tplugin µs\tplugin B\tplugin allocs\tnaive µs\tnaive B\tnaive allocs\t")
		for _, g := range res.Growth {
			fmt.Fprintf(w, "%s\t%d\t%.1f\t%.0f\t%.1f\t%.1f\t%.0f\t%.1f\t\n", g.Backend, g.Size,
				g.PluginUsPerQuery, g.PluginBytesPerQuery, g.PluginAllocsPerQ,
				g.NaiveUsPerQuery, g.NaiveBytesPerQuery, g.NaiveAllocsPerQ)
		}
		w.Flush()
	}
}

func orNA(v any) any {
	if v == nil || v == "" {
		return "n/a"
	}
	return v
}
