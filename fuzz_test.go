package gormbatch_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/gormbatch/gormbatch"
)

// fuzzLimits keeps one execution short: at most 6 queries, batch deadlines
// up to ~190ms, query costs up to ~85ms, and plans without any deadline
// cost at most 120ms in all.
var fuzzLimits = planLimits{maxQueries: 6, maxNatural: 120, scale: 60}

// FuzzBatch turns bytes into a batch plan on SQLite (see decodePlan:
// per-query costs through nap(), per-query timeouts, batch timeout, Limit,
// FailFast, Optional, parent cancels and deadlines, SQL errors, panics in
// hooks and closures) and checks every promise on it (see runPlan): one
// valid status per query, Done ⇔ destination written (sentinels
// otherwise), Wait's error nil iff every required query is Done, Wait
// bounded by its deadline, InUse 0 and no goroutine left after Wait.
//
// The seeds below and testdata/fuzz/FuzzBatch run with plain go test; run
// go test -run '^$' -fuzz FuzzBatch -fuzztime 5m to explore.
func FuzzBatch(f *testing.F) {
	db, sqlDB := openSQLitePlain(f)
	// The plugin outlives each fuzz call, and f.Log may not be called
	// inside one: its records are discarded even with -v.
	pl := use(f, db, gormbatch.Config{Logger: slog.New(slog.DiscardHandler)})
	db.Exec("SELECT 1")
	tg := sqliteTarget(db, sqlDB, pl)
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := decodePlan(&byteSrc{b: data}, fuzzLimits)
		var st runStats
		if errs := runPlan(tg, p, &st, nil); len(errs) > 0 {
			t.Fatal(strings.Join(errs, "\n"))
		}
	})
}

// fuzzSeeds builds plans byte by byte (the layout decodePlan reads).
func fuzzSeeds() [][]byte {
	type q struct {
		kind                       kind
		rows, cost, flags, timeout byte
	}
	plan := func(header, timeout, cancel, parentDL byte, qs ...q) []byte {
		b := []byte{header, timeout, cancel, parentDL, byte(len(qs) - 1)}
		for _, x := range qs {
			b = append(b, byte(x.kind), x.rows, x.cost, x.flags)
			if x.flags&6 == 6 {
				b = append(b, x.timeout)
			}
		}
		return b
	}
	const (
		none     = 0
		fast     = 5   // 5ms
		medium   = 170 // 20ms
		slow     = 250 // 120ms
		optional = 1
		timed    = 6
	)
	var all []q
	for k := range numKinds {
		all = append(all, q{kind: k, rows: byte(k) * 3, cost: fast})
	}
	return [][]byte{
		// Every kind, no deadline: exact statuses.
		plan(0, none, none, none, all[:6]...),
		plan(0, none, none, none, all[6:12]...),
		plan(0, none, none, none, all[12:]...),
		// A deadline straddling the queries; Limit 1 queues some.
		plan(1<<1, 120, none, none,
			q{kFind, 30, slow, 0, 0}, q{kCount, 10, fast, 0, 0}, q{kPluck, 20, medium, optional, 0}, q{kGoMulti, 5, slow, 0, 0}),
		// FailFast: an SQL error cancels the rest.
		plan(1, none, none, none,
			q{kSQLErr, 1, fast, 0, 0}, q{kFind, 40, slow, 0, 0}, q{kGoValue, 10, slow, 0, 0}, q{kMap, 1, medium, 0, 0}),
		// FailFast with only optional failures: everything else Done.
		plan(1, none, none, none,
			q{kSQLErr, 1, fast, optional, 0}, q{kPanicHook, 3, fast, optional, 0}, q{kFirst, 7, medium, 0, 0}),
		// A parent cancel mid-batch.
		plan(0, none, 236, none,
			q{kFind, 40, slow, 0, 0}, q{kLateErr, 10, slow, 0, 0}, q{kPanicGo, 10, slow, optional, 0}, q{kRaw, 1, slow, 0, 0}),
		// A parent deadline earlier than the batch's.
		plan(0, 250, none, 240,
			q{kGoValue, 10, slow, 0, 0}, q{kSleep, 1, medium, 0, 0}, q{kCount, 40, slow, 0, 0}),
		// Per-query timeouts, some optional.
		plan(2<<1, none, none, none,
			q{kFind, 40, slow, timed, 10}, q{kRaw, 1, slow, timed | optional, 3}, q{kMap, 2, fast, timed, 90}, q{kFirst, 4, slow, 0, 0}),
		// Panics in a hook and in a closure, with a short deadline.
		plan(0, 100, none, none,
			q{kPanicHook, 10, fast, 0, 0}, q{kPanicGo, 10, medium, 0, 0}, q{kFind, 5, fast, 0, 0}),
		// A deadline that expires before anything can start.
		plan(1<<1, 96, none, none,
			q{kFind, 40, slow, 0, 0}, q{kFind, 1, fast, 0, 0}, q{kCount, 1, fast, 0, 0}, q{kPluck, 1, fast, 0, 0}),
		// Empty input: one query, everything zero.
		{},
	}
}
