package gormbatchotel_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	gormbatchotel "github.com/gormbatch/gormbatch/otel"
	"github.com/mattn/go-sqlite3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	"gorm.io/plugin/opentelemetry/tracing"
)

// napDriver is go-sqlite3 with nap(ms), which sleeps ms milliseconds and
// returns 1: a query calling it per row is slow yet interruptible.
const napDriver = "sqlite3_gormbatchotel"

func init() {
	sql.Register(napDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		return c.RegisterFunc("nap", func(ms int64) int64 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
			return 1
		}, false)
	}})
}

type User struct {
	ID     uint
	Name   string
	Active bool
}

type Order struct {
	ID     uint
	UserID uint
	Amount int
}

// telemetry is an SDK tracer and meter provider whose output stays in
// memory.
type telemetry struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

func newTelemetry(t *testing.T) *telemetry {
	tel := &telemetry{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	tel.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	t.Cleanup(func() {
		tel.tp.Shutdown(context.Background())
		tel.mp.Shutdown(context.Background())
	})
	return tel
}

func (tel *telemetry) hook() gormbatch.Hook {
	return gormbatchotel.NewHook(gormbatchotel.WithTracerProvider(tel.tp), gormbatchotel.WithMeterProvider(tel.mp))
}

// strictHook is hook with spans that fail the test when changed or ended
// after End. Their IsRecording stays true, as the API allows: the hook
// must know by itself which spans it ended.
func (tel *telemetry) strictHook(t *testing.T) gormbatch.Hook {
	return gormbatchotel.NewHook(gormbatchotel.WithTracerProvider(strictProvider{tel.tp, t}), gormbatchotel.WithMeterProvider(tel.mp))
}

type strictProvider struct {
	trace.TracerProvider
	t *testing.T
}

func (p strictProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return strictTracer{p.TracerProvider.Tracer(name, opts...), p.t}
}

type strictTracer struct {
	trace.Tracer
	t *testing.T
}

func (tr strictTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	ctx, span := tr.Tracer.Start(ctx, name, opts...)
	s := &strictSpan{Span: span, t: tr.t, name: name}
	return trace.ContextWithSpan(ctx, s), s
}

type strictSpan struct {
	trace.Span
	t     *testing.T
	name  string
	ended atomic.Bool
}

func (s *strictSpan) check(what string) {
	if s.ended.Load() {
		s.t.Errorf("%s on span %q after End", what, s.name)
	}
}

func (s *strictSpan) IsRecording() bool { return true }
func (s *strictSpan) End(opts ...trace.SpanEndOption) {
	if s.ended.Swap(true) {
		s.t.Errorf("span %q ended twice", s.name)
	}
	s.Span.End(opts...)
}
func (s *strictSpan) AddEvent(name string, opts ...trace.EventOption) {
	s.check("AddEvent " + name)
	s.Span.AddEvent(name, opts...)
}
func (s *strictSpan) SetAttributes(kv ...attribute.KeyValue) {
	s.check("SetAttributes")
	s.Span.SetAttributes(kv...)
}
func (s *strictSpan) SetStatus(c codes.Code, d string) { s.check("SetStatus"); s.Span.SetStatus(c, d) }
func (s *strictSpan) SetName(n string)                 { s.check("SetName"); s.Span.SetName(n) }
func (s *strictSpan) RecordError(err error, opts ...trace.EventOption) {
	s.check("RecordError")
	s.Span.RecordError(err, opts...)
}

// openDB opens a seeded SQLite file database (50 users, 100 orders) with
// GORM's tracing plugin and gormbatch with the hook.
func openDB(t *testing.T, tel *telemetry) *gorm.DB {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "test.db") + "?_busy_timeout=5000&_journal_mode=WAL"
	db, err := gorm.Open(sqlite.New(sqlite.Config{DriverName: napDriver, DSN: dsn}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	sqlDB.SetMaxOpenConns(8)
	t.Cleanup(func() { sqlDB.Close() })
	if err := db.AutoMigrate(&User{}, &Order{}); err != nil {
		t.Fatal(err)
	}
	users := make([]User, 50)
	for i := range users {
		users[i] = User{Name: fmt.Sprintf("user%02d", i+1), Active: i%2 == 0}
	}
	orders := make([]Order, 100)
	for i := range orders {
		orders[i] = Order{UserID: uint(i%50 + 1), Amount: i}
	}
	if err := db.Create(&users).Error; err != nil {
		t.Fatal(err)
	}
	if err := db.Create(&orders).Error; err != nil {
		t.Fatal(err)
	}
	// Seeding is done: trace only the batch.
	if err := db.Use(tracing.NewPlugin(tracing.WithTracerProvider(tel.tp), tracing.WithoutMetrics())); err != nil {
		t.Fatal(err)
	}
	p := gormbatch.New(gormbatch.Config{Logger: slog.New(slog.DiscardHandler), Hooks: []gormbatch.Hook{tel.hook()}})
	if err := db.Use(p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return db
}

// here returns the line of its call.
func here() int {
	_, _, line, _ := runtime.Caller(1)
	return line
}

func TestBatchTrace(t *testing.T) {
	tel := newTelemetry(t)
	db := openDB(t, tel)
	ctx, root := tel.tp.Tracer("test").Start(context.Background(), "request")

	var (
		active []User
		nUsers int64
		recent []Order
		slow   int64
	)
	// The queries are added on consecutive lines, from line first on.
	first := here() + 2
	rep, err := gormbatch.From(db.WithContext(ctx)).Name("dashboard").Timeout(300*time.Millisecond).
		Find(&active, "active = ?", true, gormbatch.As("active users")).
		Count(&nUsers, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&User{}) })).
		Go("recent orders", func(tx *gorm.DB) error { return tx.Order("id DESC").Limit(5).Find(&recent).Error }).
		Raw(&slow, "SELECT COUNT(*) FROM users WHERE nap(20) = 1", gormbatch.As("slow report"), gormbatch.Optional()).
		Wait()
	root.End()
	if err != nil {
		t.Fatalf("Wait: %v\n%v", err, rep)
	}
	if r, _ := rep.Get("slow report"); r.Status != gormbatch.TimedOut {
		t.Fatalf("slow report: %v, want timed out\n%v", r.Status, rep)
	}

	t.Logf("\n%v", rep)
	spans := tel.spans.Ended()
	batch := only(t, spans, "gormbatch.batch dashboard")
	if batch.Parent().SpanID() != root.SpanContext().SpanID() {
		t.Errorf("batch span's parent is %v, want the request span", batch.Parent().SpanID())
	}
	wantAttrs(t, batch, map[attribute.Key]any{"gormbatch.batch.name": "dashboard", "gormbatch.batch.queries": int64(4), "gormbatch.batch.done": int64(3)})
	for _, k := range []attribute.Key{"gormbatch.batch.deadline", "gormbatch.batch.overshoot"} {
		if _, ok := attr(batch, k); !ok {
			t.Errorf("batch span has no %s", k)
		}
	}
	if batch.Status().Code != codes.Unset {
		t.Errorf("batch span status %v, want Unset (the failed query is optional)", batch.Status())
	}

	type want struct {
		name, status string
		optional     bool
	}
	wants := []want{{"active users", "done", false}, {"Count users", "done", false},
		{"recent orders", "done", false}, {"slow report", "timed out", true}}
	file := thisFile()
	for i, w := range wants {
		s := only(t, spans, "gormbatch.query "+w.name)
		if s.Parent().SpanID() != batch.SpanContext().SpanID() {
			t.Errorf("%s: parent %v, want the batch span %v", w.name, s.Parent().SpanID(), batch.SpanContext().SpanID())
		}
		wantAttrs(t, s, map[attribute.Key]any{"gormbatch.query.name": w.name, "gormbatch.query.index": int64(i),
			"gormbatch.query.status": w.status, "gormbatch.query.optional": w.optional, "gormbatch.query.killed": false,
			"code.file.path": file, "code.line.number": int64(first + i)})
		for _, k := range []attribute.Key{"gormbatch.query.waited", "gormbatch.query.ran", "gormbatch.query.rows"} {
			if _, ok := attr(s, k); !ok {
				t.Errorf("%s: no %s", w.name, k)
			}
		}
		if w.status == "done" {
			if s.Status().Code != codes.Unset {
				t.Errorf("%s: status %v, want Unset", w.name, s.Status())
			}
			continue
		}
		if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "batch deadline 300ms") {
			t.Errorf("%s: status %+v, want Error with the batch deadline", w.name, s.Status())
		}
		if !hasEvent(s, "exception") {
			t.Errorf("%s: error not recorded", w.name)
		}
		if ran, _ := attr(s, "gormbatch.query.ran"); ran.AsFloat64() < 0.25 {
			t.Errorf("%s: ran %vs, want about 0.3", w.name, ran.AsFloat64())
		}
	}
	if r, _ := attr(only(t, spans, "gormbatch.query active users"), "gormbatch.query.rows"); r.AsInt64() != 25 {
		t.Errorf("active users: rows %d, want 25", r.AsInt64())
	}
	if n := count(spans, func(s sdktrace.ReadOnlySpan) bool { return strings.HasPrefix(s.Name(), "gormbatch.query ") }); n != len(wants) {
		t.Errorf("%d query spans, want %d", n, len(wants))
	}

	// GORM's statement spans nest under the query spans: each query has
	// one, and each has a query span as its parent.
	queryOf := map[trace.SpanID]string{}
	for _, s := range spans {
		if strings.HasPrefix(s.Name(), "gormbatch.query ") {
			queryOf[s.SpanContext().SpanID()] = s.Name()
		}
	}
	stmts := map[string]int{}
	for _, s := range spans {
		if s.InstrumentationScope().Name != "gorm.io/plugin/opentelemetry" {
			continue
		}
		q, ok := queryOf[s.Parent().SpanID()]
		if !ok {
			t.Errorf("statement span %q: parent %v is not a query span", s.Name(), s.Parent().SpanID())
		}
		stmts[q]++
	}
	for _, w := range wants {
		if stmts["gormbatch.query "+w.name] != 1 {
			t.Errorf("%s: %d statement spans under it, want 1 (%v)", w.name, stmts["gormbatch.query "+w.name], stmts)
		}
	}

	// Metrics: queries by status, one overshoot point.
	rm := collect(t, tel)
	if got := counts(t, rm, "gormbatch.queries", "gormbatch.query.status"); got["done"] != 3 || got["timed out"] != 1 || len(got) != 2 {
		t.Errorf("gormbatch.queries = %v, want done 3, timed out 1", got)
	}
	h := histogram(t, rm, "gormbatch.wait.overshoot")
	if h.Count != 1 || h.Sum < 0 || h.Sum > 1 {
		t.Errorf("gormbatch.wait.overshoot: count %d sum %v, want one point in [0, 1]s", h.Count, h.Sum)
	}
}

