package gormbatchotel

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/gormbatch/gormbatch"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the tracer and meter the hook
// uses.
const ScopeName = "github.com/gormbatch/gormbatch/otel"

// Attribute keys of the hook's spans and metrics, besides the semantic
// conventions' code.* and db.system.name. Durations are in seconds.
const (
	batchName      = attribute.Key("gormbatch.batch.name")
	batchQueries   = attribute.Key("gormbatch.batch.queries")
	batchDeadline  = attribute.Key("gormbatch.batch.deadline") // RFC 3339
	batchOvershoot = attribute.Key("gormbatch.batch.overshoot")
	batchDone      = attribute.Key("gormbatch.batch.done")
	queryName      = attribute.Key("gormbatch.query.name")
	queryIndex     = attribute.Key("gormbatch.query.index")
	queryOptional  = attribute.Key("gormbatch.query.optional")
	queryStatus    = attribute.Key("gormbatch.query.status")
	queryWaited    = attribute.Key("gormbatch.query.waited")
	queryRan       = attribute.Key("gormbatch.query.ran")
	queryRows      = attribute.Key("gormbatch.query.rows")
	queryKilled    = attribute.Key("gormbatch.query.killed")
	killResult     = attribute.Key("gormbatch.kill.result")
	eventServer    = attribute.Key("gormbatch.event.server")
	eventElapsed   = attribute.Key("gormbatch.event.elapsed")
	eventLate      = attribute.Key("gormbatch.event.late")
	eventError     = attribute.Key("gormbatch.event.error")
)

// Option configures NewHook.
type Option func(*config)

type config struct {
	tp trace.TracerProvider
	mp metric.MeterProvider
}

// WithTracerProvider sets the TracerProvider the hook starts spans with.
// The default is otel.GetTracerProvider() at the time NewHook is called.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithMeterProvider sets the MeterProvider the hook's instruments come
// from. The default is otel.GetMeterProvider() at the time NewHook is
// called.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// NewHook returns a gormbatch.Hook that traces batches and queries and
// records metrics; register it in gormbatch.Config.Hooks. The hook is safe
// for concurrent use, and one hook may serve several plugins.
//
// Each batch gets a span ("gormbatch.batch" or "gormbatch.batch NAME"),
// and each of its queries a child span ("gormbatch.query NAME") that is
// the parent of the spans GORM's tracing plugin
// (gorm.io/plugin/opentelemetry/tracing) starts for its statements. A
// query that did not end Done has span status Error and its error
// recorded. The plugin's events (kills, cuts, handoffs, ...) become events
// on the query's span while it is open; those that come after the query
// ended (a handed-off connection) are only counted. A skipped query, which
// never started, gets a span covering its wait. See the package
// documentation for the metrics.
//
// Instruments that cannot be created are reported to otel.Handle and
// replaced by no-op ones.
func NewHook(opts ...Option) gormbatch.Hook {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	h := &hook{tracer: c.tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL))}
	m := c.mp.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	var err error
	check := func(e error) {
		if e != nil && err == nil {
			err = e
		}
	}
	var e error
	h.queries, e = m.Int64Counter("gormbatch.queries", metric.WithUnit("{query}"),
		metric.WithDescription("Queries of batches that ended, by status."))
	check(e)
	h.kills, e = m.Int64Counter("gormbatch.kills", metric.WithUnit("{kill}"),
		metric.WithDescription("Server-side stops of cancelled statements, by result: sent, answered (within KillGrace), late (answered after KillGrace), failed."))
	check(e)
	h.cuts, e = m.Int64Counter("gormbatch.cuts", metric.WithUnit("{connection}"),
		metric.WithDescription("Connections whose socket the plugin closed; each costs a reconnect."))
	check(e)
	h.handoffs, e = m.Int64Counter("gormbatch.handoffs", metric.WithUnit("{connection}"),
		metric.WithDescription("Connections whose stopped statement had not answered when KillGrace ran out; the plugin returns them when it answers."))
	check(e)
	h.serverLimits, e = m.Int64Counter("gormbatch.server_limit_stops", metric.WithUnit("{statement}"),
		metric.WithDescription("Statements stopped by the server-side time limit the plugin sends."))
	check(e)
	h.killDuration, e = m.Float64Histogram("gormbatch.kill.duration", metric.WithUnit("s"),
		metric.WithDescription("Time the server took to answer a stop."),
		metric.WithExplicitBucketBoundaries(fineBuckets...))
	check(e)
	h.overshoot, e = m.Float64Histogram("gormbatch.wait.overshoot", metric.WithUnit("s"),
		metric.WithDescription("Time Wait returned past the batch deadline (0 when before it); batches with a deadline only."),
		metric.WithExplicitBucketBoundaries(fineBuckets...))
	check(e)
	if err != nil {
		otel.Handle(err)
	}
	return h
}

