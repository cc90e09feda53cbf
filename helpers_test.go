package gormbatch_test

import (
	"database/sql"
	"fmt"
	"io"
	"log"
	"path/filepath"
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
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "test.db") + "?_busy_timeout=5000&_journal_mode=WAL"
	db, err := gorm.Open(sqlite.New(sqlite.Config{DriverName: sqliteDriver, DSN: dsn}),
		&gorm.Config{Logger: logger.Discard})
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
	users := make([]User, seedUsers)
	for i := range users {
		users[i] = User{Name: fmt.Sprintf("user%03d", i+1), Active: i%2 == 0,
			Orders: []Order{{Amount: i}, {Amount: 2 * i}}}
	}
	if err := db.Create(&users).Error; err != nil {
		t.Fatal(err)
	}
	if err := db.Use(gormbatch.New(cfg)); err != nil {
		t.Fatal(err)
	}
	return db, sqlDB
}

// slow is a query on users that naps ms per row: about seedUsers*ms in all.
func slow(db *gorm.DB, ms int) *gorm.DB {
	return db.Table("users").Where("nap(?) = 1", ms)
}

// checkPool asserts every connection is back in the pool.
func checkPool(t testing.TB, sqlDB *sql.DB) {
	t.Helper()
	if n := sqlDB.Stats().InUse; n != 0 {
		t.Fatalf("InUse = %d after Wait, want 0", n)
	}
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
