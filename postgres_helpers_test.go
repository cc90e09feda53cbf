package gormbatch_test

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
)

// The PostgreSQL backend (gorm.io/driver/postgres on pgx). Tests read
// GORMBATCH_POSTGRES_DSN (default host=127.0.0.1 port=5432 user=postgres
// dbname=test sslmode=disable) and skip when no server answers, unless
// GORMBATCH_REQUIRE_POSTGRES is set (.ci/run sets it).

// It is filled in by init: its functions refer back to it.
var postgresBackend = new(backend)

func init() {
	*postgresBackend = backend{
		name: "postgres",
		env:  "GORMBATCH_POSTGRES_DSN",
		dsn:  postgresDSN,
		open: func(t testing.TB, dsn string, gcfg *gorm.Config) *serverDB {
			return openPostgresDSN(t, "GORMBATCH_POSTGRES_DSN", dsn, gcfg)
		},
		heavy: func(tag string) string { // ~2.5 s
			return "SELECT count(*) FROM generate_series(1,30000000)" + mark(tag)
		},
		medium: func(tag string) string { // ~0.8 s (3e6 rows took 0.2 s here: too close to 300 ms timeouts)
			return "SELECT count(*) FROM generate_series(1,10000000)" + mark(tag)
		},
		fast: func(tag string) string { return "SELECT 42::bigint" + mark(tag) },
		sleep: func(tag string, s float64) string {
			return fmt.Sprintf("SELECT 0::bigint FROM pg_sleep(%g)", s) + mark(tag)
		},
		running: func(db *gorm.DB, tag string) ([]int64, error) {
			var ids []int64
			err := db.Raw("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE ? AND pid <> pg_backend_pid()", tagged(tag)).Scan(&ids).Error
			return ids, err
		},
		sessions: func(db *gorm.DB, tag string) ([]int64, error) {
			var ids []int64
			err := db.Raw("SELECT pid FROM pg_stat_activity WHERE query LIKE ? AND pid <> pg_backend_pid()", tagged(tag)).Scan(&ids).Error
			return ids, err
		},
		edge:        "SELECT count(*) FROM generate_series(1,50000)",
		edgeWant:    50000,
		control:     postgresControl,
		stopOutside: func(db *gorm.DB, id int64) error { return db.Exec("SELECT pg_cancel_backend(?)", id).Error },
		endOutside:  func(db *gorm.DB, id int64) error { return db.Exec("SELECT pg_terminate_backend(?)", id).Error },
		sessionID:   "SELECT pg_backend_pid()",
		via: func(t testing.TB, dsn, addr string) (string, string) {
			pc, err := pgx.ParseConfig(dsn)
			if err != nil {
				t.Fatalf("GORMBATCH_POSTGRES_DSN: %s", redactPostgres(err.Error()))
			}
			target := net.JoinHostPort(pc.Host, fmt.Sprint(pc.Port))
			loopbackOnly(t, "tcp", target)
			host, port, _ := net.SplitHostPort(addr)
			return dsn + " host=" + host + " port=" + port + " sslmode=disable", target
		},
		setupSQL: "SHOW server_version",
		stopMark: "CancelRequest",
	}
}

// postgresControl: see backend.control.
func postgresControl(t testing.TB, s *serverDB, query string, n int) (hits int) {
	ctx := context.Background()
	conn, err := s.sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var pg *pgconn.PgConn
	conn.Raw(func(dc any) error { pg = dc.(*stdlib.Conn).Conn().PgConn(); return nil })
	var v int64
	for range n {
		conn.QueryRowContext(ctx, query).Scan(&v)
		done := make(chan struct{})
		go func() { defer close(done); pg.CancelRequest(ctx) }()
		if err := conn.QueryRowContext(ctx, query).Scan(&v); err != nil {
			hits++
		}
		<-done
	}
	return hits
}

func postgresDSN() string {
	if dsn := os.Getenv("GORMBATCH_POSTGRES_DSN"); dsn != "" {
		return dsn
	}
	return "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable"
}

// openPostgresDSN opens dsn without the plugin, counting its connections.
func openPostgresDSN(t testing.TB, env, dsn string, gcfg *gorm.Config) *serverDB {
	return openPostgresWith(t, env, dsn, gcfg, nil)
}

// openPostgresWith is openPostgresDSN with pgx's configuration changed by
// tune (if not nil).
func openPostgresWith(t testing.TB, env, dsn string, gcfg *gorm.Config, tune func(*pgx.ConnConfig)) *serverDB {
	t.Helper()
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("%s: %s", env, redactPostgres(err.Error()))
	}
	if tune != nil {
		tune(pc)
	}
	s := &serverDB{be: postgresBackend, connects: new(atomic.Int64)}
	s.sqlDB = sql.OpenDB(counting{stdlib.GetConnector(*pc), s.connects})
	t.Cleanup(func() { s.sqlDB.Close() })
	s.sqlDB.SetMaxOpenConns(8)
	s.sqlDB.SetMaxIdleConns(8)
	if err := s.sqlDB.Ping(); err != nil {
		unreachable(t, "PostgreSQL", env, "GORMBATCH_REQUIRE_POSTGRES", err)
	}
	s.DB, err = gorm.Open(postgres.New(postgres.Config{Conn: s.sqlDB}), gcfg)
	if err != nil {
		t.Fatal(redactPostgres(err.Error()))
	}
	seed(t, s.DB)
	return s
}

// redactPostgres keeps the DSN's password out of test output.
func redactPostgres(s string) string {
	if pc, err := pgx.ParseConfig(postgresDSN()); err == nil && pc.Password != "" {
		s = strings.ReplaceAll(s, pc.Password, "***")
	}
	return s
}
