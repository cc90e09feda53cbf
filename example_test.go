package gormbatch_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/gormbatch/gormbatch"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// The README's code blocks are these Examples' code, verbatim
// (TestReadmeCodeBlocks checks it).

// Product is the third table of the examples.
type Product struct {
	ID   uint
	Name string
}

// slowReportSQL takes seconds on SQLite.
const slowReportSQL = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 1e9) SELECT SUM(x) FROM c"

// exampleDB opens a small shop on embedded SQLite, and a function that
// removes it.
func exampleDB() (*gorm.DB, func()) {
	dir, err := os.MkdirTemp("", "gormbatch-example")
	if err != nil {
		log.Fatal(err)
	}
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "db.sqlite")), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		log.Fatal(err)
	}
	db.AutoMigrate(&User{}, &Order{}, &Product{})
	db.Create(&[]User{{Name: "ann", Active: true, Orders: []Order{{Amount: 5}, {Amount: 7}}}, {Name: "bob"}, {Name: "cid", Active: true}})
	db.Create(&[]Product{{Name: "tea"}, {Name: "cake"}})
	sqlDB, _ := db.DB()
	return db, func() { sqlDB.Close(); os.RemoveAll(dir) }
}

// A page of four reads under one 300 ms deadline: the users, the number of
// orders and the product names keep their results; the slow report is
// cancelled, and its destination is untouched.
func Example() {
	db, done := exampleDB()
	defer done()
	ctx := context.Background()

	plugin := gormbatch.New(gormbatch.Config{})
	if err := db.Use(plugin); err != nil { // once, at start-up
		log.Fatal(err)
	}
	defer plugin.Close() // when closing the database

	var users []User
	var orders int64
	var names []string
	report := -1.0
	rep, err := gormbatch.From(db.WithContext(ctx)).
		Timeout(300*time.Millisecond). // the earlier of this and ctx's deadline
		Find(&users, "active = ?", true).
		Count(&orders, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&Order{}) })).
		Pluck("name", &names, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&Product{}).Order("id") })).
		Raw(&report, slowReportSQL, gormbatch.As("slow report")).
		Wait()
	if err != nil {
		log.Printf("page degraded: %v", err) // names each required query not Done
	}
	for _, r := range rep.Results {
		fmt.Printf("%-14s %v\n", r.Name, r.Status)
	}
	fmt.Println(len(users), orders, names, report)
	// Output:
	// Find users     done
	// Count orders   done
	// Pluck products done
	// slow report    timed out
	// 2 2 [tea cake] -1
}

// The error names every required query that is not Done, once; errors.Is
// sees through it.
func ExampleError() {
	db, done := exampleDB()
	defer done()
	db.Use(gormbatch.New(gormbatch.Config{}))

	var n int64
	_, err := gormbatch.From(db).Timeout(100*time.Millisecond).
		Raw(&n, slowReportSQL, gormbatch.As("report")).
		Wait()
	fmt.Println(err)
	fmt.Println(errors.Is(err, context.DeadlineExceeded))
	// Output:
	// gormbatch: 1 required query not done: report (timed out: batch deadline 100ms: context deadline exceeded)
	// true
}

// Every setting, at its default.
func ExampleNew() {
	plugin := gormbatch.New(gormbatch.Config{
		Timeout:          0,                          // default batch deadline; 0: only the context's
		Concurrency:      0,                          // queries of one batch at once; 0: MaxInFlight, or 8 if unbounded
		MaxInFlight:      0,                          // batch queries at once across batches; 0: MaxOpenConns less a quarter, one left at least; <0: no bound
		ServerCancel:     gormbatch.ServerCancelAuto, // Off: the driver's cancel; Require: fail where server cancel cannot work
		KillGrace:        100 * time.Millisecond,     // clean-up budget after a deadline: Wait returns by deadline + KillGrace
		ReclaimTimeout:   10 * time.Second,           // how long the plugin keeps a handed-off connection waiting for its statement
		NoServerDeadline: false,                      // true: no server-side limit on reads (MariaDB, MySQL)
		Logger:           nil,                        // nil: warnings and errors to slog.Default()
		Hooks:            nil,                        // tracing and metrics: gormbatchotel.NewHook() (module gormbatch/otel)
	})
	fmt.Println(plugin.Name())
	// Output: gormbatch
}

// A JSON log of every query and kill, at the application's source line;
// and the plugin's counters.
func ExamplePlugin_Stats() {
	db, done := exampleDB()
	defer done()

	logger := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{
		AddSource: true,
		Level:     slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr { // keep the example's output stable
			switch a.Key {
			case slog.TimeKey, slog.SourceKey, "waited", "ran":
				return slog.Attr{}
			}
			return a
		},
	}))
	plugin := gormbatch.New(gormbatch.Config{Logger: logger})
	if err := db.Use(plugin); err != nil {
		log.Fatal(err)
	}

	var users []User
	gormbatch.From(db).Find(&users).Wait()

	st := plugin.Stats()
	fmt.Printf("%d batches: %d done, %d timed out; kills %d sent, %d late; %d cuts\n",
		st.Batches, st.Done, st.TimedOut, st.KillsSent, st.KillsLate, st.Cuts)
	// Output:
	// {"level":"DEBUG","msg":"gormbatch: query done","query":"Find users","status":"done","rows":3,"killed":false,"dialect":"sqlite"}
	// 1 batches: 1 done, 0 timed out; kills 0 sent, 0 late; 0 cuts
}

// A JSON log of every query and stop, each record at the application's
// source line.
func ExampleConfig_logger() {
	logger := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{AddSource: true, Level: slog.LevelDebug}))
	plugin := gormbatch.New(gormbatch.Config{Logger: logger})
	_ = plugin
}

// GoValue stores what a closure returns only if the query ends Done: for
// Scan, Row, Rows, or anything computed in Go.
func ExampleGoValue() {
	db, done := exampleDB()
	defer done()
	db.Use(gormbatch.New(gormbatch.Config{}))

	var total int
	b := gormbatch.From(db).Timeout(time.Second)
	gormbatch.GoValue(b, "total", &total, func(tx *gorm.DB) (int, error) {
		var v int
		err := tx.Raw("SELECT SUM(amount) FROM orders").Scan(&v).Error
		return v, err
	})
	if _, err := b.Wait(); err != nil {
		log.Fatal(err)
	}
	fmt.Println(total)
	// Output: 12
}
