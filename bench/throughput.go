package main

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// concurrentFigures run many batches at once: concurrentClients goroutines
// each loop batches of 8 point reads (10 s deadline, never reached) on the
// pool of 16 for a segment; plugin and naive segments alternate. Per mode:
//
//   - concurrent_batches_per_s: batches completed / segment wall time; the
//     ratio is the median of per-round ratios plugin / naive;
//   - concurrent_wait_p99_ms: p99 of one batch's time in Wait (naive: from
//     its context to g.Wait's return) over every batch of the segments
//     (p50 in extra); spread: the per-segment p99s.
//
// The plugin keeps a quarter of the pool to the rest of the application
// (MaxInFlight 12 of 16), the naive errgroup takes all 16.
func (b *bench) concurrentFigures(k *backend, p *pair) []*Figure {
	const clients, per = 64, 8
	tput := newFigure("concurrent", "concurrent_batches_per_s", k.name, "batches/s")
	wait := newFigure("concurrent", "concurrent_wait_p99_ms", k.name, "ms per batch")
	figs := []*Figure{tput, wait}
	if p == nil {
		return figs
	}
	perRound := map[string][]float64{}
	p99s := map[string][]float64{}
	all := map[string][]float64{}
	ms2 := modes(p)
	for r := range b.o.concurrentRounds {
		for _, m := range alternate(ms2, r) {
			var mu sync.Mutex
			var lat []float64
			var wg sync.WaitGroup
			t0 := time.Now()
			end := t0.Add(b.o.concurrentSegment)
			for range clients {
				rng := rand.New(rand.NewPCG(b.rng.Uint64(), 0))
				wg.Go(func() {
					ids := make([]uint, per)
					for time.Now().Before(end) {
						for i := range ids {
							ids[i] = uint(1 + rng.IntN(seedItems))
						}
						o := m.run(nil, pointReads(ids...), 10*time.Second)
						mu.Lock()
						b.check("concurrent/"+k.name, m.name, o)
						lat = append(lat, ms(o.elapsed))
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			wall := time.Since(t0)
			perRound[m.name] = append(perRound[m.name], float64(len(lat))/wall.Seconds())
			p99s[m.name] = append(p99s[m.name], percentile(lat, 99))
			all[m.name] = append(all[m.name], lat...)
			b.lines.add(fmt.Sprintf("Concurrent/db=%s/mode=%s", k.name, m.name), len(lat),
				metric{float64(wall.Nanoseconds()) / float64(max(len(lat), 1)), "ns/op"})
		}
	}
	tput.set(percentile(perRound["plugin"], 50), percentile(perRound["naive"], 50))
	tput.setRatio(ratios(perRound["plugin"], perRound["naive"]))
	tput.spread("plugin", perRound["plugin"])
	tput.spread("naive", perRound["naive"])
	tput.Note = fmt.Sprintf("%d goroutines × batches of %d PK reads, pool of %d; %d × %v segments per mode", clients, per, poolSize, b.o.concurrentRounds, b.o.concurrentSegment)
	wait.set(percentile(all["plugin"], 99), percentile(all["naive"], 99))
	wait.setRatio(ratios(p99s["plugin"], p99s["naive"]))
	wait.spread("plugin", p99s["plugin"])
	wait.spread("naive", p99s["naive"])
	wait.Extra["plugin_p50_ms"], wait.Extra["naive_p50_ms"] = round3(percentile(all["plugin"], 50)), round3(percentile(all["naive"], 50))
	wait.Extra["plugin_batches"], wait.Extra["naive_batches"] = len(all["plugin"]), len(all["naive"])
	return figs
}

// speedupFigure runs 8 queries that each sleep 50 ms as one batch (plugin,
// default concurrency; naive errgroup) and one after another on one pool,
// in rotating order: median sequential time / median batch time.
func (b *bench) speedupFigure(k *backend, p *pair) *Figure {
	f := newFigure("speedup", "speedup_8x50ms", k.name, "sequential / concurrent")
	f.atLeast("plugin", ">= 6.5", 6.5)
	if p == nil {
		return f
	}
	jobs := rawJobs(k.sleep, 8)
	ms3 := append(modes(p), mode{"sequential", sequentialRunner(p.naive), p.naive})
	res := map[string][]float64{}
	for _, m := range ms3 {
		m.run(nil, jobs, 5*time.Second)
	}
	for r := range b.o.speedupRounds {
		for i := range ms3 {
			m := ms3[(i+r)%len(ms3)]
			o := m.run(nil, jobs, 5*time.Second)
			b.check("speedup/"+k.name, m.name, o)
			res[m.name] = append(res[m.name], ms(o.total))
		}
	}
	seq := percentile(res["sequential"], 50)
	f.set(seq/percentile(res["plugin"], 50), seq/percentile(res["naive"], 50))
	f.Extra["sequential_p50_ms"] = round3(seq)
	f.Extra["plugin_p50_ms"] = round3(percentile(res["plugin"], 50))
	f.Extra["naive_p50_ms"] = round3(percentile(res["naive"], 50))
	f.Extra["rounds"] = b.o.speedupRounds
	f.Note = fmt.Sprintf("8 × %q: median sequential time / median batch time (pool of %d)", k.sleep, poolSize)
	return f
}
