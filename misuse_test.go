package gormbatch_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Bad input and misuse beyond TestMisuse.

// Promise 4 for Count: gorm's (*DB).Count assigns *count = tx.RowsAffected
// after the callbacks, even when the statement failed before it ran (here:
// no connection free before the deadline; also a failed connect or
// server-cancel setup). The destination must still be untouched. The other
// finders are checked alongside.
func TestCountDestinationUntouched(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{MaxInFlight: -1})
	sqlDB.SetMaxOpenConns(1)
	conn, err := sqlDB.Conn(context.Background()) // the pool's only connection
	if err != nil {
		t.Fatal(err)
	}
	n, m := int64(42), int64(43)
	users, untouched := sentinelUsers()
	names := []string{"sentinel"}
	first := User{Name: "sentinel"}
	rep, err := gormbatch.From(db.Model(&User{})).Timeout(200*time.Millisecond).
		Count(&n, gormbatch.As("count")).
		Go("count-in-go", func(tx *gorm.DB) error { return tx.Model(&User{}).Count(&m).Error }).
		Find(&users, gormbatch.As("find")).
		First(&first, gormbatch.As("first")).
		Pluck("name", &names, gormbatch.As("pluck")).
		Wait()
	conn.Close()
	if err == nil {
		t.Fatal("no connection was free, yet the batch succeeded")
	}
	for _, r := range rep.Results {
		if r.Status != gormbatch.TimedOut {
			t.Errorf("%s: %v, want timed out waiting for a connection (%v)", r.Name, r.Status, r.Err)
		}
	}
	if e := untouched(users); e != nil || len(names) != 1 || names[0] != "sentinel" || first.Name != "sentinel" || first.ID != 0 {
		t.Errorf("finder destinations changed: %v, names %v, first %+v", e, names, first)
	}
	if n != 42 {
		t.Errorf("Batch.Count of a query that ended %v wrote %d into its destination (was 42)", rep.Results[0].Status, n)
	}
	if m != 43 {
		t.Errorf("Count in a Go closure that ended %v wrote %d into its destination (was 43)", rep.Results[1].Status, m)
	}
	checkPool(t, sqlDB)
}

