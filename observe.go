package gormbatch

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// Hook observes batches, queries and the plugin's events: tracing, metrics,
// anything else. Register hooks in Config.Hooks; the module
// github.com/gormbatch/gormbatch/otel implements one for OpenTelemetry.
//
// The plugin calls a hook synchronously on the goroutine of the batch
// (StartBatch, EndBatch) or of the query, so each method must return
// quickly and must not run statements. A context returned by StartBatch or
// StartQuery must derive from the one given (nil keeps it): it becomes the
// parent of the batch's queries or the query's own context, under which
// GORM runs its statements (so spans started there nest under it). For
// each query, StartQuery (if it started), then EndQuery exactly once, are
// called before Wait returns; Event may be called before EndQuery and, for
// a query whose connection was handed off (see Config.KillGrace), after it.
// EndQuery and Event get the query's context (a skipped query's is the
// batch's), EndBatch the batch's.
type Hook interface {
	StartBatch(ctx context.Context, b BatchInfo) context.Context
	EndBatch(ctx context.Context, b BatchInfo, rep *Report, err error)
	StartQuery(ctx context.Context, q QueryInfo) context.Context
	EndQuery(ctx context.Context, q QueryInfo, r Result)
	Event(ctx context.Context, q QueryInfo, e Event)
}

// NopHook implements Hook with methods that do nothing; embed it to
// implement only some of them.
type NopHook struct{}

// StartBatch returns ctx.
func (NopHook) StartBatch(ctx context.Context, _ BatchInfo) context.Context { return ctx }

// EndBatch does nothing.
func (NopHook) EndBatch(context.Context, BatchInfo, *Report, error) {}

// StartQuery returns ctx.
func (NopHook) StartQuery(ctx context.Context, _ QueryInfo) context.Context { return ctx }

// EndQuery does nothing.
func (NopHook) EndQuery(context.Context, QueryInfo, Result) {}

// Event does nothing.
func (NopHook) Event(context.Context, QueryInfo, Event) {}

// BatchInfo describes a batch to hooks.
type BatchInfo struct {
	Name     string    // set with Batch.Name; may be empty
	Queries  int       // queries added
	Deadline time.Time // the batch deadline (Timeout or the parent's, the earlier); zero if none
	Dialect  string    // GORM dialector name: "mysql", "postgres", "sqlite"
}

// QueryInfo describes a query to hooks.
type QueryInfo struct {
	// Name is the query's name. An unnamed query's default may gain its
	// table once its first statement ran ("Count #2" at StartQuery,
	// "Count orders" at EndQuery and in Result.Name).
	Name     string
	Index    int // position in the batch, from 0
	Optional bool
	PC       uintptr // the application's call that added it (runtime.CallersFrames)
	Dialect  string  // GORM dialector name
}

// EventKind is what happened; its String is the record's name in logs.
type EventKind int

const (
	// EventKillSent: the plugin asked the server to stop a statement (KILL
	// QUERY on MySQL/MariaDB, a cancel request on PostgreSQL).
	EventKillSent EventKind = iota + 1
	// EventKillAnswered: the server confirmed the stop; Elapsed is the
	// answer time, Late that it came after the clean-up budget.
	EventKillAnswered
	// EventKillFailed: the stop was not confirmed (Err says why), so its
	// connection is discarded.
	EventKillFailed
	// EventCut: the plugin closed a statement's socket, because the stop
	// failed or the clean-up budget (KillGrace) or ReclaimTimeout ran out.
	// The connection is discarded, and the pool opens a new one.
	EventCut
	// EventHandoff: the clean-up budget (KillGrace) ran out while a
	// stopped statement was still answering; Wait has returned, and the
	// plugin holds its connection until the server answers.
	EventHandoff
	// EventReclaimed: a connection the plugin held after its query's
	// status was decided is back (or, after a cut, discarded); Elapsed is
	// how long it held it.
	EventReclaimed
	// EventServerLimit: the server-side time limit the plugin sends with
	// reads stopped a statement.
	EventServerLimit
	// EventSetupFailed: server cancel could not be set up for a connection
	// (Err); the query ran with the driver's cancel, or failed under
	// ServerCancelRequire.
	EventSetupFailed
)

