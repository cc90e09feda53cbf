package gormbatch

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"
)

// One test per Stats counter, on the scripted dialect (fakedialect_test.go),
// so each counter's event happens exactly when the test says.

// batchOf runs one scripted statement (SELECT block()) as a finder or, with
// closure, a Go closure, under a 100 ms deadline.
func batchOf(t *testing.T, db *gorm.DB, closure bool) *Result {
	t.Helper()
	v := int64(-1)
	b := From(db).Timeout(100 * time.Millisecond)
	if closure {
		b.Go("q", func(tx *gorm.DB) error { return tx.Raw("SELECT block()").Scan(&v).Error })
	} else {
		b.Raw(&v, "SELECT block()", As("q"))
	}
	rep, _ := b.Wait()
	return &rep.Results[0]
}

func TestStatsKills(t *testing.T) {
	db, _, p := openFake(t, Config{KillGrace: 100 * time.Millisecond})
	newScript(plan{stopAfter: 5 * time.Millisecond, stopResult: stopDelivered, onAnswer: "interrupt"})
	batchOf(t, db, false)
	p.reclaiming.Wait() // the stop is answered after Wait returned: the query settled at its deadline
	st := p.Stats()
	if st.Batches != 1 || st.TimedOut != 1 || st.KillsSent != 1 || st.KillsAnswered != 1 || st.KillsLate != 0 || st.KillsFailed != 0 || st.Cuts != 0 {
		t.Errorf("a delivered kill: %+v", st)
	}
}

func TestStatsKillFailedAndCut(t *testing.T) {
	db, _, p := openFake(t, Config{KillGrace: 100 * time.Millisecond})
	newScript(plan{stopAfter: 5 * time.Millisecond, stopResult: stopFailed})
	batchOf(t, db, false)
	p.reclaiming.Wait()
	if st := p.Stats(); st.KillsSent != 1 || st.KillsFailed != 1 || st.KillsAnswered != 0 || st.Cuts != 1 {
		t.Errorf("a failed kill: %+v", st)
	}
}

func TestStatsHandoffAndLateKill(t *testing.T) {
	db, sqlDB, p := openFake(t, Config{KillGrace: 100 * time.Millisecond})
	s := newScript(plan{stopAfter: 300 * time.Millisecond, stopResult: stopDelivered, onAnswer: "interrupt"})
	batchOf(t, db, false)
	if st := p.Stats(); st.Handoffs != 0 || st.Reclaiming != 1 || st.InFlight != 1 || st.KillsLate != 0 {
		t.Errorf("when Wait returned (settled at the deadline, budget not spent): %+v", st)
	}
	p.reclaiming.Wait()
	if st := p.Stats(); st.Handoffs != 1 || st.Reclaiming != 0 || st.InFlight != 0 || st.KillsAnswered != 1 || st.KillsLate != 1 || st.Cuts != 0 {
		t.Errorf("after the reclaim: %+v", st)
	}
	if sqlDB.Stats().InUse != 0 || s.cuts.Load() != 0 {
		t.Errorf("the handed-off connection did not come back")
	}
}

func TestStatsServerLimit(t *testing.T) {
	db, _, p := openFake(t, Config{})
	newScript(plan{stmtErr: errFakeLimit})
	r := batchOf(t, db, false)
	if st := p.Stats(); st.ServerLimitStops != 1 || r.Status != TimedOut || !errors.Is(r.Err, context.DeadlineExceeded) {
		t.Errorf("a server limit stop: %v %v; %+v", r.Status, r.Err, st)
	}
}

func TestStatsSetupFailure(t *testing.T) {
	db, _, p := openFake(t, Config{})
	s := newScript(plan{bindErr: errors.New("fake: no session")})
	go s.finish(nil) // the statement answers at once
	if r := batchOf(t, db, false); r.Status != Done {
		t.Errorf("ServerCancelAuto without a session: %v %v", r.Status, r.Err)
	}
	if st := p.Stats(); st.SetupFailures != 1 {
		t.Errorf("setup failures %+v", st)
	}

	db, _, p = openFake(t, Config{ServerCancel: ServerCancelRequire})
	newScript(plan{bindErr: errors.New("fake: no session")})
	if r := batchOf(t, db, false); r.Status != Failed {
		t.Errorf("ServerCancelRequire without a session: %v %v", r.Status, r.Err)
	}
	if st := p.Stats(); st.SetupFailures != 1 {
		t.Errorf("setup failures %+v", st)
	}
}

func TestStatsStatusesSlotsAndInFlight(t *testing.T) {
	db, _, p := openFake(t, Config{})
	go newScript(plan{}).finish(nil)
	var inFlight int
	From(db).Concurrency(1).Timeout(time.Second).
		Raw(new(int64), "SELECT block()", As("done")).
		Go("in flight", func(tx *gorm.DB) error { inFlight = p.Stats().InFlight; return nil }).
		Raw(new(int64), "SELECT * FROM no_such_table", As("failed")).
		Go("panicked", func(tx *gorm.DB) error { panic("boom") }).
		Wait()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	From(db.WithContext(ctx)).Raw(new(int64), "SELECT 1", As("skipped")).Wait()
	st := p.Stats()
	if st.Batches != 2 || st.Done != 2 || st.Failed != 1 || st.Panicked != 1 || st.Skipped != 1 || inFlight != 1 || st.SlotWait <= 0 || st.InFlight != 0 {
		t.Errorf("%+v, in flight %d", st, inFlight)
	}
}

// With no Logger, the plugin logs warnings (a cut connection) to
// slog.Default and nothing below (a timed-out query).
func TestDefaultLoggerWarnsOnly(t *testing.T) {
	var buf SyncBuffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer slog.SetDefault(old)
	db, _, p := openFake(t, Config{KillGrace: 100 * time.Millisecond})
	p.log = slog.New(warnOnly{}) // what New gives a nil Logger (openFake sets a discarding one)
	newScript(plan{stopAfter: 5 * time.Millisecond, stopResult: stopFailed})
	batchOf(t, db, false)
	p.reclaiming.Wait()
	out := buf.String()
	if !strings.Contains(out, "level=WARN msg=\"gormbatch: cut\"") || strings.Contains(out, "query timed out") || strings.Contains(out, "DEBUG") {
		t.Errorf("default logger output:\n%s", out)
	}
}
