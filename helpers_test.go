package gormbatch_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/gormbatch/gormbatch"
	"github.com/mattn/go-sqlite3"
	"go.uber.org/goleak"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Shared test helpers and the SQLite backend. The server backends have
// their own helper files: mysql_helpers_test.go, postgres_helpers_test.go.
// Test comments name the README's promise they check: 1 bounded latency,
// 2 connections come back, 3 cancelled means stopped, 4 nothing
// half-written.

func TestMain(m *testing.M) {
	// The fault tests cut and stall connections on purpose; the driver's
	// log line for each ("unexpected EOF", "closing bad idle connection")
	// is noise. Test failures report the errors themselves.
	mysql.SetLogger(log.New(io.Discard, "", 0))
	// dbresolver's prepared-statement store starts gorm's LRU cleaner, whose
	// goroutine never exits by design (gorm internal/lru: "done channel is
	// never closed"). It is not ours; everything else must be gone.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("gorm.io/gorm/internal/lru.NewLRU[...].func1"))
}

type User struct {
	ID     uint
	Name   string
	Active bool
	Orders []Order
}

type Order struct {
	ID     uint
	UserID uint
	Amount int
}

// Boom is a User whose AfterFind hook panics.
type Boom struct {
	ID   uint
	Name string
}

func (Boom) TableName() string { return "users" }

func (*Boom) AfterFind(*gorm.DB) error { panic("boom in AfterFind") }

const seedUsers = 100

// seed fills users (ids 1..100, user001.., every other active) and orders.
func seed(t testing.TB, db *gorm.DB) {
	t.Helper()
	if err := db.AutoMigrate(&User{}, &Order{}); err != nil {
		t.Fatal(err)
	}
	var n, m int64
	if db.Model(&User{}).Count(&n); n == seedUsers {
		if db.Model(&Order{}).Count(&m); m == 2*seedUsers {
			return
		}
	}
	db.Exec("DELETE FROM orders")
	db.Exec("DELETE FROM users")
	users := make([]User, seedUsers)
	for i := range users {
		users[i] = User{ID: uint(i + 1), Name: fmt.Sprintf("user%03d", i+1), Active: i%2 == 0,
			Orders: []Order{{Amount: i}, {Amount: 2 * i}}}
	}
	if err := db.Create(&users).Error; err != nil {
		t.Fatal(err)
	}
}

// quiet is the Logger of test plugins: records go to the test log only
// with -v, so expected warnings (cut sockets, panics) are not noise.
func quiet(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// use registers a plugin with cfg on db (with a quiet Logger unless cfg has
// one) and closes it at the end of the test.
func use(t testing.TB, db *gorm.DB, cfg gormbatch.Config) *gormbatch.Plugin {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet(t)
	}
	p := gormbatch.New(cfg)
	if err := db.Use(p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// sqliteDriver is go-sqlite3 with nap(ms): it sleeps ms milliseconds and
// returns 1. SQLite checks for interrupts between rows, so a query calling
// nap per row is slow yet cancellable.
const sqliteDriver = "sqlite3_gormbatch"

func init() {
	sql.Register(sqliteDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		return c.RegisterFunc("nap", func(ms int64) int64 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
			return 1
		}, false)
	}})
}

// openSQLite opens a seeded file database with the plugin registered.
func openSQLite(t testing.TB, cfg gormbatch.Config) (*gorm.DB, *sql.DB) {
	db, sqlDB := openSQLitePlain(t)
	use(t, db, cfg)
	return db, sqlDB
}

// openSQLitePlain opens a seeded file database without the plugin.
func openSQLitePlain(t testing.TB) (*gorm.DB, *sql.DB) {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "test.db") + "?_busy_timeout=5000&_journal_mode=WAL"
	db, err := gorm.Open(sqlite.New(sqlite.Config{DriverName: sqliteDriver, DSN: dsn}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	sqlDB.SetMaxOpenConns(8)
	t.Cleanup(func() { sqlDB.Close() })
	seed(t, db)
	return db, sqlDB
}

// slow is a query on users that naps ms per row: about seedUsers*ms in all.
func slow(db *gorm.DB, ms int) *gorm.DB {
	return db.Table("users").Where("nap(?) = 1", ms)
}

// checkPool asserts every connection is back in the pool (promise 2).
func checkPool(t testing.TB, sqlDB *sql.DB) {
	t.Helper()
	if n := sqlDB.Stats().InUse; n != 0 {
		t.Fatalf("InUse = %d after Wait, want 0", n)
	}
}

// reclaimed waits for the plugin to have every handed-off connection back
// (Stats.Reclaiming 0; bounded by ReclaimTimeout), then checks the pool.
func reclaimed(t testing.TB, p *gormbatch.Plugin, sqlDB *sql.DB) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for p.Stats().Reclaiming > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("handed-off connections not back after 15s: %+v", p.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	checkPool(t, sqlDB)
}

func status(t testing.TB, rep *gormbatch.Report, name string, want gormbatch.Status) gormbatch.Result {
	t.Helper()
	r, ok := rep.Get(name)
	if !ok {
		t.Fatalf("no result %q in\n%v", name, rep)
	}
	if r.Status != want {
		t.Fatalf("%s: status %v, want %v (err %v)\n%v", name, r.Status, want, r.Err, rep)
	}
	return r
}

// counting wraps a connector and counts the physical connections it opens
// (the plugin's kill connections included, as they use the same
// connector): a reconnect shows up here whatever else the server serves.
type counting struct {
	driver.Connector
	n *atomic.Int64
}

func (c counting) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err == nil {
		c.n.Add(1)
	}
	return conn, err
}

