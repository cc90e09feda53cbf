package gormbatch_test

import (
	"context"
	"encoding/json"
	"log"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// A query's log record carries the source position of the application's
// call that added it, with stable attribute names.
func TestLogRecordNamesTheApp(t *testing.T) {
	var buf gormbatch.SyncBuffer
	h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{AddSource: true, Level: slog.LevelDebug})
	db, _ := openSQLite(t, gormbatch.Config{Logger: slog.New(h)})
	var users []User
	_, _, line, _ := runtime.Caller(0)
	b := gormbatch.From(db).Timeout(100*time.Millisecond).Go("slow", func(tx *gorm.DB) error { return slow(tx, 50).Find(&users).Error }) // line+1
	b.Wait()
	out := buf.String()
	var rec struct {
		Level, Msg, Query, Status, Dialect string
		Waited, Ran                        float64
		Rows                               int64
		Killed                             bool
		Err                                string
		Source                             struct {
			File string
			Line int
		}
	}
	found := false
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == "gormbatch: query timed out" {
			found = true
			break
		}
	}
	if !found || rec.Level != "INFO" || rec.Query != "slow" || rec.Status != "timed out" || rec.Dialect != "sqlite" || !strings.Contains(rec.Err, "deadline") {
		t.Fatalf("no timed-out record with the expected attributes:\n%s", out)
	}
	if filepath.Base(rec.Source.File) != "observe_test.go" || rec.Source.Line != line+1 {
		t.Errorf("the record points at %s:%d, want observe_test.go:%d", rec.Source.File, rec.Source.Line, line+1)
	}
}

// GORM's logger does not report a statement the plugin stopped as an
// error (the plugin's own log and Stats do), and still reports real
// errors.
func TestGormLoggerQuietAboutStops(t *testing.T) {
	var buf gormbatch.SyncBuffer
	db, _ := openSQLitePlain(t)
	db.Logger = logger.New(log.New(&buf, "", 0), logger.Config{LogLevel: logger.Info, SlowThreshold: time.Hour})
	use(t, db, gormbatch.Config{})
	var a, b []User
	rep, _ := gormbatch.From(db).Timeout(100*time.Millisecond).
		Go("stopped", func(tx *gorm.DB) error { return slow(tx, 50).Find(&a).Error }).
		Raw(&b, "SELECT * FROM no_such_table", gormbatch.As("broken")).
		Wait()
	status(t, rep, "stopped", gormbatch.TimedOut)
	status(t, rep, "broken", gormbatch.Failed)
	out := buf.String()
	if !strings.Contains(out, "no such table") {
		t.Errorf("GORM's logger lost a real error:\n%s", out)
	}
	if strings.Contains(out, "interrupt") || strings.Contains(out, "nap(50)") {
		t.Errorf("GORM's logger reported the statement the plugin stopped:\n%s", out)
	}
}

// recorder is a Hook that records what it is called with.
type recorder struct {
	mu     sync.Mutex
	calls  []string
	ctxSaw map[string]bool // query name -> its statements saw StartQuery's context
}

type recKey struct{}

func (r *recorder) add(s string) { r.mu.Lock(); r.calls = append(r.calls, s); r.mu.Unlock() }

func (r *recorder) StartBatch(ctx context.Context, b gormbatch.BatchInfo) context.Context {
	r.add("start batch " + b.Name)
	return ctx
}
func (r *recorder) EndBatch(ctx context.Context, b gormbatch.BatchInfo, rep *gormbatch.Report, err error) {
	r.add("end batch " + b.Name)
}
func (r *recorder) StartQuery(ctx context.Context, q gormbatch.QueryInfo) context.Context {
	r.add("start " + q.Name)
	return context.WithValue(ctx, recKey{}, q.Name)
}
func (r *recorder) EndQuery(ctx context.Context, q gormbatch.QueryInfo, res gormbatch.Result) {
	r.add("end " + res.Name + " " + res.Status.String())
}
func (r *recorder) Event(context.Context, gormbatch.QueryInfo, gormbatch.Event) {}

// Hooks see the batch start first and end last, each started query start
// and end once, a skipped query only end; the context StartQuery returns
// is the one GORM's statements run under.
func TestHooks(t *testing.T) {
	rec := &recorder{ctxSaw: map[string]bool{}}
	db, _ := openSQLite(t, gormbatch.Config{Hooks: []gormbatch.Hook{rec}})
	var seen any
	var users []User
	gormbatch.From(db).Name("page").Concurrency(1).Timeout(200*time.Millisecond).
		Go("first", func(tx *gorm.DB) error {
			seen = tx.Statement.Context.Value(recKey{})
			return tx.Find(&users).Error
		}).
		Go("slow", func(tx *gorm.DB) error { return slow(tx, 50).Find(&[]User{}).Error }).
		Go("queued", func(tx *gorm.DB) error { return nil }).
		Wait()
	// The calls, in any order that keeps the batch first and last and
	// each query's start before its end.
	want := []string{"start batch page", "start first", "end first done", "start slow", "end slow timed out", "end queued skipped", "end batch page"}
	got := rec.calls
	ok := len(got) == len(want) && got[0] == want[0] && got[len(got)-1] == want[len(want)-1]
	for _, w := range want {
		ok = ok && slices.Contains(got, w)
	}
	for _, q := range []string{"first", "slow"} {
		ok = ok && slices.IndexFunc(got, func(c string) bool { return c == "start "+q }) <
			slices.IndexFunc(got, func(c string) bool { return strings.HasPrefix(c, "end "+q) })
	}
	if !ok {
		t.Errorf("hook calls\n%v\nwant, in an order that keeps the contract,\n%v", got, want)
	}
	if seen != "first" {
		t.Errorf("the query's statements ran under %v, not StartQuery's context", seen)
	}
}