// Wrong-type destinations are the query's own failure (Failed with an
// error; Panicked if GORM itself panics), never a panic out of Wait and
// never a written destination. Each case runs the same call on plain GORM
// first: where plain GORM errors, the batch must end Failed with the
// destination untouched; where it succeeds, the batch must end Done with
// the same result.
func TestWrongDestinations(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	type S struct{ Name string }
	type NoTable struct{ Foo int }
	ptr := func(v any) func() any { // a fresh pointer to a copy of v
		return func() any {
			p := reflect.New(reflect.TypeOf(v))
			p.Elem().Set(reflect.ValueOf(v))
			return p.Interface()
		}
	}
	raw := func(sql string) func(*gorm.DB) *gorm.DB { return func(db *gorm.DB) *gorm.DB { return db.Raw(sql) } }
	type call struct {
		method string // Find, First, Take, Pluck, Count, Raw, Scan
		arg    string // Pluck's column, Raw's SQL
		conds  []any
	}
	cases := []struct {
		name string
		from func(*gorm.DB) *gorm.DB
		dest func() any // a fresh destination holding a sentinel
		call
	}{
		{"Find(&int) of a model", model, ptr(7), call{method: "Find"}},
		{"Find(&string)", plain, ptr("sentinel"), call{method: "Find"}},
		{"Find(&[]int) of a model", model, ptr([]int{7}), call{method: "Find"}},
		{"Find(&chan)", plain, ptr(make(chan int)), call{method: "Find"}},
		{"Find(&func)", plain, ptr(func() {}), call{method: "Find"}},
		{"Find(&any)", plain, func() any { var v any = 7; return &v }, call{method: "Find"}},
		{"Find(&[]User) with a bad column", plain, ptr([]User{sentinelUser}), call{method: "Find", conds: []any{"no_such_column = ?", 1}}},
		{"Find(&[]NoTable)", plain, ptr([]NoTable{{Foo: 7}}), call{method: "Find"}},
		{"Find(&[2]User)", plain, ptr([2]User{sentinelUser}), call{method: "Find"}},
		{"First(&map) without a model", plain, ptr(map[string]any{"sentinel": 1}), call{method: "First"}},
		{"First(&int) of a model", model, ptr(7), call{method: "First"}},
		{"Take(&[]string) of a model", model, ptr([]string{"sentinel"}), call{method: "Take"}},
		{"Pluck into a struct", model, ptr(S{Name: "sentinel"}), call{method: "Pluck", arg: "name"}},
		{"Pluck strings into []int", model, ptr([]int{7}), call{method: "Pluck", arg: "name"}},
		{"Pluck into *int", model, ptr(7), call{method: "Pluck", arg: "name"}},
		{"Pluck a missing column", model, ptr([]string{"sentinel"}), call{method: "Pluck", arg: "no_such_column"}},
		// The parse error comes before the statement runs, and gorm's
		// Count writes into the destination anyway (promise 4).
		{"Count without a model", plain, ptr(int64(7)), call{method: "Count"}},
		{"Raw into a struct with a chan", plain, ptr(struct{ X chan int }{}), call{method: "Raw", arg: "SELECT 1 AS x"}},
		{"Raw text into *int", plain, ptr(7), call{method: "Raw", arg: "SELECT name FROM users WHERE id = 1"}},
		{"Raw invalid SQL", plain, ptr([]User{sentinelUser}), call{method: "Raw", arg: "SELEC oops"}},
		{"Raw with missing args", plain, ptr([]User{sentinelUser}), call{method: "Raw", arg: "SELECT * FROM users WHERE id = ? AND name = ?", conds: []any{1}}},
		{"Scan text into *float64", raw("SELECT name FROM users WHERE id = 2"), ptr(7.5), call{method: "Scan"}},
		{"Find(&*User)", plain, func() any { u := &User{Name: "sentinel"}; return &u }, call{method: "Find", conds: []any{"id = ?", 3}}},
		{"Find(map) without a pointer", model, func() any { return map[string]any{"sentinel": 1} }, call{method: "Find", conds: []any{"id = ?", 4}}},
		{"Find(&Order) of the User model", model, ptr(Order{Amount: -1}), call{method: "Find", conds: []any{"id = ?", 5}}},
	}
	// plainCall runs c on plain GORM; batchCall adds it to a batch.
	plainCall := func(c call, tx *gorm.DB, d any) error {
		switch c.method {
		case "Find":
			return tx.Find(d, c.conds...).Error
		case "First":
			return tx.First(d, c.conds...).Error
		case "Take":
			return tx.Take(d, c.conds...).Error
		case "Pluck":
			return tx.Pluck(c.arg, d).Error
		case "Count":
			return tx.Count(d.(*int64)).Error
		case "Raw":
			return tx.Raw(c.arg, c.conds...).Scan(d).Error
		}
		return tx.Scan(d).Error
	}
	batchCall := func(c call, b *gormbatch.Batch, d any) *gormbatch.Batch {
		switch c.method {
		case "Find":
			return b.Find(d, c.conds...)
		case "First":
			return b.First(d, c.conds...)
		case "Take":
			return b.Take(d, c.conds...)
		case "Pluck":
			return b.Pluck(c.arg, d)
		case "Count":
			return b.Count(d.(*int64))
		case "Raw":
			return b.Raw(d, c.arg, c.conds...)
		}
		return b.Scan(d)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Plain GORM.
			want := c.dest()
			var plainErr error
			var plainPanic any
			func() {
				defer func() { plainPanic = recover() }()
				plainErr = plainCall(c.call, c.from(db.Session(&gorm.Session{NewDB: true})), want)
			}()

			dest := c.dest()
			orig := deepCopy(dest)
			var rep *gormbatch.Report
			var err error
			func() {
				defer func() {
					if pv := recover(); pv != nil {
						t.Fatalf("Wait panicked: %v", pv)
					}
				}()
				rep, err = batchCall(c.call, gormbatch.From(c.from(db)), dest).Wait()
			}()
			if rep == nil {
				// Rejected when added (ErrInvalidDest): fine if clear.
				if !errors.Is(err, gormbatch.ErrInvalidDest) && !errors.Is(err, gormbatch.ErrInvalidConfig) {
					t.Fatalf("no report and err %v", err)
				}
				t.Logf("rejected: %v (plain GORM: err %v, panic %v)", err, plainErr, plainPanic)
				return
			}
			r := rep.Results[0]
			t.Logf("batch: %v %s; plain GORM: err %s, panic %v", r.Status, short(r.Err), short(plainErr), plainPanic)
			if (r.Err == nil) != (r.Status == gormbatch.Done) || (err == nil) != (r.Status == gormbatch.Done) {
				t.Errorf("status %v with Err %v, Wait err %v", r.Status, r.Err, err)
			}
			switch {
			case plainPanic != nil:
				if r.Status != gormbatch.Panicked {
					t.Errorf("plain GORM panics (%v); batch: %v", plainPanic, r.Status)
				}
			case plainErr != nil:
				if r.Status != gormbatch.Failed {
					t.Errorf("plain GORM fails (%v); batch: %v %v", plainErr, r.Status, r.Err)
				}
			default:
				if r.Status != gormbatch.Done {
					t.Errorf("plain GORM succeeds; batch: %v %v", r.Status, r.Err)
				}
			}
			if r.Status == gormbatch.Done {
				if !reflect.DeepEqual(dest, want) {
					t.Errorf("Done with %#v, plain GORM gives %#v", dest, want)
				}
			} else if !deepEqualDest(dest, orig) {
				t.Errorf("%v query changed its destination: %s, was %s", r.Status, show(dest), show(orig))
			}
			checkPool(t, sqlDB)
		})
	}
}