// fineBuckets are histogram boundaries in seconds, from 0.5ms to 10s:
// kills and overshoots are mostly in milliseconds.
var fineBuckets = []float64{0, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// hook implements gormbatch.Hook. It is immutable after NewHook; the state
// of each batch and query travels in their contexts.
type hook struct {
	tracer                                       trace.Tracer
	queries, kills, cuts, handoffs, serverLimits metric.Int64Counter
	killDuration, overshoot                      metric.Float64Histogram
}

// Context keys carry the hook, so that two hooks (two providers) each
// find and end their own spans.
type batchKey struct{ h *hook }
type queryKey struct{ h *hook }

// querySpan is a started query's span. ended guards it: Event may run
// concurrently with EndQuery (the watcher's goroutine), and after it.
type querySpan struct {
	span  trace.Span
	name  string // the query's name when the span started
	mu    sync.Mutex
	ended bool
}

// statusAttrs are the metric attributes of each query status, built once.
var statusAttrs = func() map[gormbatch.Status]metric.MeasurementOption {
	m := map[gormbatch.Status]metric.MeasurementOption{}
	for st := gormbatch.Done; st <= gormbatch.Panicked; st++ {
		m[st] = metric.WithAttributeSet(attribute.NewSet(queryStatus.String(st.String())))
	}
	return m
}()

// StartBatch starts the batch span; the returned context carries it.
func (h *hook) StartBatch(ctx context.Context, b gormbatch.BatchInfo) context.Context {
	name := "gormbatch.batch"
	attrs := make([]attribute.KeyValue, 0, 3)
	attrs = append(attrs, batchQueries.Int(b.Queries))
	if b.Name != "" {
		name += " " + b.Name
		attrs = append(attrs, batchName.String(b.Name))
	}
	if !b.Deadline.IsZero() {
		attrs = append(attrs, batchDeadline.String(b.Deadline.Format(time.RFC3339Nano)))
	}
	ctx, span := h.tracer.Start(ctx, name, trace.WithAttributes(attrs...))
	return context.WithValue(ctx, batchKey{h}, span)
}

// EndBatch records the overshoot and ends the batch span, with status
// Error when err is not nil.
func (h *hook) EndBatch(ctx context.Context, b gormbatch.BatchInfo, rep *gormbatch.Report, err error) {
	var over float64
	if !b.Deadline.IsZero() {
		over = max(time.Since(b.Deadline), 0).Seconds()
		h.overshoot.Record(ctx, over)
	}
	span, _ := ctx.Value(batchKey{h}).(trace.Span)
	if span == nil {
		return
	}
	if !b.Deadline.IsZero() {
		span.SetAttributes(batchDeadline.String(b.Deadline.Format(time.RFC3339Nano)), batchOvershoot.Float64(over))
	}
	if rep != nil {
		done := 0
		for _, r := range rep.Results {
			if r.Status == gormbatch.Done {
				done++
			}
		}
		span.SetAttributes(batchDone.Int(done))
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// StartQuery starts the query span under the batch span; the returned
// context carries it, so GORM's statement spans nest under it.
func (h *hook) StartQuery(ctx context.Context, q gormbatch.QueryInfo) context.Context {
	ctx, span := h.tracer.Start(ctx, "gormbatch.query "+q.Name, trace.WithAttributes(queryAttrs(q)...))
	return context.WithValue(ctx, queryKey{h}, &querySpan{span: span, name: q.Name})
}

// EndQuery counts the query and ends its span. A skipped query has none:
// it gets a span from the batch's start of its wait to now.
func (h *hook) EndQuery(ctx context.Context, q gormbatch.QueryInfo, r gormbatch.Result) {
	status, ok := statusAttrs[r.Status]
	if !ok {
		status = metric.WithAttributes(queryStatus.String(r.Status.String()))
	}
	h.queries.Add(ctx, 1, status)
	qs, _ := ctx.Value(queryKey{h}).(*querySpan)
	if r.Status == gormbatch.Skipped || qs == nil {
		// ctx is the batch's (it may hold the span of an enclosing batch's
		// query, for a nested batch: never end that one).
		_, span := h.tracer.Start(ctx, "gormbatch.query "+q.Name,
			trace.WithTimestamp(time.Now().Add(-r.Waited)), trace.WithAttributes(queryAttrs(q)...))
		endQuery(span, q.Name, r)
		return
	}
	qs.mu.Lock()
	ended := qs.ended
	qs.ended = true
	qs.mu.Unlock()
	if !ended {
		endQuery(qs.span, qs.name, r)
	}
}

// Event counts the event and, while the query's span is open, adds it as a
// span event.
func (h *hook) Event(ctx context.Context, _ gormbatch.QueryInfo, e gormbatch.Event) {
	var db []attribute.KeyValue // db.system.name, if known
	if kv := dbSystem(e); kv.Valid() {
		db = []attribute.KeyValue{kv}
	}
	kill := func(result string) metric.AddOption {
		return metric.WithAttributes(append(db, killResult.String(result))...)
	}
	switch e.Kind {
	case gormbatch.EventKillSent:
		h.kills.Add(ctx, 1, kill("sent"))
	case gormbatch.EventKillAnswered:
		if e.Late {
			h.kills.Add(ctx, 1, kill("late"))
		} else {
			h.kills.Add(ctx, 1, kill("answered"))
		}
		h.killDuration.Record(ctx, e.Elapsed.Seconds(), metric.WithAttributes(db...))
	case gormbatch.EventKillFailed:
		h.kills.Add(ctx, 1, kill("failed"))
	case gormbatch.EventCut:
		h.cuts.Add(ctx, 1, metric.WithAttributes(db...))
	case gormbatch.EventHandoff:
		h.handoffs.Add(ctx, 1, metric.WithAttributes(db...))
	case gormbatch.EventServerLimit:
		h.serverLimits.Add(ctx, 1, metric.WithAttributes(db...))
	}
	qs, _ := ctx.Value(queryKey{h}).(*querySpan)
	if qs == nil {
		return
	}
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if qs.ended || !qs.span.IsRecording() {
		return
	}
	attrs := append(make([]attribute.KeyValue, 0, 5), db...)
	if e.Server != "" {
		attrs = append(attrs, eventServer.String(e.Server))
	}
	if e.Elapsed > 0 {
		attrs = append(attrs, eventElapsed.Float64(e.Elapsed.Seconds()))
	}
	if e.Late {
		attrs = append(attrs, eventLate.Bool(true))
	}
	if e.Err != nil {
		attrs = append(attrs, eventError.String(e.Err.Error()))
	}
	qs.span.AddEvent(eventName(e.Kind), trace.WithAttributes(attrs...))
}

// eventName is the span event's name: "gormbatch.kill_sent", ...
func eventName(k gormbatch.EventKind) string {
	return "gormbatch." + strings.ReplaceAll(k.String(), " ", "_")
}

// queryAttrs are the attributes a query span starts with: its name, place
// in the batch and the application's call that added it.
func queryAttrs(q gormbatch.QueryInfo) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 6)
	attrs = append(attrs, queryName.String(q.Name), queryIndex.Int(q.Index), queryOptional.Bool(q.Optional))
	if q.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{q.PC}).Next()
		if f.File != "" {
			attrs = append(attrs, semconv.CodeFilePath(f.File), semconv.CodeLineNumber(f.Line))
		}
		if f.Function != "" {
			attrs = append(attrs, semconv.CodeFunctionName(f.Function))
		}
	}
	return attrs
}

