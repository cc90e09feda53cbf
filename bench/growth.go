package main

import (
	"fmt"
	"runtime"
	"time"
)

// GrowthRow is one batch size of the growth table: per query, the wall
// time of whole batches (including building them) and the bytes and
// allocations (runtime.MemStats TotalAlloc and Mallocs deltas), plugin
// and naive, over the same batches.
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
	TimeRatio           float64 `json:"time_ratio"` // plugin / naive µs per query
}

// growthSizes are 1, 2, 4, ... 256, then 1024 and 4096, up to max.
func growthSizes(maxSize int) []int {
	var out []int
	for s := 1; s <= min(256, maxSize); s *= 2 {
		out = append(out, s)
	}
	for _, s := range []int{1024, 4096} {
		if s <= maxSize {
			out = append(out, s)
		}
	}
	return out
}

// growth times batches of each size, about growthQueries queries per size
// and mode (fewer, larger batches as the size grows: at least one), the
// two modes alternating which goes first from one size to the next.
func (b *bench) growth(k *backend, p *pair) []GrowthRow {
	var rows []GrowthRow
	var m0, m1 runtime.MemStats
	measure := func(m mode, size int, batches [][]job) (us, bytes, allocs float64) {
		m.run(nil, pointReads(b.ids(min(size, 64))...), time.Minute) // warm
		runtime.ReadMemStats(&m0)
		t0 := time.Now()
		for _, jobs := range batches {
			b.check("growth/"+k.name, m.name, m.run(nil, jobs, time.Minute))
		}
		el := time.Since(t0)
		runtime.ReadMemStats(&m1)
		n := float64(size * len(batches))
		b.lines.add(fmt.Sprintf("Growth/db=%s/size=%d/mode=%s", k.name, size, m.name), int(n),
			metric{float64(el.Nanoseconds()) / n, "ns/op"},
			metric{float64(m1.TotalAlloc-m0.TotalAlloc) / n, "B/op"},
			metric{float64(m1.Mallocs-m0.Mallocs) / n, "allocs/op"})
		return float64(el) / float64(time.Microsecond) / n,
			float64(m1.TotalAlloc-m0.TotalAlloc) / n,
			float64(m1.Mallocs-m0.Mallocs) / n
	}
	ms2 := modes(p)
	for i, size := range growthSizes(b.o.growthMax) {
		batches := make([][]job, max(1, b.o.growthQueries/size))
		for j := range batches {
			batches[j] = pointReads(b.ids(size)...)
		}
		row := GrowthRow{Backend: k.name, Size: size, Batches: len(batches)}
		for _, m := range alternate(ms2, i) {
			us, by, al := measure(m, size, batches)
			if m.name == "plugin" {
				row.PluginUsPerQuery, row.PluginBytesPerQuery, row.PluginAllocsPerQ = round1(us), round1(by), round1(al)
			} else {
				row.NaiveUsPerQuery, row.NaiveBytesPerQuery, row.NaiveAllocsPerQ = round1(us), round1(by), round1(al)
			}
		}
		row.TimeRatio = round3(row.PluginUsPerQuery / row.NaiveUsPerQuery)
		rows = append(rows, row)
	}
	return rows
}
