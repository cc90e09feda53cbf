package main

// Allocation and time per batch of 8 primary-key reads, plugin vs the naive
// errgroup baseline:
//
//	go test -run xxx -bench . -benchmem -benchtime 2000x
//
// allocs/op and B/op are per batch of 8; allocs/query, B/query and ns/query
// divide by 8. The MariaDB variants use $GORMBATCH_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test) and skip when it is unreachable.

import (
	"context"
	"math/rand/v2"
	"os"
	"runtime"
	"testing"
	"time"
)

func BenchmarkPlugin8PointReadsSQLite(b *testing.B) {
	bench8(b, sqliteForBench(b), func(p *pair) runner { return pluginRunner(p.plugin) })
}

func BenchmarkNaive8PointReadsSQLite(b *testing.B) {
	bench8(b, sqliteForBench(b), func(p *pair) runner { return naiveRunner(p.naive) })
}

func BenchmarkPlugin8PointReadsMariaDB(b *testing.B) {
	bench8(b, mariaForBench(b), func(p *pair) runner { return pluginRunner(p.plugin) })
}

func BenchmarkNaive8PointReadsMariaDB(b *testing.B) {
	bench8(b, mariaForBench(b), func(p *pair) runner { return naiveRunner(p.naive) })
}

func sqliteForBench(b *testing.B) *pair {
	p, err := openSQLitePair(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	return p
}

func mariaForBench(b *testing.B) *pair {
	dsn := os.Getenv("GORMBATCH_MYSQL_DSN")
	if dsn == "" {
		dsn = defaultDSN
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	mon, err := openMonitor(ctx, dsn)
	if err != nil {
		b.Skipf("MariaDB unreachable at %s (%v): set GORMBATCH_MYSQL_DSN to run the MariaDB benchmarks", mariaAddr(dsn), err)
	}
	b.Cleanup(mon.Close)
	p, err := openMariaPair(dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	return p
}

func bench8(b *testing.B, p *pair, mk func(*pair) runner) {
	run := mk(p)
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
		run(batches[i], 5*time.Second)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	n := 0
	for b.Loop() {
		if o := run(batches[n%len(batches)], 5*time.Second); o.failed > 0 || o.cancelled > 0 {
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