// A skipped query never starts, yet has a span under its batch.
func TestSkippedQuery(t *testing.T) {
	tel := newTelemetry(t)
	db := openDB(t, tel)
	var slow, never int64
	rep, err := gormbatch.From(db).Timeout(100*time.Millisecond).Concurrency(1).
		Raw(&slow, "SELECT COUNT(*) FROM users WHERE nap(20) = 1", gormbatch.As("slow")).
		Raw(&never, "SELECT 1", gormbatch.As("never")).
		Wait()
	if err == nil {
		t.Fatalf("Wait: nil error\n%v", rep)
	}
	if r, _ := rep.Get("never"); r.Status != gormbatch.Skipped {
		t.Fatalf("never: %v, want skipped\n%v", r.Status, rep)
	}
	spans := tel.spans.Ended()
	batch := only(t, spans, "gormbatch.batch")
	if batch.Status().Code != codes.Error {
		t.Errorf("batch span status %v, want Error", batch.Status())
	}
	s := only(t, spans, "gormbatch.query never")
	if s.Parent().SpanID() != batch.SpanContext().SpanID() {
		t.Errorf("skipped query's parent %v, want the batch span", s.Parent().SpanID())
	}
	if s.SpanContext().TraceID() != batch.SpanContext().TraceID() {
		t.Error("skipped query span in another trace")
	}
	wantAttrs(t, s, map[attribute.Key]any{"gormbatch.query.status": "skipped", "gormbatch.query.index": int64(1)})
	if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "skipped") {
		t.Errorf("skipped query status %+v, want Error", s.Status())
	}
	if d := s.EndTime().Sub(s.StartTime()); d < 50*time.Millisecond {
		t.Errorf("skipped query span lasts %v, want its wait (about 100ms)", d)
	}
	got := counts(t, collect(t, tel), "gormbatch.queries", "gormbatch.query.status")
	if got["skipped"] != 1 || got["timed out"] != 1 {
		t.Errorf("gormbatch.queries = %v, want skipped 1, timed out 1", got)
	}
}

