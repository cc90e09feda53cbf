package main

// Allocation and time per batch of 8 primary-key reads, plugin vs the naive
// errgroup baseline (the main program reports the same through
// testing.Benchmark, as alloc_bytes_per_query and allocs_per_query):
//
//	go test -run xxx -bench . -benchmem -benchtime 2000x
//
// allocs/op and B/op are per batch of 8; allocs/query, B/query and
// ns/query divide by 8. The MariaDB and PostgreSQL variants use
// $GORMBATCH_MYSQL_DSN and $GORMBATCH_POSTGRES_DSN (defaults as in the main
// program) and skip when their server is unreachable.

import (
	"context"
	"math/rand/v2"
	"os"
	"runtime"
	"testing"
	"time"
)

func BenchmarkBatch8(b *testing.B) {
	for _, db := range []string{"sqlite", "mariadb", "postgres"} {
		for _, mode := range []string{"plugin", "naive"} {
			b.Run("db="+db+"/mode="+mode, func(b *testing.B) {
				p := pairForBench(b, db)
				run := naiveRunner(p.naive)
				if mode == "plugin" {
					run = pluginRunner(p.plugin)
				}
				bench8(b, run)
			})
		}
	}
}

// pairForBench opens the plain (uninstrumented) pair of a backend, or skips.
func pairForBench(b *testing.B, name string) *pair {
	if name == "sqlite" {
		p, err := openSQLitePair(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(p.Close)
		return p
	}
	dsn := map[string]string{"mariadb": os.Getenv("GORMBATCH_MYSQL_DSN"), "postgres": os.Getenv("GORMBATCH_POSTGRES_DSN")}[name]
	dsn = firstOf(dsn, map[string]string{"mariadb": defaultMariaDSN, "postgres": defaultPostgresDSN}[name])
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	k := openServer(ctx, name, dsn, options{heavyScale: 1, pgHeavyRows: 1})
	if !k.up() {
		b.Skipf("%s: set GORMBATCH_MYSQL_DSN / GORMBATCH_POSTGRES_DSN to run it", k.skip)
	}
	b.Cleanup(k.close)
	p, err := k.openPair(false)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	return p
}

func bench8(b *testing.B, run runner) {
	rng := rand.New(rand.NewPCG(1, 0))
	batches := make([][]job, 64)
	for i := range batches {
		ids := make([]uint, 8)
		for j := range ids {
			ids[j] = uint(1 + rng.IntN(seedItems))
		}
		batches[i] = pointReads(ids...)
	}
	for i := range 10 { // warm the pool (and the plugin's per-connection state)
		run(nil, batches[i], 5*time.Second)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	n := 0
	for b.Loop() {
		if o := run(nil, batches[n%len(batches)], 5*time.Second); o.failed > 0 || o.cancelled > 0 {
			b.Fatalf("batch: %d failed, %d cancelled: %v", o.failed, o.cancelled, o.firstErr)
		}
		n++
	}
	runtime.ReadMemStats(&m1)
	q := float64(8 * n)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/q, "ns/query")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/q, "allocs/query")
	b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/q, "B/query")
}