var eventNames = [...]string{"", "kill sent", "kill answered", "kill failed", "cut", "handoff", "reclaimed", "server limit", "setup failed"}

// String returns the event's name: "kill sent", "cut", ...
func (k EventKind) String() string {
	if k < EventKillSent || k > EventSetupFailed {
		return "event"
	}
	return eventNames[k]
}

// Event is something the plugin did for a query.
type Event struct {
	Kind    EventKind
	Dialect string        // GORM dialector name: "mysql", "postgres"
	Server  string        // "10.11.19-MariaDB", "PostgreSQL 15.20"
	Elapsed time.Duration // EventKillAnswered: the answer time; EventReclaimed: held after the handoff
	Late    bool          // EventKillAnswered: after the clean-up budget
	Err     error
}

// Stats is a snapshot of the plugin's counters, in the style of
// sql.DBStats. Counters only grow; InFlight and Reclaiming are current.
type Stats struct {
	Batches                                             int64
	Done, Failed, TimedOut, Canceled, Skipped, Panicked int64 // queries by status
	KillsSent                                           int64 // stops sent (KILL QUERY, cancel requests)
	KillsAnswered                                       int64 // confirmed by the server
	KillsLate                                           int64 // of which after the clean-up budget (KillGrace)
	KillsFailed                                         int64 // not confirmed: connection discarded
	Cuts                                                int64 // sockets closed by the plugin: each costs a reconnect
	Handoffs                                            int64 // the budget ran out before a stopped statement answered
	ServerLimitStops                                    int64 // statements stopped by the server-side limit
	SetupFailures                                       int64 // connections without server cancel (fallback or failure)
	SlotWait                                            time.Duration
	InFlight                                            int // batch queries holding an in-flight slot now
	Reclaiming                                          int // connections held after their query's status was decided
}

// counters are the atomics behind Stats.
type counters struct {
	batches, kills, killsAnswered, killsLate, killsFailed atomic.Int64
	cuts, handoffs, serverLimits, setupFailures           atomic.Int64
	status                                                [Panicked + 1]atomic.Int64
	slotWait                                              atomic.Int64 // ns
	inFlight, reclaiming                                  atomic.Int64
}

// Stats returns the plugin's counters. It is cheap (atomic loads) and safe
// for concurrent use.
func (p *Plugin) Stats() Stats {
	c := &p.stats
	return Stats{
		Batches: c.batches.Load(),
		Done:    c.status[Done].Load(), Failed: c.status[Failed].Load(), TimedOut: c.status[TimedOut].Load(),
		Canceled: c.status[Canceled].Load(), Skipped: c.status[Skipped].Load(), Panicked: c.status[Panicked].Load(),
		KillsSent: c.kills.Load(), KillsAnswered: c.killsAnswered.Load(), KillsLate: c.killsLate.Load(),
		KillsFailed: c.killsFailed.Load(), Cuts: c.cuts.Load(), Handoffs: c.handoffs.Load(),
		ServerLimitStops: c.serverLimits.Load(), SetupFailures: c.setupFailures.Load(),
		SlotWait: time.Duration(c.slotWait.Load()), InFlight: int(c.inFlight.Load()), Reclaiming: int(c.reclaiming.Load()),
	}
}