// Events: SQLite has no server cancel, so this drives the hook as the
// plugin does for a MariaDB query whose connection is handed off: events
// while the query is open become span events, those after EndQuery only
// metrics.
func TestEvents(t *testing.T) {
	tel := newTelemetry(t)
	h := tel.strictHook(t)
	ctx := context.Background()
	deadline := time.Now().Add(-20 * time.Millisecond) // Wait returns 20ms late
	b := gormbatch.BatchInfo{Name: "kills", Queries: 1, Deadline: deadline}
	bctx := h.StartBatch(ctx, b)
	q := gormbatch.QueryInfo{Name: "Find users", Index: 0}
	qctx := h.StartQuery(bctx, q)
	ev := func(e gormbatch.Event) {
		e.Dialect, e.Server = "mysql", "10.11.19-MariaDB"
		h.Event(qctx, q, e)
	}
	ev(gormbatch.Event{Kind: gormbatch.EventKillSent})
	ev(gormbatch.Event{Kind: gormbatch.EventHandoff})
	cause := errors.New("batch deadline 1s: context deadline exceeded")
	h.EndQuery(qctx, q, gormbatch.Result{Name: "Find users", Status: gormbatch.TimedOut, Err: cause, Killed: true})
	h.EndBatch(bctx, b, &gormbatch.Report{}, &gormbatch.Error{})
	// After Wait returned: the late answer, a cut of another connection,
	// the reclaim.
	ev(gormbatch.Event{Kind: gormbatch.EventKillAnswered, Elapsed: 150 * time.Millisecond, Late: true})
	ev(gormbatch.Event{Kind: gormbatch.EventCut})
	ev(gormbatch.Event{Kind: gormbatch.EventReclaimed, Elapsed: 200 * time.Millisecond})
	ev(gormbatch.Event{Kind: gormbatch.EventKillFailed, Err: errors.New("no answer")})
	ev(gormbatch.Event{Kind: gormbatch.EventServerLimit})

	spans := tel.spans.Ended()
	s := only(t, spans, "gormbatch.query Find users")
	var names []string
	for _, e := range s.Events() {
		names = append(names, e.Name)
	}
	if got, want := strings.Join(names, ","), "gormbatch.kill_sent,gormbatch.handoff,exception"; got != want {
		t.Errorf("span events %s, want %s", got, want)
	}
	for _, k := range []attribute.Key{"db.system.name", "gormbatch.event.server"} {
		found := false
		for _, kv := range s.Events()[0].Attributes {
			found = found || kv.Key == k
		}
		if !found {
			t.Errorf("kill_sent event has no %s: %v", k, s.Events()[0].Attributes)
		}
	}
	wantAttrs(t, s, map[attribute.Key]any{"gormbatch.query.killed": true, "gormbatch.query.status": "timed out"})

	rm := collect(t, tel)
	if got := counts(t, rm, "gormbatch.kills", "gormbatch.kill.result"); fmt.Sprint(got) != "map[failed:1 late:1 sent:1]" {
		t.Errorf("gormbatch.kills = %v", got)
	}
	if got := counts(t, rm, "gormbatch.kills", "db.system.name"); fmt.Sprint(got) != "map[mariadb:3]" {
		t.Errorf("gormbatch.kills by db.system.name = %v", got)
	}
	for name, want := range map[string]int64{"gormbatch.cuts": 1, "gormbatch.handoffs": 1, "gormbatch.server_limit_stops": 1} {
		if got := counts(t, rm, name, "db.system.name"); got["mariadb"] != want {
			t.Errorf("%s = %v, want mariadb %d", name, got, want)
		}
	}
	if k := histogram(t, rm, "gormbatch.kill.duration"); k.Count != 1 || k.Sum != 0.15 {
		t.Errorf("gormbatch.kill.duration: count %d sum %v, want 1, 0.15", k.Count, k.Sum)
	}
	if o := histogram(t, rm, "gormbatch.wait.overshoot"); o.Count != 1 || o.Sum < 0.02 || o.Sum > 1 {
		t.Errorf("gormbatch.wait.overshoot: count %d sum %v, want 1, about 0.02", o.Count, o.Sum)
	}
}

