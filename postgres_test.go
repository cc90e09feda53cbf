package gormbatch_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// PostgreSQL only: what the generic server tests cannot express.

// Promise 3: after 20 cancels on a pool of one connection, the batch still
// runs on the same backend (no reconnect), and each cancelled statement has
// left pg_stat_activity when Wait returns (the log gives how long it took).
func TestPostgresSameBackend(t *testing.T) {
	s := openServer(t, postgresBackend, gormbatch.Config{})
	s.sqlDB.SetMaxOpenConns(1)
	s.sqlDB.SetMaxIdleConns(1)
	outside := postgresBackend.open(t, postgresDSN(), &gorm.Config{Logger: logger.Discard})
	pid := func() int64 {
		var id int64
		if _, err := gormbatch.From(s.DB).Raw(&id, "SELECT pg_backend_pid()").Wait(); err != nil {
			t.Fatal(err)
		}
		return id
	}
	first := pid()
	tg := tag(t)
	var left []time.Duration
	for range 20 {
		n := int64(-1)
		rep, _ := gormbatch.From(s.DB).Timeout(serverDeadline).Raw(&n, postgresBackend.heavy(tg), gormbatch.As("heavy")).Wait()
		if r := rep.Results[0]; r.Status != gormbatch.TimedOut || !r.Killed || n != -1 {
			t.Fatalf("heavy: %v killed %v dest %d: %v", r.Status, r.Killed, n, r.Err)
		}
		t0 := time.Now()
		outside.gone(t, tg, leaveWithin)
		left = append(left, time.Since(t0))
		reclaimed(t, s.p, s.sqlDB)
	}
	if last := pid(); last != first {
		t.Errorf("PROMISE 3: backend %d before 20 cancels, %d after", first, last)
	}
	slices.Sort(left)
	t.Logf("a cancelled statement left pg_stat_activity within %v of Wait (max %v over 20)", left[len(left)/2], left[len(left)-1])
}

// A statement stopped by the user's own statement_timeout, before the
// batch's deadline, is the query's own failure (SQLSTATE 57014, not sent by
// the plugin): Failed, not Killed.
func TestPostgresOwnStatementTimeout(t *testing.T) {
	s := postgresBackend.open(t, postgresDSN()+" statement_timeout=100", &gorm.Config{Logger: logger.Discard})
	s.p = use(t, s.DB, gormbatch.Config{})
	n := int64(-1)
	rep, err := gormbatch.From(s.DB).Timeout(10*time.Second).Raw(&n, postgresBackend.heavy(tag(t)), gormbatch.As("heavy")).Wait()
	r := status(t, rep, "heavy", gormbatch.Failed)
	var pe *pgconn.PgError
	if r.Killed || n != -1 || !errors.As(err, &pe) || pe.Code != "57014" || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("killed %v, dest %d, err %v", r.Killed, n, err)
	}
}

// Promise 1 when the application configured pgx's own cancel handler with
// a long DeadlineDelay: once the budget is spent, the plugin closes the
// socket itself instead of waiting for pgx (10 s here), on a stalled
// network. A Go closure is cut at deadline + KillGrace; a finder is handed
// off and cut at ReclaimTimeout.
func TestPostgresPgxCancelHandlerStalled(t *testing.T) {
	_, target := postgresBackend.via(t, postgresDSN(), "")
	px := newFaultProxy(t, "postgres", target)
	dsn, _ := postgresBackend.via(t, postgresDSN(), px.Addr())
	s := openPostgresWith(t, "GORMBATCH_POSTGRES_DSN", dsn, &gorm.Config{Logger: logger.Discard}, func(c *pgx.ConnConfig) {
		c.BuildContextWatcherHandler = func(pg *pgconn.PgConn) ctxwatch.Handler {
			return &pgconn.CancelRequestContextWatcherHandler{Conn: pg, DeadlineDelay: 10 * time.Second}
		}
	})
	s.p = use(t, s.DB, faultConfig)
	if !batchWorks(t, s) {
		t.FailNow()
	}
	reclaimed(t, s.p, s.sqlDB)
	const timeout = 300 * time.Millisecond
	for _, closure := range []bool{true, false} {
		tg := tag(t)
		px.On(strings.TrimSpace(mark(tg)), stallAllAfter, 1, 0) // the cancel request stalls too
		n := int64(-1)
		b := gormbatch.From(s.DB).Timeout(timeout)
		if closure {
			b.Go("victim", func(tx *gorm.DB) error { return tx.Raw(postgresBackend.medium(tg)).Scan(&n).Error })
		} else {
			b.Raw(&n, postgresBackend.medium(tg), gormbatch.As("victim"))
		}
		o := waitWithin(t, b, timeout+faultGrace+faultMargin, func() { px.CutAll(); px.Resume() })
		t0 := time.Now()
		reclaimed(t, s.p, s.sqlDB)
		t.Logf("closure %v: Wait %v, connection back %v later; %+v", closure, o.elapsed, time.Since(t0), s.p.Stats())
		if time.Since(t0) > faultReclaim+faultMargin {
			t.Errorf("the handed-off connection was held %v, ReclaimTimeout %v", time.Since(t0), faultReclaim)
		}
		status(t, o.rep, "victim", gormbatch.TimedOut)
		px.Resume()
	}
	if !batchWorks(t, s) {
		t.Error("no healthy batch after the stalls")
	}
}