// short keeps long GORM errors (one per row) readable.
func short(err error) string {
	if err == nil {
		return "<nil>"
	}
	if s := err.Error(); len(s) > 200 {
		return s[:200] + "..."
	}
	return err.Error()
}

func show(d any) string {
	if v := reflect.ValueOf(d); v.Kind() == reflect.Pointer {
		return fmt.Sprintf("&%#v", v.Elem().Interface())
	}
	return fmt.Sprintf("%#v", d)
}

func model(db *gorm.DB) *gorm.DB { return db.Model(&User{}) }
func plain(db *gorm.DB) *gorm.DB { return db }

// deepCopy copies a destination (a pointer or map) one level deep, enough
// to compare the sentinels above.
func deepCopy(d any) any {
	v := reflect.ValueOf(d)
	if v.Kind() == reflect.Map {
		m := reflect.MakeMap(v.Type())
		for it := v.MapRange(); it.Next(); {
			m.SetMapIndex(it.Key(), it.Value())
		}
		return m.Interface()
	}
	c := reflect.New(v.Elem().Type())
	e := v.Elem()
	switch e.Kind() {
	case reflect.Slice:
		if !e.IsNil() {
			s := reflect.MakeSlice(e.Type(), e.Len(), e.Cap())
			reflect.Copy(s, e)
			c.Elem().Set(s)
		}
	case reflect.Map:
		c.Elem().Set(reflect.ValueOf(deepCopy(e.Interface())))
	case reflect.Pointer:
		if !e.IsNil() {
			p := reflect.New(e.Elem().Type())
			p.Elem().Set(e.Elem())
			c.Elem().Set(p)
		}
	default:
		c.Elem().Set(e)
	}
	return c.Interface()
}

// deepEqualDest compares destinations; funcs and chans by identity.
func deepEqualDest(a, b any) bool {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Kind() == reflect.Pointer {
		ea, eb := va.Elem(), vb.Elem()
		switch ea.Kind() {
		case reflect.Func, reflect.Chan:
			return ea.Pointer() == eb.Pointer()
		case reflect.Interface:
			return reflect.DeepEqual(ea.Interface(), eb.Interface())
		}
	}
	return reflect.DeepEqual(a, b)
}

