package main

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// overhead measures what the plugin costs on batches of 8 point reads that
// never reach their deadline (2 s), against the naive errgroup:
//
//   - overhead_ratio: wall time per query. Many short paired rounds: in
//     each, the plugin and the naive way run the same batches one after the
//     other (which goes first alternates), and the round's ratio is plugin
//     / naive. The figure is the median of the per-round ratios, with their
//     p25 and p75; plugin and naive are the medians of µs per query
//     (including building the batch: what a caller pays).
//   - overhead_cpu_ratio: the same rounds, process CPU time (getrusage
//     user + sys, the whole client process: database/sql, the driver,
//     SQLite's engine when embedded; not the server's) per query.
//   - alloc_bytes_per_query, allocs_per_query: testing.Benchmark of the
//     same batches, per mode (B/op and allocs/op divided by 8).
func (b *bench) overhead(k *backend, p *pair) []*Figure {
	const per = 8
	wall := newFigure("overhead", "overhead_ratio", k.name, "µs per query (wall)")
	cpu := newFigure("overhead", "overhead_cpu_ratio", k.name, "µs CPU per query")
	bytes := newFigure("overhead", "alloc_bytes_per_query", k.name, "bytes per query")
	allocs := newFigure("overhead", "allocs_per_query", k.name, "allocations per query")
	goal := 1.05 // issue 12: SQLite and MariaDB
	if k.name == "postgres" {
		goal = 1.10 // issue 10
	}
	wall.atMost("ratio", fmt.Sprintf("<= %.2f (median per-round ratio)", goal), goal)
	figs := []*Figure{wall, cpu, bytes, allocs}
	if p == nil {
		return figs
	}
	phase := "overhead/" + k.name
	batches := b.o.batches
	if k.name == "sqlite" {
		batches *= 4 // about 5× faster than a server over loopback TCP: similar round length
	}
	ms2 := modes(p)
	for _, m := range ms2 { // warm up: pools, prepared statements, the plugin's state
		for range 20 {
			m.run(nil, pointReads(b.ids(per)...), 2*time.Second)
		}
	}
	wallUS, cpuUS := map[string][]float64{}, map[string][]float64{}
	for r := range b.o.overheadRounds {
		jobs := make([][]job, batches)
		for i := range jobs {
			jobs[i] = pointReads(b.ids(per)...)
		}
		for _, m := range alternate(ms2, r) {
			c0, t0 := cpuTime(), time.Now()
			for _, js := range jobs {
				b.check(phase, m.name, m.run(nil, js, 2*time.Second))
			}
			w, c := time.Since(t0), cpuTime()-c0
			q := float64(batches * per)
			wallUS[m.name] = append(wallUS[m.name], us(w)/q)
			cpuUS[m.name] = append(cpuUS[m.name], us(c)/q)
			b.lines.add(fmt.Sprintf("Overhead/db=%s/mode=%s", k.name, m.name), batches,
				metric{float64(w.Nanoseconds()) / float64(batches), "ns/op"},
				metric{float64(c.Nanoseconds()) / float64(batches), "cpu-ns/op"})
		}
	}
	for _, x := range []struct {
		f   *Figure
		val map[string][]float64
	}{{wall, wallUS}, {cpu, cpuUS}} {
		x.f.set(percentile(x.val["plugin"], 50), percentile(x.val["naive"], 50))
		x.f.setRatio(ratios(x.val["plugin"], x.val["naive"]))
		x.f.spread("plugin", x.val["plugin"])
		x.f.spread("naive", x.val["naive"])
		x.f.Extra["rounds"], x.f.Extra["batches_per_round"] = b.o.overheadRounds, batches
	}
	wall.Note = "median of per-round ratios plugin/naive of wall time, batches of 8 PK reads (2 s deadline, never reached)"
	cpu.Note = "median of per-round ratios of client process CPU (getrusage user+sys), same rounds"

	// Allocations: testing.Benchmark per mode, over 64 batches in turn.
	jobs := make([][]job, 64)
	for i := range jobs {
		jobs[i] = pointReads(b.ids(per)...)
	}
	bpq, apq := map[string]float64{}, map[string]float64{}
	for _, m := range ms2 {
		res := testing.Benchmark(func(tb *testing.B) {
			tb.ReportAllocs()
			i := 0
			for tb.Loop() {
				b.check(phase, m.name, m.run(nil, jobs[i%len(jobs)], 2*time.Second))
				i++
			}
		})
		n := float64(max(res.N, 1))
		bpq[m.name], apq[m.name] = float64(res.MemBytes)/n/per, float64(res.MemAllocs)/n/per
		b.lines.add(fmt.Sprintf("Batch8/db=%s/mode=%s", k.name, m.name), res.N,
			metric{float64(res.T.Nanoseconds()) / n, "ns/op"},
			metric{float64(res.MemBytes) / n, "B/op"}, metric{float64(res.MemAllocs) / n, "allocs/op"})
	}
	for _, x := range []struct {
		f   *Figure
		val map[string]float64
	}{{bytes, bpq}, {allocs, apq}} {
		x.f.set(x.val["plugin"], x.val["naive"])
		x.f.Ratio = finite(round3(x.val["plugin"] / x.val["naive"]))
		x.f.Extra["benchtime"] = b.o.benchtime
	}
	bytes.Note = "testing.Benchmark of batches of 8 PK reads: B/op / 8"
	allocs.Note = "testing.Benchmark of batches of 8 PK reads: allocs/op / 8"
	return figs
}

// cpuTime is the process's CPU time so far (user + system, all threads).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
