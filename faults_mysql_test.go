package gormbatch_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/gormbatch/gormbatch"
	gormmysql "gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Network and server faults on MySQL/MariaDB. The network faults run
// through faultProxy (proxy_test.go): the application pool and the plugin's
// kill pool (opened with the same connector) both connect through it.

// faultGrace is the KillGrace of the fault tests; faultMargin is the wide
// margin allowed on top of deadline + grace for scheduling under -race.
const (
	faultGrace  = 100 * time.Millisecond
	faultMargin = 2 * time.Second
)

// openProxied opens the test server (mysqlDSN) through a fault proxy.
func openProxied(t *testing.T, cfg gormbatch.Config) (*faultProxy, *gorm.DB, *sql.DB, *gormbatch.Plugin) {
	t.Helper()
	mc, err := mysql.ParseDSN(mysqlDSN())
	if err != nil {
		t.Fatalf("GORMBATCH_MYSQL_DSN: %s", redact(err))
	}
	if mc.Net != "tcp" {
		t.Skipf("the fault proxy needs a TCP DSN, not %q", mc.Net)
	}
	host, _, err := net.SplitHostPort(mc.Addr)
	if ip := net.ParseIP(host); err != nil || host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		t.Skipf("the fault proxy only runs against a loopback server, not %s", mc.Addr)
	}
	px := newFaultProxy(t, mc.Addr)
	mc.Addr = px.Addr()
	db, sqlDB, p := openMySQLDSN(t, mc.FormatDSN(), cfg)
	return px, db, sqlDB, p
}

// openDirect opens a plain *gorm.DB (no plugin) on the test server, for
// outside sessions: PROCESSLIST watchers, foreign kills.
func openDirect(t testing.TB) *gorm.DB {
	t.Helper()
	db, err := gorm.Open(gormmysql.Open(mysqlDSN()), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		unreachable(t, err)
	}
	sqlDB, _ := db.DB()
	t.Cleanup(func() { sqlDB.Close() })
	return db
}

// medium is a CPU-bound MariaDB query of about 0.7 s, tagged like heavy.
func medium(tag string) string {
	return "SELECT COUNT(*) FROM seq_1_to_1000 a, seq_1_to_1000 b, seq_1_to_20 c /* gbtest:" + tag + " */"
}

// fastTagged is a query the server answers at once, tagged like heavy.
func fastTagged(tag string) string { return "SELECT 42 /* gbtest:" + tag + " */" }

func tagMark(tag string) string { return "gbtest:" + tag + " */" }

type outcome struct {
	rep     *gormbatch.Report
	err     error
	elapsed time.Duration
	stuck   bool // Wait did not return in time and was freed by unstick
}

// waitWithin runs b.Wait and returns its outcome. If Wait has not returned
// within bound, promise 1 is broken: the test fails, unstick frees the stuck
// statement (so no goroutine leaks) and the outcome is returned once Wait
// does return.
func waitWithin(t *testing.T, b *gormbatch.Batch, bound time.Duration, unstick func()) outcome {
	t.Helper()
	ch := make(chan outcome, 1)
	start := time.Now()
	go func() {
		rep, err := b.Wait()
		ch <- outcome{rep: rep, err: err, elapsed: time.Since(start)}
	}()
	select {
	case o := <-ch:
		if o.elapsed > bound {
			t.Errorf("Wait took %v, bound %v", o.elapsed, bound)
		}
		return o
	case <-time.After(bound):
	}
	t.Errorf("PROMISE 1 BROKEN: Wait has not returned %v after it started (deadline + KillGrace + %v margin); cutting the network to free it", bound, faultMargin)
	unstick()
	select {
	case o := <-ch:
		t.Logf("Wait returned %v after it started, once the network was cut", o.elapsed)
		o.stuck = true
		return o
	case <-time.After(30 * time.Second):
		t.Fatal("Wait still stuck 30s after every proxied connection was cut")
	}
	return outcome{}
}

// batchWorks runs a healthy batch: two fast queries end Done and a slow one
// is killed at its deadline on the server. It reports a failure with Errorf
// and returns whether everything held.
func batchWorks(t *testing.T, db *gorm.DB, sqlDB *sql.DB) bool {
	t.Helper()
	if err := healthyBatch(t, db, sqlDB); err != nil {
		t.Errorf("healthy batch: %v", err)
		return false
	}
	return true
}