// The hook is called from many goroutines at once, Event racing EndQuery
// (the plugin's watcher ends a query while its goroutine reports): run
// with -race.
func TestConcurrentHooks(t *testing.T) {
	tel := newTelemetry(t)
	h := tel.strictHook(t)
	b := gormbatch.BatchInfo{Queries: 50}
	bctx := h.StartBatch(context.Background(), b)
	var wg sync.WaitGroup
	for i := range 50 {
		q := gormbatch.QueryInfo{Name: fmt.Sprint("q", i), Index: i}
		qctx := h.StartQuery(bctx, q)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 20 {
				h.Event(qctx, q, gormbatch.Event{Kind: gormbatch.EventKillSent, Dialect: "postgres"})
			}
		}()
		go func() {
			defer wg.Done()
			h.EndQuery(qctx, q, gormbatch.Result{Name: q.Name, Status: gormbatch.Done})
			h.EndQuery(qctx, q, gormbatch.Result{Name: q.Name, Status: gormbatch.Done}) // ignored by the span
		}()
	}
	wg.Wait()
	h.EndBatch(bctx, b, &gormbatch.Report{}, nil)
	if n := len(tel.spans.Ended()); n != 51 {
		t.Errorf("%d spans ended, want 51", n)
	}
	rm := collect(t, tel)
	if got := counts(t, rm, "gormbatch.kills", "db.system.name"); got["postgresql"] != 1000 {
		t.Errorf("gormbatch.kills = %v, want postgresql 1000", got)
	}
}