// endQuery sets a query span's outcome and ends it, renaming it if the
// query's name changed since it started ("Count #2" became "Count users").
func endQuery(span trace.Span, started string, r gormbatch.Result) {
	if r.Name != "" && r.Name != started {
		span.SetName("gormbatch.query " + r.Name)
		span.SetAttributes(queryName.String(r.Name))
	}
	span.SetAttributes(
		queryStatus.String(r.Status.String()),
		queryWaited.Float64(r.Waited.Seconds()),
		queryRan.Float64(r.Ran.Seconds()),
		queryRows.Int64(r.Rows),
		queryKilled.Bool(r.Killed),
	)
	if r.Status != gormbatch.Done {
		msg := r.Status.String()
		if r.Err != nil {
			span.RecordError(r.Err)
			msg = r.Err.Error()
		}
		span.SetStatus(codes.Error, msg)
	}
	span.End()
}

// dbSystem maps the event's GORM dialector name to db.system.name; the
// zero KeyValue (not Valid) when the event has none.
func dbSystem(e gormbatch.Event) attribute.KeyValue {
	switch e.Dialect {
	case "":
		return attribute.KeyValue{}
	case "mysql":
		if strings.Contains(strings.ToLower(e.Server), "mariadb") {
			return semconv.DBSystemNameMariaDB
		}
		return semconv.DBSystemNameMySQL
	case "postgres", "postgresql":
		return semconv.DBSystemNamePostgreSQL
	case "sqlite":
		return semconv.DBSystemNameSQLite
	case "sqlserver":
		return semconv.DBSystemNameMicrosoftSQLServer
	}
	return semconv.DBSystemNameKey.String(e.Dialect)
}
