package main

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// options are the size knobs, set from the flags.
type options struct {
	overheadRounds     int           // paired rounds of the overhead figures
	batches            int           // batches of 8 point reads per overhead round and mode (servers; 4× on SQLite)
	benchtime          string        // testing.Benchmark run per mode, for allocations ("300ms", "2000x")
	rounds             int           // rounds per mode: overshoot / orphans / reconnects / stop time
	speedupRounds      int           // rounds per mode: speedup (rounds/2, at least 3)
	segment            time.Duration // one neighbour segment
	neighbourRounds    int           // rounds of the four neighbour segments
	overloadSegment    time.Duration // one overload segment
	overloadRounds     int           // rounds of the two overload segments
	overloadClients    int           // client goroutines of the overload figure
	concurrentSegment  time.Duration // one concurrent-batches segment
	concurrentRounds   int           // rounds of the two concurrent-batches segments
	growthQueries      int           // queries per batch size and mode (at least 2 batches)
	growthMax          int           // largest growth batch size
	heavyScale         int           // c in MariaDB's seq_1_to_c heavy query
	pgHeavyRows        int           // rows of PostgreSQL's generate_series heavy query
	deadline           time.Duration // batch deadline of the overshoot, neighbour and overload figures
	schedulerAllowance time.Duration // added to KillGrace in the overload goal
}

// bench holds what the figures share.
type bench struct {
	o      options
	rng    *rand.Rand
	warn   func(format string, args ...any)
	failed map[string]map[string]int // phase/backend -> mode -> queries failed on their own
	lines  benchLines                // bench.txt
}

func (b *bench) ids(n int) []uint {
	ids := make([]uint, n)
	for i := range ids {
		ids[i] = uint(1 + b.rng.IntN(seedItems))
	}
	return ids
}

// check counts queries that failed on their own (not by the deadline) per
// figure and mode, warning once per pair: such a figure is not
// trustworthy, and finish marks it so.
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

// finish marks a figure whose batches had queries failing on their own
// (figures whose own subject is failures set failOK), notes an unmeasured
// one, and judges its goal.
func (b *bench) finish(f *Figure, skip string, failOK bool) {
	if f.Plugin == nil && f.Naive == nil && f.Note == "" {
		f.Note = "not measured"
		if skip != "" {
			f.Note += ": " + skip
		}
	}
	f.judge()
	fs := b.failed[f.phase]
	if len(fs) == 0 || failOK {
		return
	}
	f.Extra["failed_queries"] = fs
	f.Note = fmt.Sprintf("UNRELIABLE: queries failed on their own %v; ", fs) + f.Note
	if fs["plugin"] > 0 && f.Meets != nil {
		no := false
		f.Meets = &no
	}
}
