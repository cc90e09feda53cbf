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

	"github.com/go-sql-driver/mysql"
	gormmysql "gorm.io/driver/mysql"
	"gorm.io/gorm"
)

// The MariaDB/MySQL backend. Tests read GORMBATCH_MYSQL_DSN (default
// root@tcp(127.0.0.1:3306)/test) and skip when no server answers, unless
// GORMBATCH_REQUIRE_MYSQL is set (.ci/run sets it). The CPU-bound queries
// use MariaDB's Sequence engine (seq_1_to_N).

// It is filled in by init: its functions refer back to it.
var mysqlBackend = new(backend)

func init() {
	*mysqlBackend = backend{
		name: "mysql",
		env:  "GORMBATCH_MYSQL_DSN",
		dsn:  mysqlDSN,
		open: func(t testing.TB, dsn string, gcfg *gorm.Config) *serverDB {
			return openMySQLDSN(t, "GORMBATCH_MYSQL_DSN", dsn, gcfg)
		},
		heavy: func(tag string) string { // ~7 s
			return "SELECT COUNT(*) FROM seq_1_to_1000 a, seq_1_to_1000 b, seq_1_to_200 c" + mark(tag)
		},
		medium: func(tag string) string { // ~1.2 s
			return "SELECT COUNT(*) FROM seq_1_to_1000 a, seq_1_to_1000 b, seq_1_to_40 c" + mark(tag)
		},
		fast:        func(tag string) string { return "SELECT 42" + mark(tag) },
		sleep:       func(tag string, s float64) string { return fmt.Sprintf("SELECT SLEEP(%g)", s) + mark(tag) },
		running:     mysqlRunning,
		sessions:    mysqlRunning,
		edge:        "SELECT COUNT(*) FROM seq_1_to_1000 a, seq_1_to_50 b",
		edgeWant:    50000,
		control:     mysqlControl,
		stopOutside: func(db *gorm.DB, id int64) error { return db.Exec(fmt.Sprintf("KILL QUERY %d", id)).Error },
		endOutside:  func(db *gorm.DB, id int64) error { return db.Exec(fmt.Sprintf("KILL CONNECTION %d", id)).Error },
		sessionID:   "SELECT CONNECTION_ID()",
		via: func(t testing.TB, dsn, addr string) (string, string) {
			mc, err := mysql.ParseDSN(dsn)
			if err != nil {
				t.Fatalf("GORMBATCH_MYSQL_DSN: %s", redact(err))
			}
			target := mc.Addr
			loopbackOnly(t, mc.Net, target)
			mc.Addr = addr
			return mc.FormatDSN(), target
		},
		setupSQL: "SELECT VERSION()",
		stopMark: "KILL QUERY ",
	}
}

// mysqlControl: see backend.control.
func mysqlControl(t testing.TB, s *serverDB, query string, n int) (hits int) {
	ctx := context.Background()
	admin, err := sql.Open("mysql", mysqlDSN())
	if err != nil {
		t.Fatal(redact(err))
	}
	defer admin.Close()
	conn, err := s.sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var id, v int64
	if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	for range n {
		conn.QueryRowContext(ctx, query).Scan(&v)
		done := make(chan struct{})
		go func() { defer close(done); admin.ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", id)) }()
		if err := conn.QueryRowContext(ctx, query).Scan(&v); err != nil {
			hits++
		}
		<-done
	}
	return hits
}

func mysqlRunning(db *gorm.DB, tag string) ([]int64, error) {
	var ids []int64
	err := db.Raw("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()", tagged(tag)).Scan(&ids).Error
	return ids, err
}

func mysqlDSN() string {
	if dsn := os.Getenv("GORMBATCH_MYSQL_DSN"); dsn != "" {
		return dsn
	}
	return "root@tcp(127.0.0.1:3306)/test"
}

// openMySQLDSN opens dsn without the plugin, counting its connections; env
// names the DSN's variable for the skip message.
func openMySQLDSN(t testing.TB, env, dsn string, gcfg *gorm.Config) *serverDB {
	t.Helper()
	mc, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatalf("%s: %s", env, redact(err))
	}
	connector, err := mysql.NewConnector(mc)
	if err != nil {
		t.Fatalf("%s: %s", env, redact(err))
	}
	s := &serverDB{be: mysqlBackend, connects: new(atomic.Int64)}
	s.sqlDB = sql.OpenDB(counting{connector, s.connects})
	t.Cleanup(func() { s.sqlDB.Close() })
	s.sqlDB.SetMaxOpenConns(8)
	s.sqlDB.SetMaxIdleConns(8)
	if err := s.sqlDB.Ping(); err != nil {
		unreachable(t, "MariaDB/MySQL", env, "GORMBATCH_REQUIRE_MYSQL", err)
	}
	s.DB, err = gorm.Open(gormmysql.New(gormmysql.Config{Conn: s.sqlDB}), gcfg)
	if err != nil {
		t.Fatal(redact(err))
	}
	seed(t, s.DB)
	return s
}

// loopbackOnly skips a proxy test unless the server is on loopback TCP.
func loopbackOnly(t testing.TB, network, addr string) {
	t.Helper()
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); network != "tcp" || err != nil || host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		t.Skipf("the fault proxy only runs against a server on loopback TCP, not %s %s", network, addr)
	}
}

// unreachable skips a server test, or fails it when require is set.
func unreachable(t testing.TB, server, env, require string, err error) {
	t.Helper()
	msg := fmt.Sprintf("%s not reachable (set %s; .ci/run starts one): %v", server, env, redact(err))
	if required(require) {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// redact keeps passwords out of test output.
func redact(err error) string {
	s := err.Error()
	for _, dsn := range []string{mysqlDSN(), replicaDSN()} {
		if cfg, perr := mysql.ParseDSN(dsn); perr == nil && cfg.Passwd != "" {
			s = strings.ReplaceAll(s, cfg.Passwd, "***")
		}
	}
	return redactPostgres(s)
}

// isMariaDB reports whether the test server is MariaDB.
func isMariaDB(db *gorm.DB) bool {
	var version string
	db.Raw("SELECT VERSION()").Scan(&version)
	return strings.Contains(strings.ToLower(version), "mariadb")
}