// One batch used from many goroutines at once: adds race with each other
// and with several Waits. Exactly one Wait runs the batch; every other gets
// ErrWaited. A query in the report ran and ended Done with its result; a
// query added too late is in no report and its destination is untouched.
func TestConcurrentUse(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	const adders, perAdder, waiters = 8, 10, 4
	for round := range 20 {
		b := gormbatch.From(db).Timeout(10 * time.Second)
		dests := make([][]User, adders*perAdder)
		counts := make([]int64, adders*perAdder)
		for i := range counts {
			counts[i] = -1
		}
		var start sync.WaitGroup
		start.Add(1)
		var wg sync.WaitGroup
		for a := range adders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				for j := range perAdder {
					i := a*perAdder + j
					switch i % 4 {
					case 0:
						b.Find(&dests[i], "id <= ?", i%7+1, gormbatch.As(fmt.Sprintf("q%d", i)))
					case 1:
						b.Go(fmt.Sprintf("q%d", i), func(tx *gorm.DB) error {
							return tx.Model(&User{}).Where("id <= ?", i%7+1).Count(&counts[i]).Error
						})
					case 2:
						gormbatch.GoValue(b, fmt.Sprintf("q%d", i), &counts[i], func(tx *gorm.DB) (int64, error) {
							return int64(i%7 + 1), nil
						})
					case 3:
						b.Concurrency(3).Raw(&counts[i], "SELECT COUNT(*) FROM users WHERE id <= ?", i%7+1, gormbatch.As(fmt.Sprintf("q%d", i)))
					}
				}
			}()
		}
		type res struct {
			rep *gormbatch.Report
			err error
		}
		results := make(chan res, waiters)
		for range waiters {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				time.Sleep(time.Duration(round%5) * 100 * time.Microsecond)
				rep, err := b.Wait()
				results <- res{rep, err}
			}()
		}
		start.Done()
		wg.Wait()
		close(results)
		var winner *gormbatch.Report
		for r := range results {
			switch {
			case errors.Is(r.err, gormbatch.ErrWaited):
				if r.rep != nil {
					t.Fatal("ErrWaited with a report")
				}
			case r.err != nil:
				t.Fatalf("round %d: Wait: %v", round, r.err)
			case winner != nil:
				t.Fatalf("round %d: two Waits ran the batch", round)
			default:
				winner = r.rep
			}
		}
		if winner == nil {
			t.Fatalf("round %d: no Wait ran the batch", round)
		}
		in := map[string]bool{}
		for _, r := range winner.Results {
			if r.Status != gormbatch.Done || in[r.Name] {
				t.Fatalf("round %d: %s %v (%v)", round, r.Name, r.Status, r.Err)
			}
			in[r.Name] = true
		}
		for i := range counts {
			ran := in[fmt.Sprintf("q%d", i)]
			want := int64(i%7 + 1)
			switch {
			case i%4 == 0 && ran && len(dests[i]) != int(want),
				i%4 == 0 && !ran && dests[i] != nil,
				i%4 != 0 && ran && counts[i] != want,
				i%4 != 0 && !ran && counts[i] != -1:
				t.Fatalf("round %d: q%d (ran %v): dest %d rows / %d", round, i, ran, len(dests[i]), counts[i])
			}
		}
		if _, err := b.Wait(); !errors.Is(err, gormbatch.ErrWaited) {
			t.Fatalf("Wait after the race: %v", err)
		}
		if round == 0 || round == 19 {
			t.Logf("round %d: %d of %d queries were added before the winning Wait", round, len(in), len(counts))
		}
	}
	checkPool(t, sqlDB)
}

// Re-entrant misuse from inside a running query: its own batch's Wait
// returns ErrWaited at once, adding to it is ignored, and a nested batch on
// the query's session runs under the outer deadline.
func TestReentrantUse(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	var inner []User
	var nested []User
	var innerErr, addedErr error
	b := gormbatch.From(db).Timeout(5 * time.Second)
	b.Go("reenter", func(tx *gorm.DB) error {
		_, innerErr = b.Wait()
		_, addedErr = b.Find(&inner).Wait()
		_, err := gormbatch.From(tx).Find(&nested, "id <= ?", 3).Wait()
		return err
	})
	rep, err := b.Wait()
	if err != nil {
		t.Fatalf("%v\n%v", err, rep)
	}
	if !errors.Is(innerErr, gormbatch.ErrWaited) || !errors.Is(addedErr, gormbatch.ErrWaited) || inner != nil {
		t.Fatalf("re-entrant Wait: %v, %v, dest %v", innerErr, addedErr, inner)
	}
	if len(nested) != 3 || len(rep.Results) != 1 {
		t.Fatalf("nested batch: %d rows; outer results %d", len(nested), len(rep.Results))
	}
	checkPool(t, sqlDB)
}