func pgbouncerDSN() string {
	if dsn := os.Getenv("GORMBATCH_PGBOUNCER_DSN"); dsn != "" {
		return dsn
	}
	return "host=127.0.0.1 port=6432 user=postgres dbname=test sslmode=disable default_query_exec_mode=simple_protocol"
}

// serverNames records the server names the plugin's events carry.
type serverNames struct {
	gormbatch.NopHook
	mu    sync.Mutex
	names map[string]bool
}

func (h *serverNames) Event(_ context.Context, _ gormbatch.QueryInfo, e gormbatch.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e.Server != "" {
		h.names[e.Server] = true
	}
}

// Through PgBouncer (1.18 or newer, transaction mode): the plugin sees the
// pooler (the connection's pid is PgBouncer's), its cancel request is
// routed to the statement it is meant for and stops it on the server, the
// client connection is kept, and another client's statements, sharing the
// same server connections, are never hit. GORMBATCH_PGBOUNCER_DSN; .ci/run
// installs and starts PgBouncer and sets GORMBATCH_REQUIRE_PGBOUNCER.
func TestPostgresPgBouncer(t *testing.T) {
	names := &serverNames{names: map[string]bool{}}
	pc, err := pgx.ParseConfig(pgbouncerDSN())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(context.Background(), pc)
	if err != nil {
		msg := "PgBouncer not reachable (set GORMBATCH_PGBOUNCER_DSN; .ci/run starts one): " + redactPostgres(err.Error())
		if required("GORMBATCH_REQUIRE_PGBOUNCER") {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	conn.Close(context.Background())
	s := postgresBackend.open(t, pgbouncerDSN(), &gorm.Config{Logger: logger.Discard})
	s.p = use(t, s.DB, gormbatch.Config{Hooks: []gormbatch.Hook{names}})
	direct := postgresBackend.open(t, postgresDSN(), &gorm.Config{Logger: logger.Discard})

	// Another client shares the pooler's server connections and runs
	// statements all along; none may be hit.
	other := postgresBackend.open(t, pgbouncerDSN(), &gorm.Config{Logger: logger.Discard})
	var otherRuns, otherHits atomic.Int64
	var otherErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var v int64
			if err := other.Raw(postgresBackend.edge).Scan(&v).Error; err != nil {
				otherHits.Add(1)
				otherErr.Store(err)
			}
			otherRuns.Add(1)
		}
	}()

	tg := tag(t)
	before := -1
	for i := range 10 {
		var users []User
		n := int64(-1)
		rep, _ := gormbatch.From(s.DB).Timeout(serverDeadline).
			Find(&users, "id <= 3", gormbatch.As("fast")).
			Raw(&n, postgresBackend.heavy(tg), gormbatch.As("heavy")).
			Wait()
		status(t, rep, "fast", gormbatch.Done)
		if r := status(t, rep, "heavy", gormbatch.TimedOut); !r.Killed || n != -1 {
			t.Fatalf("heavy: killed %v, dest %d", r.Killed, n)
		}
		direct.gone(t, tg, leaveWithin)
		reclaimed(t, s.p, s.sqlDB)
		if i == 0 {
			before = int(s.connects.Load())
		}
	}
	close(stop)
	wg.Wait()
	if d := int(s.connects.Load()) - before; d != 0 {
		t.Errorf("PROMISE 3: %d new client connections through the pooler", d)
	}
	t.Logf("servers seen: %v; the other client ran %d statements", names.names, otherRuns.Load())
	if otherHits.Load() > 0 {
		t.Errorf("another client's statement was hit %d times: %v", otherHits.Load(), otherErr.Load())
	}
	pooled := false
	for n := range names.names {
		pooled = pooled || strings.HasSuffix(n, "behind a pooler")
	}
	if !pooled {
		t.Errorf("the pooler was not detected: %v", names.names)
	}
	// The stop never reaches another statement of the same client either.
	s.sqlDB.SetMaxOpenConns(1)
	s.sqlDB.SetMaxIdleConns(1)
	neverHits(t, s, postgresBackend)
}