// emit counts an event of query q, logs it and tells the hooks.
func (p *Plugin) emit(q *query, e Event) {
	e.Dialect = p.dialectName
	c := &p.stats
	level := slog.LevelDebug
	switch e.Kind {
	case EventKillSent:
		c.kills.Add(1)
	case EventKillAnswered:
		c.killsAnswered.Add(1)
		if e.Late {
			c.killsLate.Add(1)
		}
	case EventKillFailed:
		c.killsFailed.Add(1)
		level = slog.LevelWarn
	case EventCut:
		c.cuts.Add(1)
		level = slog.LevelWarn
	case EventHandoff:
		c.handoffs.Add(1)
		level = slog.LevelInfo
	case EventReclaimed:
		c.reclaiming.Add(-1)
	case EventServerLimit:
		c.serverLimits.Add(1)
	case EventSetupFailed:
		c.setupFailures.Add(1)
		level = slog.LevelWarn
	}
	ctx := q.ctx
	if p.log.Enabled(ctx, level) {
		attrs := []slog.Attr{slog.String("query", q.label()), slog.String("dialect", e.Dialect)}
		if e.Server != "" {
			attrs = append(attrs, slog.String("server", e.Server))
		}
		if e.Elapsed > 0 {
			attrs = append(attrs, slog.Duration("elapsed", e.Elapsed))
		}
		if e.Late {
			attrs = append(attrs, slog.Bool("late", true))
		}
		if e.Err != nil {
			attrs = append(attrs, slog.String("err", e.Err.Error()))
		}
		p.record(ctx, level, "gormbatch: "+e.Kind.String(), q.pc, attrs)
	}
	for _, h := range p.cfg.Hooks {
		h.Event(ctx, q.info(), e)
	}
}

// queryEnded counts, logs and reports a query's result.
func (p *Plugin) queryEnded(q *query, r Result) {
	p.stats.status[r.Status].Add(1)
	level := slog.LevelInfo
	switch r.Status {
	case Done:
		level = slog.LevelDebug
	case Panicked:
		level = slog.LevelError
	}
	ctx := q.ctx
	if p.log.Enabled(ctx, level) {
		attrs := []slog.Attr{slog.String("query", r.Name), slog.String("status", r.Status.String()),
			slog.Duration("waited", r.Waited), slog.Duration("ran", r.Ran), slog.Int64("rows", r.Rows),
			slog.Bool("killed", r.Killed), slog.String("dialect", p.dialectName)}
		if r.Err != nil {
			attrs = append(attrs, slog.String("err", r.Err.Error()))
		}
		p.record(ctx, level, "gormbatch: query "+r.Status.String(), q.pc, attrs)
	}
	for _, h := range p.cfg.Hooks {
		h.EndQuery(ctx, q.info(), r)
	}
}

// setupFailed reports a connection without server cancel.
func (p *Plugin) setupFailed(q *query, err error) {
	p.emit(q, Event{Kind: EventSetupFailed, Err: err})
}

// record logs one record at the application's source position pc.
func (p *Plugin) record(ctx context.Context, level slog.Level, msg string, pc uintptr, attrs []slog.Attr) {
	r := slog.NewRecord(time.Now(), level, msg, pc)
	r.AddAttrs(attrs...)
	p.log.Handler().Handle(ctx, r)
}

// warnOnce logs a warning the first time key is seen.
func (p *Plugin) warnOnce(key, msg string, attrs ...slog.Attr) {
	if _, seen := p.warned.LoadOrStore(key, true); !seen {
		p.log.LogAttrs(context.Background(), slog.LevelWarn, msg, attrs...)
	}
}

// warnOnly is the default handler: slog.Default()'s at the time of each
// record (h nil), at warnings and above.
type warnOnly struct{ h slog.Handler }

func (w warnOnly) handler() slog.Handler {
	if w.h != nil {
		return w.h
	}
	return slog.Default().Handler()
}

func (w warnOnly) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && w.handler().Enabled(ctx, l)
}
func (w warnOnly) Handle(ctx context.Context, r slog.Record) error { return w.handler().Handle(ctx, r) }
func (w warnOnly) WithAttrs(as []slog.Attr) slog.Handler {
	return warnOnly{w.handler().WithAttrs(as)}
}
func (w warnOnly) WithGroup(name string) slog.Handler { return warnOnly{w.handler().WithGroup(name)} }