// Huge timeouts behave like no timeout: queries end Done and, on
// MySQL/MariaDB, the server-side deadline derived from them is accepted.
func TestHugeTimeouts(t *testing.T) {
	huge := []time.Duration{1000 * time.Hour, 100000 * time.Hour, time.Duration(math.MaxInt64)}
	run := func(t *testing.T, db *gorm.DB) {
		for _, d := range huge {
			ctx, cancel := context.WithTimeout(context.Background(), d)
			var users []User
			var n int64
			rep, err := gormbatch.From(db.WithContext(ctx)).Timeout(d).
				Find(&users, "id <= ?", 5, gormbatch.WithTimeout(d)).
				Raw(&n, "SELECT COUNT(*) FROM users", gormbatch.WithTimeout(d)).
				Wait()
			cancel()
			if err != nil || len(users) != 5 || n != seedUsers {
				t.Errorf("timeout %v: %v (users %d, n %d)\n%v", d, err, len(users), n, rep)
			}
		}
	}
	t.Run("sqlite", func(t *testing.T) {
		db, sqlDB := openSQLite(t, gormbatch.Config{Timeout: 1000 * time.Hour, KillGrace: 1000 * time.Hour})
		run(t, db)
		checkPool(t, sqlDB)
	})
	eachServer(t, func(t *testing.T, be *backend) {
		for _, cfg := range []gormbatch.Config{{Timeout: 1000 * time.Hour}, {Timeout: 1000 * time.Hour, NoServerDeadline: true}} {
			t.Run(fmt.Sprintf("NoServerDeadline=%v", cfg.NoServerDeadline), func(t *testing.T) {
				s := openServer(t, be, cfg)
				run(t, s.DB)
				checkPool(t, s.sqlDB)
			})
		}
	})
}

// A batch of 10 000 fast queries: every query Done with its own result, the
// pool back to its baseline, and a bounded memory cost per query.
func TestTenThousandQueries(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	const n = 10000
	vals := make([]int64, n)
	for i := range vals {
		vals[i] = -1
	}
	// Warm up once so one-time costs (schema caches, pool) are not counted.
	if _, err := gormbatch.From(db).Raw(new(int64), "SELECT 1").Wait(); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var m0, m1, m2 runtime.MemStats
	runtime.ReadMemStats(&m0)
	start := time.Now()
	b := gormbatch.From(db).Timeout(time.Hour)
	for i := range vals {
		b.Raw(&vals[i], "SELECT ?", i)
	}
	rep, err := b.Wait()
	elapsed := time.Since(start)
	runtime.ReadMemStats(&m1)
	runtime.GC()
	runtime.ReadMemStats(&m2)
	if err != nil {
		t.Fatalf("%v", err)
	}
	if len(rep.Results) != n {
		t.Fatalf("%d results", len(rep.Results))
	}
	for i, v := range vals {
		if v != int64(i) || rep.Results[i].Status != gormbatch.Done {
			t.Fatalf("query %d: %v, dest %d", i, rep.Results[i].Status, v)
		}
	}
	checkPool(t, sqlDB)
	alloc := float64(m1.TotalAlloc-m0.TotalAlloc) / n
	retained := (float64(m2.HeapInuse) - float64(m0.HeapInuse)) / n
	t.Logf("%d queries in %v (%v/query): allocated %.0f bytes/query, %d mallocs/query, heap in use after GC (report alive) %+.0f bytes/query",
		n, elapsed.Round(time.Millisecond), (elapsed / n).Round(time.Microsecond), alloc, (m1.Mallocs-m0.Mallocs)/n, retained)
	runtime.KeepAlive(rep)
	// Generous: a query allocates a few KiB in GORM and the plugin (far
	// more under -race); what a Report keeps is a Result per query.
	if alloc > 256<<10 {
		t.Errorf("%.0f bytes allocated per query", alloc)
	}
	if retained > 16<<10 {
		t.Errorf("%.0f bytes retained per query after Wait", retained)
	}
}