// Two hooks (two providers) in one Config each end their own spans (the
// spans of the second are children of the first's, as the context says).
func TestTwoHooks(t *testing.T) {
	a, b := newTelemetry(t), newTelemetry(t)
	ha, hb := a.hook(), b.hook()
	ctx := context.Background()
	info := gormbatch.BatchInfo{Queries: 1}
	ctx = ha.StartBatch(ctx, info)
	ctx = hb.StartBatch(ctx, info)
	q := gormbatch.QueryInfo{Name: "x"}
	qctx := ha.StartQuery(ctx, q)
	qctx = hb.StartQuery(qctx, q)
	hb.EndQuery(qctx, q, gormbatch.Result{Name: "x", Status: gormbatch.Done})
	ha.EndQuery(qctx, q, gormbatch.Result{Name: "x", Status: gormbatch.Done})
	hb.EndBatch(ctx, info, &gormbatch.Report{}, nil)
	ha.EndBatch(ctx, info, &gormbatch.Report{}, nil)
	for _, tel := range []*telemetry{a, b} {
		spans := tel.spans.Ended()
		only(t, spans, "gormbatch.batch")
		only(t, spans, "gormbatch.query x")
		if n := len(tel.spans.Started()); n != 2 {
			t.Errorf("%d spans started, want 2", n)
		}
	}
}

func thisFile() string {
	_, file, _, _ := runtime.Caller(0)
	return file
}

// only returns the one ended span named name.
func only(t *testing.T, spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		var names []string
		for _, s := range spans {
			names = append(names, s.Name())
		}
		t.Fatalf("%d spans named %q, want 1; spans: %q", len(found), name, names)
	}
	return found[0]
}

func count(spans []sdktrace.ReadOnlySpan, f func(sdktrace.ReadOnlySpan) bool) int {
	n := 0
	for _, s := range spans {
		if f(s) {
			n++
		}
	}
	return n
}

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[attribute.Key]any) {
	t.Helper()
	for k, w := range want {
		v, ok := attr(s, k)
		if !ok {
			t.Errorf("%s: no attribute %s", s.Name(), k)
		} else if v.AsInterface() != w {
			t.Errorf("%s: %s = %#v, want %#v", s.Name(), k, v.AsInterface(), w)
		}
	}
}

func hasEvent(s sdktrace.ReadOnlySpan, name string) bool {
	for _, e := range s.Events() {
		if e.Name == name {
			return true
		}
	}
	return false
}

func collect(t *testing.T, tel *telemetry) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

func find(t *testing.T, rm metricdata.ResourceMetrics, name string) metricdata.Metrics {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				if sm.Scope.Name != gormbatchotel.ScopeName {
					t.Errorf("%s: scope %q", name, sm.Scope.Name)
				}
				return m
			}
		}
	}
	t.Fatalf("no metric %s", name)
	return metricdata.Metrics{}
}

// counts sums an int64 counter by the value of attribute key.
func counts(t *testing.T, rm metricdata.ResourceMetrics, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	sum, ok := find(t, rm, name).Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s is not an int64 sum", name)
	}
	out := map[string]int64{}
	for _, dp := range sum.DataPoints {
		v, _ := dp.Attributes.Value(key)
		out[v.Emit()] += dp.Value
	}
	return out
}

// histogram returns the one point of a float64 histogram.
func histogram(t *testing.T, rm metricdata.ResourceMetrics, name string) metricdata.HistogramDataPoint[float64] {
	t.Helper()
	h, ok := find(t, rm, name).Data.(metricdata.Histogram[float64])
	if !ok || len(h.DataPoints) != 1 {
		t.Fatalf("%s: %#v, want a float64 histogram of one point", name, find(t, rm, name).Data)
	}
	return h.DataPoints[0]
}