// healthyBatch is batchWorks returning the failure instead.
func healthyBatch(t *testing.T, db *gorm.DB, sqlDB *sql.DB) error {
	tg := tag(t)
	var users []User
	var n int64
	slowN := int64(-7)
	const timeout = 300 * time.Millisecond // the slow query's own; the batch has 10s
	rep, err := gormbatch.From(db).Timeout(10*time.Second).
		Find(&users, "id <= ?", 5, gormbatch.As("find")).
		Raw(&n, "SELECT COUNT(*) FROM users", gormbatch.As("count")).
		Raw(&slowN, heavy(tg), gormbatch.As("slow"), gormbatch.Optional(), gormbatch.WithTimeout(timeout)).
		Wait()
	if err != nil || len(users) != 5 || n != seedUsers {
		return fmt.Errorf("%v (users %d, count %d)\n%v", err, len(users), n, rep)
	}
	if r, _ := rep.Get("slow"); r.Status != gormbatch.TimedOut || slowN != -7 || rep.Elapsed > timeout+faultGrace+faultMargin {
		return fmt.Errorf("slow query %v (killed %v, dest %d) after %v: %v", r.Status, r.Killed, slowN, rep.Elapsed, r.Err)
	}
	if n := sqlDB.Stats().InUse; n != 0 {
		return fmt.Errorf("InUse = %d after a healthy batch", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left int64
		err := db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()",
			"%"+tagMark(tg)+"%").Scan(&left).Error
		if err == nil && left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the killed query is still on the server 5s later (%d, %v)", left, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settledWithin waits up to d for statements tagged tag to leave the
// server.
func settledWithin(t *testing.T, db *gorm.DB, tag string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var n int64
		err := db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()",
			"%"+tagMark(tag)+"%").Scan(&n).Error
		if err == nil && n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d statements tagged %s still on the server %v later (err %v)", n, tag, d, err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A stalled network (bytes accepted, nothing forwarded, hang-ups held too)
// holds Wait no longer than deadline + KillGrace: the stalled connection is
// discarded, the pool recovers and the next batch works, kills included.
// Stalling every connection stalls the kill too.
func TestMySQLProxyStall(t *testing.T) {
	scenarios := []struct {
		name  string
		act   action
		query func(string) string
		all   bool
		// during runs once the victim's statement went through the proxy.
		during func(t *testing.T, outside *gorm.DB, tag string)
	}{
		// The query never reaches the server.
		{"query-never-arrives", stallBefore, medium, false, nil},
		// The query runs on the server; its answer (the kill's error) is held.
		{"answer-of-running-query", stallAfter, medium, false, nil},
		// The server has answered; the answer is held in the network.
		{"answer-of-finished-query", stallAfter, fastTagged, false, nil},
		// Every connection stalls once the query is sent, the kill's too.
		{"everything-incl-kill", stallAllAfter, medium, true, nil},
		// The server drops the victim's thread while the network is
		// stalled (a DBA's KILL CONNECTION, wait_timeout, a restart): the
		// kill finds no thread (ER_NO_SUCH_THREAD) and the client never
		// hears of the hang-up.
		{"thread-gone-on-server", stallAfter, medium, false, func(t *testing.T, outside *gorm.DB, tag string) {
			if err := killTagged(outside, tag, "KILL CONNECTION", 2*time.Second); err != nil {
				t.Errorf("outside KILL CONNECTION: %v", err)
			}
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			const timeout = 400 * time.Millisecond
			px, db, sqlDB, _ := openProxied(t, gormbatch.Config{NoServerDeadline: true, KillGrace: faultGrace})
			outside := openDirect(t)
			if !batchWorks(t, db, sqlDB) { // warm: kill pool, ids
				t.FailNow()
			}
			tg := tag(t)
			fired := px.On(tagMark(tg), sc.act, 1, 0)
			victim := int64(-7)
			var users []User
			b := gormbatch.From(db).Timeout(timeout).Raw(&victim, sc.query(tg), gormbatch.As("victim"))
			if !sc.all {
				b = b.Find(&users, "id <= ?", 10, gormbatch.As("bystander"))
			}
			var victimConn *pconn
			duringDone := make(chan struct{})
			go func() {
				defer close(duringDone)
				select {
				case victimConn = <-fired:
					if sc.during != nil {
						sc.during(t, outside, tg)
					}
				case <-time.After(5 * time.Second):
				}
			}()
			o := waitWithin(t, b, timeout+faultGrace+faultMargin, func() { px.CutAll(); px.Resume() })
			<-duringDone
			t.Logf("Wait returned after %v\n%v", o.elapsed, o.rep)
			r := status(t, o.rep, "victim", gormbatch.TimedOut)
			if !errors.Is(r.Err, context.DeadlineExceeded) || victim != -7 {
				t.Errorf("victim: err %v, dest %d", r.Err, victim)
			}
			if !sc.all {
				status(t, o.rep, "bystander", gormbatch.Done)
				if len(users) != 10 {
					t.Errorf("bystander: %d rows", len(users))
				}
			}
			checkPool(t, sqlDB)
			if victimConn == nil {
				t.Fatal("the victim's statement never went through the proxy")
			}
			if !o.stuck && !px.HungUp(victimConn, 2*time.Second) {
				t.Errorf("the stalled connection was not discarded by the client")
			}
			px.Resume()
			batchWorks(t, db, sqlDB)
			settledWithin(t, outside, tg, 5*time.Second)
		})
	}
}

// killTagged sends kill ("KILL QUERY", "KILL CONNECTION") from outside to
// the thread running the statement tagged tag, waiting up to d for it to
// appear.
func killTagged(outside *gorm.DB, tag, kill string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		var id int64
		outside.Raw("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()",
			"%"+tagMark(tag)+"%").Scan(&id)
		if id != 0 {
			return outside.Exec(fmt.Sprintf("%s %d", kill, id)).Error
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no statement tagged %s within %v", tag, d)
}

// Server-cancel setup (flavour detection, kill pool, connection id) talks
// to the server before the statement starts. A stall there must not hold
// Wait past deadline + KillGrace either.
func TestMySQLProxyStallDuringSetup(t *testing.T) {
	cases := []struct {
		name string
		arm  func(px *faultProxy)
	}{
		{"flavour-detection", func(px *faultProxy) { px.On("SELECT VERSION()", stallBefore, 1, 0) }},
		{"kill-pool-connect", func(px *faultProxy) { px.StallNew(true) }},
		{"connection-id", func(px *faultProxy) { px.On("SELECT CONNECTION_ID()", stallBefore, 1, 0) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			const timeout = 300 * time.Millisecond
			px, db, sqlDB, _ := openProxied(t, gormbatch.Config{KillGrace: faultGrace})
			sqlDB.SetMaxIdleConns(8)
			c.arm(px) // the pool has idle connections; no batch has run yet
			var users []User
			b := gormbatch.From(db).Timeout(timeout).Find(&users, "id <= ?", 3, gormbatch.As("first"))
			o := waitWithin(t, b, timeout+faultGrace+faultMargin, func() { px.CutAll(); px.Resume() })
			t.Logf("Wait returned after %v\n%v", o.elapsed, o.rep)
			if r, ok := o.rep.Get("first"); ok && r.Status != gormbatch.Done && users != nil {
				t.Errorf("destination written by a %v query", r.Status)
			}
			checkPool(t, sqlDB)
		})
	}
}

// A connection cut by the network fails its query (Failed, or TimedOut when
// it was cut at the deadline); the pool recovers and the next batch works.
func TestMySQLProxyCut(t *testing.T) {
	cases := []struct {
		name    string
		warm    bool                // run a batch first (kill pool and ids ready)
		match   func(string) string // statement to cut on
		act     action
		delay   time.Duration
		timeout time.Duration
		want    gormbatch.Status
	}{
		{"mid-query", true, tagMark, cutAfter, 100 * time.Millisecond, 10 * time.Second, gormbatch.Failed},
		{"before-query", true, tagMark, cutBefore, 0, 10 * time.Second, gormbatch.Failed},
		{"the-kill", true, func(string) string { return "KILL QUERY " }, cutBefore, 0, 300 * time.Millisecond, gormbatch.TimedOut},
		{"connection-id-lookup", false, func(string) string { return "SELECT CONNECTION_ID()" }, cutBefore, 0, 10 * time.Second, gormbatch.Failed},
		{"server-cancel-setup", false, func(string) string { return "SELECT VERSION()" }, cutBefore, 0, 10 * time.Second, gormbatch.Failed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			px, db, sqlDB, _ := openProxied(t, gormbatch.Config{NoServerDeadline: true, KillGrace: faultGrace})
			if c.warm && !batchWorks(t, db, sqlDB) {
				t.FailNow()
			}
			tg := tag(t)
			fired := px.On(c.match(tg), c.act, 1, c.delay)
			victim := int64(-7)
			o := waitWithin(t, gormbatch.From(db).Timeout(c.timeout).Raw(&victim, medium(tg), gormbatch.As("victim")),
				c.timeout+faultGrace+faultMargin, func() { px.CutAll(); px.Resume() })
			t.Logf("Wait returned after %v\n%v", o.elapsed, o.rep)
			if len(fired) == 0 {
				t.Fatal("the fault was never injected")
			}
			r := status(t, o.rep, "victim", c.want)
			if r.Err == nil || victim != -7 {
				t.Errorf("victim: err %v, dest %d", r.Err, victim)
			}
			if c.want == gormbatch.Failed && (errors.Is(r.Err, context.DeadlineExceeded) || errors.Is(r.Err, context.Canceled)) {
				t.Errorf("a cut connection is the query's own failure, got %v", r.Err)
			}
			checkPool(t, sqlDB)
			// The pool recovers: the next batch works. If not, tell a
			// transient failure from a permanent one.
			if err := healthyBatch(t, db, sqlDB); err != nil {
				permanent := true
				for range 3 {
					if healthyBatch(t, db, sqlDB) == nil {
						permanent = false
						break
					}
				}
				t.Errorf("the next batch after a connection was cut during %s failed (permanently: %v): %v", c.name, permanent, err)
			}
			settledWithin(t, db, tg, 5*time.Second)
		})
	}
}

// A query whose connection or statement is killed by someone else on the
// server is Failed (its own error, not TimedOut), the plugin sent no kill,
// and batches keep working afterwards, on a pool of one connection.
func TestMySQLForeignKillThenBatches(t *testing.T) {
	for _, kill := range []string{"KILL QUERY", "KILL CONNECTION"} {
		t.Run(kill, func(t *testing.T) {
			db, sqlDB, p := openMySQL(t, gormbatch.Config{KillGrace: faultGrace})
			sqlDB.SetMaxOpenConns(1)
			sqlDB.SetMaxIdleConns(1)
			outside := openDirect(t)
			if !batchWorks(t, db, sqlDB) {
				t.FailNow()
			}
			lookups := gormbatch.IDLookups(p)
			tg := tag(t)
			killed := make(chan error, 1)
			go func() { killed <- killTagged(outside, tg, kill, 10*time.Second) }()
			victim := int64(-7)
			rep, err := gormbatch.From(db).Timeout(20*time.Second).Raw(&victim, heavy(tg), gormbatch.As("victim")).Wait()
			if kerr := <-killed; kerr != nil {
				t.Fatalf("the outside kill was not sent: %v", kerr)
			}
			r := status(t, rep, "victim", gormbatch.Failed)
			t.Logf("%s from outside: %v after %v", kill, r.Err, rep.Elapsed)
			if r.Killed || victim != -7 || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				t.Errorf("killed %v, dest %d, err %v", r.Killed, victim, err)
			}
			if rep.Elapsed > 5*time.Second {
				t.Errorf("Wait took %v: the victim was not stopped by the outside kill", rep.Elapsed)
			}
			checkPool(t, sqlDB)
			settledWithin(t, outside, tg, 5*time.Second)
			for i := range 5 {
				if !batchWorks(t, db, sqlDB) {
					t.Fatalf("batch %d after the outside %s failed", i, kill)
				}
			}
			n := gormbatch.IDLookups(p) - lookups
			t.Logf("%d connection id lookups after the outside kill", n)
			if kill == "KILL QUERY" && n != 0 {
				t.Errorf("KILL QUERY keeps the connection, yet the plugin looked up %d new connection ids", n)
			}
			if kill == "KILL CONNECTION" && n < 1 {
				t.Errorf("the killed connection was reused: no new connection id lookup")
			}
		})
	}
}
