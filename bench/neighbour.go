package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// neighbourFigure measures what a batch's heavy query does to the rest of
// the application: a PK lookup loops (2 ms apart) on its own 1-connection
// pool while batches start every deadline + 50 ms: 3 PK reads + 1 heavy
// query (heavy segments) or 4 PK reads (calm segments). The figure is, per
// mode, the lookup's p99 in heavy segments / its p99 in calm segments.
// Segments alternate plugin/naive and calm/heavy; the harness stops the
// heavy queries left at the end of each segment (the naive ones keep
// running after their cancel and pile up until then: that is what the
// figure shows).
func (b *bench) neighbourFigure(ctx context.Context, k *backend, p *pair) *Figure {
	f := newFigure("neighbour", "neighbour_p99_ratio", k.name, "p99 heavy / p99 calm")
	f.atMost("plugin", "<= 1.5", 1.5)
	if p == nil {
		return f
	}
	nb, err := k.openSingle(ctx)
	if err != nil {
		b.warn("%s neighbour: %v", k.name, err)
		return f
	}
	defer nb.Close()
	lat := map[string][]float64{}
	killed := map[string]int{}
	pace := b.o.deadline + 50*time.Millisecond
	segment := func(m mode, heavy bool) error {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var xs []float64
		var nerr error
		wg.Go(func() {
			for id := 1; ; id = id%seedItems + 1 {
				select {
				case <-stop:
					return
				default:
				}
				var v int
				t0 := time.Now()
				if err := nb.QueryRowContext(ctx, k.lookup, id).Scan(&v); err != nil {
					nerr = err
					return
				}
				xs = append(xs, ms(time.Since(t0)))
				time.Sleep(2 * time.Millisecond)
			}
		})
		for end := time.Now().Add(b.o.segment); time.Now().Before(end); {
			next := time.Now().Add(pace)
			jobs := pointReads(b.ids(3)...)
			if heavy {
				jobs = append(jobs, job{sql: k.heavy})
			} else {
				jobs = append(jobs, job{pk: b.ids(1)[0]})
			}
			b.check("neighbour/"+k.name, m.name, m.run(nil, jobs, b.o.deadline))
			time.Sleep(time.Until(next))
		}
		close(stop)
		wg.Wait()
		if nerr != nil {
			return fmt.Errorf("neighbour query: %w", nerr)
		}
		key := m.name + map[bool]string{false: "/calm", true: "/heavy"}[heavy]
		lat[key] = append(lat[key], xs...)
		n, err := k.killOrphans(ctx)
		killed[m.name] += n
		waitReclaimed(p.pl)
		return err
	}
	ms2 := modes(p)
	for r := range b.o.neighbourRounds {
		for _, m := range alternate(ms2, r) {
			for _, heavy := range []bool{false, true} {
				if err := segment(m, heavy); err != nil {
					b.warn("%s neighbour: %v", k.name, err)
					return f
				}
			}
		}
	}
	p99 := func(key string) float64 { return percentile(lat[key], 99) }
	f.set(p99("plugin/heavy")/p99("plugin/calm"), p99("naive/heavy")/p99("naive/calm"))
	for _, key := range []string{"plugin/calm", "plugin/heavy", "naive/calm", "naive/heavy"} {
		f.Extra[key+"_p99_ms"] = round3(p99(key))
		f.Extra[key+"_p50_ms"] = round3(percentile(lat[key], 50))
		f.Extra[key+"_samples"] = len(lat[key])
	}
	f.Extra["plugin_orphans_stopped_by_harness"] = killed["plugin"]
	f.Extra["naive_orphans_stopped_by_harness"] = killed["naive"]
	f.Note = fmt.Sprintf("PK lookup loop on its own 1-connection pool; a batch every %v, %v segments", pace, b.o.segment)
	return f
}
