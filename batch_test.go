package gormbatch_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	"go.uber.org/goleak"
	"gorm.io/gorm"
)

// Promise 1: Wait returns at the deadline; finished queries keep their
// results, running ones are TimedOut, queued ones Skipped.
func TestDeadline(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	var users []User
	var n int64
	var slowUsers []User
	start := time.Now()
	rep, err := gormbatch.From(db).
		Timeout(300*time.Millisecond).
		Find(&users, "active = ?", true, gormbatch.As("users")).
		Go("count", func(tx *gorm.DB) error { return tx.Model(&User{}).Count(&n).Error }).
		Go("slow", func(tx *gorm.DB) error { return slow(tx, 50).Find(&slowUsers).Error }). // ~5 s
		Wait()
	elapsed := time.Since(start)
	if elapsed > 2*time.Second {
		t.Fatalf("Wait took %v; the slow query's natural end is ~5s, deadline 300ms", elapsed)
	}
	status(t, rep, "users", gormbatch.Done)
	status(t, rep, "count", gormbatch.Done)
	r := status(t, rep, "slow", gormbatch.TimedOut)
	if len(users) != seedUsers/2 || n != seedUsers {
		t.Fatalf("done queries lost results: %d users, count %d", len(users), n)
	}
	if slowUsers != nil {
		t.Fatalf("timed-out destination written: %d rows", len(slowUsers))
	}
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(r.Err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	var be *gormbatch.Error
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Name != "slow" {
		t.Fatalf("err = %#v, want *Error naming slow", err)
	}
	if d, p := rep.Done(), rep.Pending(); len(d) != 2 || len(p) != 1 || p[0].Name != "slow" {
		t.Fatalf("Done/Pending = %d/%d", len(d), len(p))
	}
	checkPool(t, sqlDB)
}

// Queued queries are Skipped when the deadline passes while they wait for a
// slot, and waiting for a slot does not hold Wait past the deadline.
func TestSkippedWhileQueued(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	var a, b []User
	start := time.Now()
	rep, err := gormbatch.From(db).Timeout(200*time.Millisecond).Concurrency(1).
		Go("slow", func(tx *gorm.DB) error { return slow(tx, 50).Find(&a).Error }).
		Find(&b, gormbatch.As("queued")).
		Wait()
	if time.Since(start) > 2*time.Second {
		t.Fatalf("Wait held %v past a 200ms deadline", time.Since(start))
	}
	status(t, rep, "slow", gormbatch.TimedOut)
	r := status(t, rep, "queued", gormbatch.Skipped)
	if !errors.Is(r.Err, gormbatch.ErrSkipped) || !errors.Is(err, context.DeadlineExceeded) || b != nil {
		t.Fatalf("skipped: err %v, batch err %v, dest %v", r.Err, err, b)
	}
	checkPool(t, sqlDB)
}

// A cancelled parent context gives Canceled, told apart from a timeout.
func TestParentCancel(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	var a []User
	rep, err := gormbatch.From(db.WithContext(ctx)).Timeout(10*time.Second).
		Go("slow", func(tx *gorm.DB) error { return slow(tx, 50).Find(&a).Error }).
		Wait()
	r := status(t, rep, "slow", gormbatch.Canceled)
	if !errors.Is(err, context.Canceled) || errors.Is(r.Err, context.DeadlineExceeded) || a != nil {
		t.Fatalf("err %v / %v, dest %d rows", err, r.Err, len(a))
	}
	if rep.Elapsed > 3*time.Second {
		t.Fatalf("Wait took %v after a cancel at 100ms", rep.Elapsed)
	}
	checkPool(t, sqlDB)
}

// Promise 2: when Wait returns no goroutine of the batch is left and every
// connection is back, even if a closure left its rows open.
func TestStructuredLifetime(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	db.Exec("SELECT 1") // open the pool's first connection before the baseline
	before := goleak.IgnoreCurrent()
	var users []User
	rep, _ := gormbatch.From(db).Timeout(300*time.Millisecond).
		Find(&users).
		Go("slow", func(tx *gorm.DB) error { return slow(tx, 50).Find(&[]User{}).Error }).
		Go("open-rows", leaveRowsOpen).
		Wait()
	status(t, rep, "slow", gormbatch.TimedOut)
	checkPool(t, sqlDB)
	if err := goleak.Find(before); err != nil {
		t.Fatalf("goroutines left after Wait: %v", err)
	}
	// The pool is healthy: the next batch works.
	if _, err := gormbatch.From(db).Find(&users).Wait(); err != nil {
		t.Fatal(err)
	}
}

// Promise 4: a destination that is not Done stays exactly as it was, down
// to the spare capacity of its backing array.
func TestDestinationUntouchedUnlessDone(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	sentinel := User{ID: 999, Name: "sentinel"}
	users := make([]User, 1, 500)
	users[0] = sentinel
	full := users[:cap(users)]
	for i := range full {
		full[i] = sentinel
	}
	first := User{Name: "keep me"}
	var count int64 = 42
	var names []string
	var inClosure []User
	rep, _ := gormbatch.From(slow(db, 20)).Timeout(300*time.Millisecond).
		Find(&users, gormbatch.As("find")).
		First(&first, "name > ?", "user095", gormbatch.As("first")).
		Count(&count, gormbatch.As("count")).
		Pluck("name", &names, gormbatch.As("pluck")).
		Go("closure", func(tx *gorm.DB) error {
			// First statement succeeds and is visible inside the closure...
			if err := tx.Where("id < ?", 5).Find(&inClosure).Error; err != nil || len(inClosure) != 4 {
				t.Errorf("inside the closure: %d rows, %v", len(inClosure), err)
			}
			// ...then the query times out: it must be restored.
			return slow(tx, 50).Find(&[]User{}).Error
		}).
		Wait()
	for _, name := range []string{"find", "first", "count", "pluck", "closure"} {
		if r, _ := rep.Get(name); r.Status == gormbatch.Done {
			t.Fatalf("%s finished before a 300ms deadline; the test needs it slow\n%v", name, rep)
		}
	}
	if len(users) != 1 || cap(users) != 500 || users[0].ID != sentinel.ID {
		t.Fatalf("slice dest changed: len %d cap %d [0]=%+v", len(users), cap(users), users[0])
	}
	for i, u := range full {
		if u.ID != sentinel.ID || u.Name != sentinel.Name || u.Orders != nil {
			t.Fatalf("backing array written at %d: %+v", i, u)
		}
	}
	if first.ID != 0 || first.Name != "keep me" || count != 42 || names != nil || inClosure != nil {
		t.Fatalf("dests changed: first %+v count %d names %d closure %d", first, count, len(names), len(inClosure))
	}
	time.Sleep(100 * time.Millisecond) // nothing may write after Wait returned
	if len(users) != 1 || first.Name != "keep me" || count != 42 {
		t.Fatal("destination written after Wait returned")
	}
	checkPool(t, sqlDB)
}

// Done destinations hold GORM's usual results, for every finder.
func TestFindersDone(t *testing.T) {
	db, _ := openSQLite(t, gormbatch.Config{})
	var (
		all, active []User
		first, last User
		take        User
		n           int64
		names       []string
		raw         []User
		scanned     struct{ Total int }
		m           = map[string]any{}
	)
	_, err := gormbatch.From(db).
		Find(&all).
		Find(&active, "active = ?", true).
		First(&first).
		Last(&last).
		Take(&take, "name = ?", "user007").
		Go("count", func(tx *gorm.DB) error { return tx.Model(&User{}).Where("active").Count(&n).Error }).
		Go("pluck", func(tx *gorm.DB) error { return tx.Model(&User{}).Order("id").Pluck("name", &names).Error }).
		Raw(&raw, "SELECT * FROM users WHERE id <= ?", 3).
		Go("map", func(tx *gorm.DB) error { return tx.Model(&User{}).Where("id = ?", 2).Take(&m).Error }).
		Wait()
	if err != nil {
		t.Fatal(err)
	}
	_, err = gormbatch.From(db.Raw("SELECT SUM(amount) AS total FROM orders")).Scan(&scanned).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != seedUsers || len(active) != seedUsers/2 || first.ID != 1 || last.ID != seedUsers ||
		take.Name != "user007" || n != seedUsers/2 || len(names) != seedUsers || names[0] != "user001" ||
		len(raw) != 3 || scanned.Total != 3*(seedUsers-1)*seedUsers/2 || m["name"] != "user002" {
		t.Fatalf("results: all %d active %d first %d last %d take %q n %d names %d raw %d sum %d map %v",
			len(all), len(active), first.ID, last.ID, take.Name, n, len(names), len(raw), scanned.Total, m)
	}
}

// GoValue publishes a Scan result only when Done.
func TestGoValue(t *testing.T) {
	db, _ := openSQLite(t, gormbatch.Config{})
	var total, slowTotal = -1, -1
	b := gormbatch.From(db).Timeout(300 * time.Millisecond)
	gormbatch.GoValue(b, "total", &total, func(tx *gorm.DB) (int, error) {
		var v int
		err := tx.Raw("SELECT COUNT(*) FROM users").Scan(&v).Error
		return v, err
	})
	gormbatch.GoValue(b, "slow", &slowTotal, func(tx *gorm.DB) (int, error) {
		var v int
		err := slow(tx, 50).Select("COUNT(*)").Scan(&v).Error
		return v, err
	})
	rep, _ := b.Wait()
	status(t, rep, "total", gormbatch.Done)
	status(t, rep, "slow", gormbatch.TimedOut)
	if total != seedUsers || slowTotal != -1 {
		t.Fatalf("total %d, slow %d", total, slowTotal)
	}
}

// FailFast cancels the rest at the first failure; by default every query
// runs to its end.
func TestFailFast(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	run := func(failFast bool) *gormbatch.Report {
		b := gormbatch.From(db).Timeout(20 * time.Second).Concurrency(2)
		if failFast {
			b = b.FailFast()
		}
		started := make(chan struct{})
		rep, err := b.
			Go("bad", func(tx *gorm.DB) error {
				<-started // fail once slowish runs
				return tx.Raw("SELECT * FROM no_such_table").Scan(&[]User{}).Error
			}).
			Go("slowish", func(tx *gorm.DB) error {
				close(started)
				return slow(tx, 5).Find(&[]User{}).Error // ~0.5 s
			}).
			Go("queued", func(tx *gorm.DB) error { return tx.Find(&[]User{}).Error }).
			Wait()
		if err == nil {
			t.Fatal("want an error for the failed query")
		}
		return rep
	}
	rep := run(true)
	status(t, rep, "bad", gormbatch.Failed)
	r := status(t, rep, "slowish", gormbatch.Canceled)
	if !errors.Is(r.Err, gormbatch.ErrFailFast) || !errors.Is(r.Err, context.Canceled) {
		t.Fatalf("slowish err %v, want ErrFailFast", r.Err)
	}
	if q, _ := rep.Get("queued"); q.Status != gormbatch.Skipped && q.Status != gormbatch.Canceled {
		t.Fatalf("queued: %v", q.Status)
	}
	rep = run(false)
	status(t, rep, "bad", gormbatch.Failed)
	status(t, rep, "slowish", gormbatch.Done)
	status(t, rep, "queued", gormbatch.Done)

	// Optional failures fail neither the batch nor fast.
	rep, err := gormbatch.From(db).FailFast().
		Go("bad", func(tx *gorm.DB) error { return tx.Raw("SELECT * FROM nope").Scan(&[]User{}).Error }, gormbatch.Optional()).
		Go("ok", func(tx *gorm.DB) error { return slow(tx, 2).Find(&[]User{}).Error }).
		Wait()
	if err != nil {
		t.Fatalf("optional failure failed the batch: %v", err)
	}
	status(t, rep, "bad", gormbatch.Failed)
	status(t, rep, "ok", gormbatch.Done)
	checkPool(t, sqlDB)
}

// Concurrency bounds one batch; MaxInFlight bounds all batches, and its
// default always leaves a connection of the pool to the rest of the
// application.
func TestLimits(t *testing.T) {
	var cur, peak atomic.Int32
	track := func(tx *gorm.DB) error {
		n := cur.Add(1)
		defer cur.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		return tx.Raw("SELECT nap(30)").Scan(new(int)).Error
	}
	batch := func(db *gorm.DB, limit int) *gormbatch.Batch {
		b := gormbatch.From(db)
		if limit > 0 {
			b = b.Concurrency(limit)
		}
		for range 8 {
			b = b.Go("q", track)
		}
		return b
	}

	db, _ := openSQLite(t, gormbatch.Config{})
	if _, err := batch(db, 2).Wait(); err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p != 2 {
		t.Fatalf("Concurrency(2): peak concurrency %d", p)
	}

	peak.Store(0)
	db, sqlDB := openSQLite(t, gormbatch.Config{MaxInFlight: 3})
	done := make(chan error, 3)
	for range 3 {
		go func() { _, err := batch(db, 8).Wait(); done <- err }()
	}
	for range 3 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if p := peak.Load(); p != 3 {
		t.Fatalf("MaxInFlight 3 across 3 batches: peak %d", p)
	}

	// The default MaxInFlight is derived from MaxOpenConns (8 here: 6).
	peak.Store(0)
	db, _ = openSQLite(t, gormbatch.Config{})
	if _, err := batch(db, 0).Wait(); err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p != 6 {
		t.Fatalf("default limit with MaxOpenConns 8: peak %d, want 6", p)
	}
	checkPool(t, sqlDB)
}

var errBoom = errors.New("boom")

// A panic is that query's status; the batch, pool and process are fine. A
// panic value that is an error keeps its identity for errors.Is.
func TestPanic(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	var booms []Boom
	var users []User
	rep, err := gormbatch.From(db).
		Find(&booms, gormbatch.As("hook")).
		Go("closure", func(tx *gorm.DB) error { panic("boom in closure") }).
		Go("goexit", func(tx *gorm.DB) error { tx.Find(&[]User{}); runtime.Goexit(); return nil }).
		Go("error value", func(tx *gorm.DB) error { panic(errBoom) }).
		Find(&users, gormbatch.As("ok")).
		Wait()
	if r := status(t, rep, "error value", gormbatch.Panicked); !errors.Is(r.Err, errBoom) {
		t.Errorf("a panic with an error lost its identity: %v", r.Err)
	}
	for _, name := range []string{"hook", "closure", "goexit"} {
		r := status(t, rep, name, gormbatch.Panicked)
		if !errors.Is(r.Err, gormbatch.ErrPanicked) || len(r.Stack) == 0 {
			t.Fatalf("%s: err %v, stack %d bytes", name, r.Err, len(r.Stack))
		}
	}
	status(t, rep, "ok", gormbatch.Done)
	if !errors.Is(err, gormbatch.ErrPanicked) || booms != nil {
		t.Fatalf("err %v, booms %d", err, len(booms))
	}
	checkPool(t, sqlDB)
	if _, err := gormbatch.From(db).Find(&users).Wait(); err != nil {
		t.Fatal(err)
	}
}

// Inside a transaction queries run one at a time, in order, on the
// transaction's connection, under the deadline.
func TestTransaction(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	var order []string
	step := func(name string) func(*gorm.DB) error {
		return func(tx *gorm.DB) error {
			order = append(order, name) // no lock: the queries must not overlap
			return tx.Raw("SELECT nap(10)").Scan(new(int)).Error
		}
	}
	err := db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&User{}).Where("id = 1").Update("name", "in-tx").Error; err != nil {
			return err
		}
		var u User
		rep, err := gormbatch.From(tx).Timeout(400*time.Millisecond).
			Go("a", step("a")).Go("b", step("b")).
			First(&u, 1, gormbatch.As("sees-tx")).
			Go("slow", func(tx *gorm.DB) error { return slow(tx, 50).Find(&[]User{}).Error }).
			Go("after", step("after")).
			Wait()
		status(t, rep, "sees-tx", gormbatch.Done)
		status(t, rep, "slow", gormbatch.TimedOut)
		status(t, rep, "after", gormbatch.Skipped)
		if u.Name != "in-tx" || !slices.Equal(order, []string{"a", "b"}) {
			t.Fatalf("user %q, order %v", u.Name, order)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkPool(t, sqlDB)
}

// Each query has its own session; a chained From applies to all queries;
// Scopes to one; preload and gorm.G work inside a batch.
func TestSessions(t *testing.T) {
	db, _ := openSQLite(t, gormbatch.Config{})
	var few, active []User
	var n int64
	base := db.Model(&User{}).Where("active = ?", true)
	_, err := gormbatch.From(base).
		Find(&few, "id < ?", 10).
		Find(&active).
		Count(&n).
		Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(few) != 5 || len(active) != seedUsers/2 || n != seedUsers/2 {
		t.Fatalf("conditions bled or were lost: few %d active %d n %d", len(few), len(active), n)
	}

	var withOrders, viaBatch []User
	var generic []User
	rep, err := gormbatch.From(db.Preload("Orders")).
		Find(&viaBatch, "id <= ?", 3).
		Go("preload", func(tx *gorm.DB) error {
			return tx.Preload("Orders").Where("id <= ?", 3).Find(&withOrders).Error
		}).
		Go("generics", func(tx *gorm.DB) error {
			var err error
			generic, err = gorm.G[User](tx).Where("active = ?", false).Find(tx.Statement.Context)
			return err
		}).
		Wait()
	if err != nil {
		t.Fatal(err, rep)
	}
	for _, us := range [][]User{withOrders, viaBatch} {
		if len(us) != 3 || len(us[2].Orders) != 2 || us[2].Orders[1].Amount != 4 {
			t.Fatalf("preload: %+v", us)
		}
	}
	if len(generic) != seedUsers/2 {
		t.Fatalf("generics: %d", len(generic))
	}

	// gorm.G under the batch deadline is cancelled like any query.
	rep, _ = gormbatch.From(db).Timeout(200*time.Millisecond).
		Go("slow-generic", func(tx *gorm.DB) error {
			_, err := gorm.G[User](tx).Where("nap(?) = 1", 50).Find(tx.Statement.Context)
			return err
		}).Wait()
	status(t, rep, "slow-generic", gormbatch.TimedOut)
}

// Misuse is a clear error, never a panic.
func TestMisuse(t *testing.T) {
	db, _ := openSQLite(t, gormbatch.Config{})
	var users []User
	cases := []struct {
		name string
		b    *gormbatch.Batch
		want error
	}{
		{"not registered", gormbatch.From(db.Session(&gorm.Session{NewDB: true}).Set("x", 1)), nil},
		{"nil dest", gormbatch.From(db).Find(nil), gormbatch.ErrInvalidDest},
		{"typed nil dest", gormbatch.From(db).Find((*[]User)(nil)), gormbatch.ErrInvalidDest},
		{"non-pointer dest", gormbatch.From(db).Find(users), gormbatch.ErrInvalidDest},
		{"shared dest", gormbatch.From(db).Find(&users).Find(&users), gormbatch.ErrInvalidDest},
		{"nil count", gormbatch.From(db).Count(nil), gormbatch.ErrInvalidDest},
		{"nil func", gormbatch.From(db).Go("x", nil), gormbatch.ErrInvalidConfig},
		{"zero timeout", gormbatch.From(db).Timeout(0), gormbatch.ErrInvalidConfig},
		{"negative timeout", gormbatch.From(db).Timeout(-time.Second), gormbatch.ErrInvalidConfig},
		{"query timeout", gormbatch.From(db).Find(&users, gormbatch.WithTimeout(0)), gormbatch.ErrInvalidConfig},
		{"limit 0", gormbatch.From(db).Concurrency(0), gormbatch.ErrInvalidConfig},
	}
	for _, c := range cases {
		if c.want == nil {
			continue
		}
		rep, err := c.b.Wait()
		if !errors.Is(err, c.want) || rep != nil {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
	}
	plain, err := gorm.Open(db.Dialector, &gorm.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if plainDB, err := plain.DB(); err == nil {
		defer plainDB.Close()
	}
	if _, err := gormbatch.From(plain).Find(&users).Wait(); !errors.Is(err, gormbatch.ErrNotRegistered) {
		t.Errorf("not registered: %v", err)
	}
	if _, err := gormbatch.From(nil).Wait(); !errors.Is(err, gormbatch.ErrNotRegistered) {
		t.Errorf("nil db: %v", err)
	}

	b := gormbatch.From(db).Find(&users)
	if _, err := b.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Find(&[]User{}).Wait(); !errors.Is(err, gormbatch.ErrWaited) {
		t.Errorf("second Wait: %v", err)
	}

	// Every invalid Config fails db.Use on a fresh *gorm.DB with
	// ErrInvalidConfig, naming the setting, and leaves no plugin behind.
	for _, c := range []struct {
		cfg  gormbatch.Config
		name string
	}{
		{gormbatch.Config{Timeout: -1}, "Timeout"},
		{gormbatch.Config{Concurrency: -1}, "Concurrency"},
		{gormbatch.Config{KillGrace: -1}, "KillGrace"},
		{gormbatch.Config{ReclaimTimeout: -1}, "ReclaimTimeout"},
		{gormbatch.Config{ServerCancel: -1}, "ServerCancel"},
		{gormbatch.Config{ServerCancel: 3}, "ServerCancel"},
	} {
		fresh, _ := openSQLitePlain(t)
		err := fresh.Use(gormbatch.New(c.cfg))
		if !errors.Is(err, gormbatch.ErrInvalidConfig) || !strings.Contains(err.Error(), c.name) {
			t.Errorf("Config %+v: db.Use returned %v, want ErrInvalidConfig naming %s", c.cfg, err, c.name)
		}
		if _, err := gormbatch.From(fresh).Find(&users).Wait(); !errors.Is(err, gormbatch.ErrNotRegistered) {
			t.Errorf("Config %+v: the refused plugin is registered: %v", c.cfg, err)
		}
	}
	fresh, _ := openSQLitePlain(t)
	if err := fresh.Use(gormbatch.New(gormbatch.Config{ServerCancel: gormbatch.ServerCancelRequire})); !errors.Is(err, gormbatch.ErrUnsupported) {
		t.Errorf("ServerCancelRequire on SQLite: %v", err)
	}
}

// Small pools: the derived in-flight bound leaves a connection to the rest
// of the application, so an unrelated query does not wait for a batch (a
// pool of 2 runs the batch one query at a time).
func TestSmallPoolLeavesAConnection(t *testing.T) {
	db, sqlDB := openSQLite(t, gormbatch.Config{})
	sqlDB.SetMaxOpenConns(2)
	var cur, peak atomic.Int32
	running := make(chan struct{}, 3)
	b := gormbatch.From(db)
	for i := range 3 {
		b.Go(fmt.Sprint("slow", i), func(tx *gorm.DB) error {
			n := cur.Add(1)
			defer cur.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			running <- struct{}{}
			return slow(tx, 2).Find(&[]User{}).Error // ~0.2 s
		})
	}
	done := make(chan error, 1)
	go func() { _, err := b.Wait(); done <- err }()
	<-running
	t0 := time.Now()
	if err := db.Exec("SELECT 1").Error; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 150*time.Millisecond {
		t.Errorf("an unrelated query waited %v for the batch", d)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p != 1 {
		t.Errorf("MaxOpenConns 2: peak %d batch queries, want 1", p)
	}
}

// Default names come from the method and table; Report.String is
// aligned and grammatical; the batch error names each failed query once.
func TestNamesAndReport(t *testing.T) {
	db, _ := openSQLite(t, gormbatch.Config{})
	var users []User
	var n int64
	var names []string
	var one []User
	v := int64(-1)
	rep, err := gormbatch.From(db).Timeout(300*time.Millisecond).
		Find(&users).
		Count(&n, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&Order{}) })).
		Pluck("name", &names, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&User{}) })).
		Raw(&v, "SELECT COUNT(*) FROM users WHERE nap(50) = 1").
		Go("a rather long name for a query", func(tx *gorm.DB) error { return tx.Find(&one, "id = 1").Error }).
		Wait()
	want := []string{"Find users", "Count orders", "Pluck users", "Raw #4", "a rather long name for a query"}
	for i, r := range rep.Results {
		if r.Name != want[i] {
			t.Errorf("query %d named %q, want %q", i, r.Name, want[i])
		}
	}
	if len(users) != seedUsers || n != 2*seedUsers || len(names) != seedUsers || len(one) != 1 {
		t.Errorf("mixed batch: %d users, %d orders, %d names, %d", len(users), n, len(names), len(one))
	}
	lines := strings.Split(strings.TrimSpace(rep.String()), "\n")
	if !strings.HasPrefix(lines[0], "batch: 5 queries in ") || len(lines) != 6 {
		t.Fatalf("report:\n%v", rep)
	}
	col := strings.Index(lines[1], "done")
	for _, l := range lines[1:] {
		if i := strings.Index(l, "  done ") + 2; i > 1 && i != col || strings.Contains(l, "timed out") && strings.Index(l, "timed out") != col {
			t.Errorf("status column not aligned:\n%v", rep)
		}
	}
	if got := err.Error(); got != "gormbatch: 1 required query not done: Raw #4 (timed out: batch deadline 300ms: context deadline exceeded)" {
		t.Errorf("batch error %q", got)
	}
	rep, _ = gormbatch.From(db).Go("x", func(*gorm.DB) error { return nil }).Wait()
	if !strings.HasPrefix(rep.String(), "batch: 1 query in ") {
		t.Errorf("report of one query: %q", rep.String())
	}
}

// Initialize is idempotent: registering twice adds no second callback and
// batches still work.
func TestInitializeIdempotent(t *testing.T) {
	db, _ := openSQLite(t, gormbatch.Config{})
	p := db.Plugins["gormbatch"].(*gormbatch.Plugin)
	if err := p.Initialize(db); err != nil {
		t.Fatal(err)
	}
	var users []User
	if _, err := gormbatch.From(db).Find(&users).Wait(); err != nil || len(users) != seedUsers {
		t.Fatalf("%v, %d users", err, len(users))
	}
}