// ServerCancelRequire fails on a dialect without server-side cancel, and
// the plugin is then not registered; ServerCancelAuto works there.
func TestServerCancelRequireUnsupported(t *testing.T) {
	db, _ := openSQLite(t, gormbatch.Config{})
	sqlDB, _ := db.DB()
	for _, name := range []string{"sqlite", "sqlserver", "clickhouse", ""} {
		dial := namedDialector{sqlite.Dialector{Conn: sqlDB}, name}
		other, err := gorm.Open(dial, &gorm.Config{Logger: logger.Discard})
		if err != nil {
			t.Fatal(err)
		}
		if err := other.Use(gormbatch.New(gormbatch.Config{ServerCancel: gormbatch.ServerCancelRequire})); !errors.Is(err, gormbatch.ErrUnsupported) {
			t.Errorf("dialect %q: ServerCancelRequire: %v, want ErrUnsupported", name, err)
		}
		var users []User
		if _, err := gormbatch.From(other).Find(&users).Wait(); !errors.Is(err, gormbatch.ErrNotRegistered) {
			t.Errorf("dialect %q: the failed plugin is registered: %v", name, err)
		}
		if err := other.Use(gormbatch.New(gormbatch.Config{ServerCancel: gormbatch.ServerCancelAuto})); err != nil {
			t.Fatalf("dialect %q: ServerCancelAuto: %v", name, err)
		}
		if _, err := gormbatch.From(other).Find(&users).Wait(); err != nil || len(users) != seedUsers {
			t.Errorf("dialect %q: batch: %v, %d users", name, err, len(users))
		}
	}
	for _, sc := range []gormbatch.ServerCancel{-1, 3, 100} {
		if err := gormbatch.New(gormbatch.Config{ServerCancel: sc}).Initialize(db); !errors.Is(err, gormbatch.ErrInvalidConfig) {
			t.Errorf("ServerCancel(%d): %v, want ErrInvalidConfig", sc, err)
		}
	}
}

type namedDialector struct {
	sqlite.Dialector
	name string
}

func (d namedDialector) Name() string { return d.name }

// Many batches from many goroutines share one plugin and pool: MaxInFlight
// holds, and everything comes back.
func TestManyConcurrentBatches(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{MaxInFlight: 3})
	var cur, peak atomic.Int32
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				var n int64
				b := gormbatch.From(db).Timeout(time.Duration(20+g*i) * time.Millisecond)
				b.Go("track", func(tx *gorm.DB) error {
					c := cur.Add(1)
					defer cur.Add(-1)
					for p := peak.Load(); c > p && !peak.CompareAndSwap(p, c); p = peak.Load() {
					}
					return tx.Raw("SELECT COUNT(*) FROM users WHERE id <= 5 AND nap(2) = 1").Scan(&n).Error
				})
				if _, err := b.Wait(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("batch: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 3 {
		t.Errorf("peak %d running batch queries, MaxInFlight 3", p)
	}
	checkPool(t, sqlDB)
}

// A batch started inside a batch query (a closure calling a helper that
// uses gormbatch) must not wait for a MaxInFlight slot its parent holds.
// With the default config (MaxOpenConns 8: MaxInFlight 6, Limit 6), six
// such closures hold every slot; the nested queries must still run, as the
// pool has idle connections.
func TestNestedBatchesDoNotDeadlock(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	const outer = 6
	var inner [outer][]User
	// The outer closures meet before their nested batches start, as they
	// would when each does some work first; otherwise a nested query can
	// slip in before the last outer query took its slot.
	var started atomic.Int32
	all := make(chan struct{})
	b := gormbatch.From(db).Timeout(time.Second)
	for i := range outer {
		b.Go(fmt.Sprintf("outer%d", i), func(tx *gorm.DB) error {
			if started.Add(1) == outer {
				close(all)
			}
			select {
			case <-all:
			case <-tx.Statement.Context.Done():
				return tx.Statement.Context.Err()
			}
			_, err := gormbatch.From(tx).Find(&inner[i], "id <= ?", 3).Wait()
			return err
		})
	}
	rep, err := b.Wait()
	if err != nil {
		t.Errorf("nested batches did not run although the pool had idle connections (Wait took %v): %v", rep.Elapsed, err)
	}
	for i := range inner {
		if err == nil && len(inner[i]) != 3 {
			t.Errorf("nested batch %d: %d rows", i, len(inner[i]))
		}
	}
	checkPool(t, sqlDB)
}