// serverDB is a test pool on a server backend, and what the tests check on
// it.
type serverDB struct {
	*gorm.DB
	be       *backend
	sqlDB    *sql.DB
	p        *gormbatch.Plugin // nil without the plugin
	connects *atomic.Int64     // physical connections opened (kill connections included)
}

// backend is a database server the server tests run on: MariaDB
// (mysql_helpers_test.go) or PostgreSQL (postgres_helpers_test.go).
type backend struct {
	name string
	env  string // the DSN's variable
	dsn  func() string
	// open opens dsn (seeded, 8 connections) without the plugin, or skips
	// the test when no server answers.
	open func(t testing.TB, dsn string, gcfg *gorm.Config) *serverDB
	// heavy is a CPU-bound query of seconds, medium of about a
	// second, fast answers at once; each carries tag, and returns one
	// int64.
	heavy, medium, fast func(tag string) string
	// sleep returns a query that sleeps s seconds (int64 result).
	sleep func(tag string, s float64) string
	// edge is a query of a few ms whose result is edgeWant.
	edge     string
	edgeWant int64
	// control runs query n times on one connection of s, each time
	// stopping the session as soon as the statement returned without
	// waiting for the stop's answer, and running query again at once; it
	// returns how many of those second runs were hit: the control of the
	// stop-safety test.
	control func(t testing.TB, s *serverDB, query string, n int) (hits int)
	// running returns the ids (thread ids, pids) of the statements tagged
	// tag the server runs, as seen from a session of db; sessions those of
	// the sessions whose statement, running or not, is tagged tag.
	running, sessions func(db *gorm.DB, tag string) ([]int64, error)
	// stopOutside stops statement id from outside the plugin (KILL QUERY,
	// pg_cancel_backend); sessionID is the id of db's connection.
	stopOutside func(db *gorm.DB, id int64) error
	// endOutside ends session id from outside (KILL CONNECTION,
	// pg_terminate_backend).
	endOutside func(db *gorm.DB, id int64) error
	sessionID  string // SQL returning the session's id
	// For the fault proxy: via returns dsn pointing at addr (a loopback
	// proxy), or skips; setupSQL is the statement the plugin's server
	// cancel setup sends first; stopMark is what a stop sent through the
	// proxy contains.
	via      func(t testing.TB, dsn, addr string) (proxied, target string)
	setupSQL string
	stopMark string
}

// backends are the servers the server tests run on.
var backends = []*backend{mysqlBackend, postgresBackend}

// eachServer runs f for each server backend as a subtest.
func eachServer(t *testing.T, f func(t *testing.T, be *backend)) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) { f(t, be) })
	}
}

// openServer opens be's test server with the plugin registered.
func openServer(t testing.TB, be *backend, cfg gormbatch.Config) *serverDB {
	t.Helper()
	s := be.open(t, be.dsn(), &gorm.Config{Logger: logger.Discard})
	s.p = use(t, s.DB, cfg)
	return s
}

// gone waits up to d for statements tagged tag to leave the server
// (promise 3), and fails the test with what is left if they do not. A
// stopped statement leaves the process list just after it answered (later
// on a busy server), hence the wait.
func (s *serverDB) gone(t testing.TB, tag string, d time.Duration) {
	t.Helper()
	err := within(d, func() error {
		ids, err := s.be.running(s.DB, tag)
		if err == nil && len(ids) > 0 {
			err = fmt.Errorf("sessions %v", ids)
		}
		return err
	})
	if err != nil {
		t.Errorf("PROMISE 3: statements tagged %s still on the server %v after Wait: %v", tag, d, err)
	}
}

// session waits up to d for a statement tagged tag to reach the server and
// returns its session id: for stops from outside the plugin.
func (s *serverDB) session(tag string, d time.Duration) (id int64, err error) {
	err = within(d, func() error {
		ids, err := s.be.sessions(s.DB, tag)
		if err == nil && len(ids) == 0 {
			return fmt.Errorf("no statement tagged %s within %v", tag, d)
		}
		if err == nil {
			id = ids[0]
		}
		return err
	})
	return id, err
}

// stopUntil stops the session running the statement tagged tag from
// outside the plugin (with stop), again every 20 ms until done is closed:
// a stop that reaches a session between two commands of one statement is
// ignored. It returns when done is closed, with the first stop's error
// (later ones fail once the session is gone).
func (s *serverDB) stopUntil(tag string, stop func(*gorm.DB, int64) error, done <-chan struct{}) error {
	id, err := s.session(tag, 10*time.Second)
	if err == nil {
		err = stop(s.DB, id)
	}
	if err != nil {
		return err
	}
	for {
		select {
		case <-done:
			return nil
		case <-time.After(20 * time.Millisecond):
			stop(s.DB, id)
		}
	}
}

// tag marks a test's statements so the server's process list finds them.
func tag(t testing.TB) string {
	return strings.ReplaceAll(fmt.Sprintf("%s-%d", t.Name(), rand.Int64()), "/", "-")
}

func mark(tag string) string { return " /* gbtest:" + tag + " */" }

// tagged is the pattern that finds a statement carrying tag.
func tagged(tag string) string { return "%gbtest:" + tag + " */%" }

// required reports whether server tests must run (under .ci/run), for the
// backend's variable (GORMBATCH_REQUIRE_MYSQL, GORMBATCH_REQUIRE_POSTGRES).
func required(env string) bool { return os.Getenv(env) != "" }

// within runs f until it returns nil or d passes, and returns f's last
// error: for conditions the server reaches asynchronously (a killed
// statement leaving the process list).
func within(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// leaveRowsOpen is a Go closure with a bug: it reads one row and never
// closes its rows.
func leaveRowsOpen(tx *gorm.DB) error {
	rows, err := tx.Table("users").Rows()
	if err == nil {
		rows.Next()
	}
	return err
}
