// Observability: one dashboard batch on embedded SQLite, seen three ways.
// The plugin's slog records (JSON, each naming the line of this file that
// added the query), its Report and Stats, and the OpenTelemetry trace: a
// span for the batch, one per query, and under each query the spans of its
// statements from GORM's tracing plugin. One read is deliberately slow and
// times out at the 300 ms deadline.
//
//	cd examples/observability && go run .
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/gormbatch/gormbatch"
	gormbatchotel "github.com/gormbatch/gormbatch/otel"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	"gorm.io/plugin/opentelemetry/tracing"
)

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

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run builds the database, runs the batch and writes every section to w.
func run(w io.Writer) error {
	dir, err := os.MkdirTemp("", "gormbatch-observability")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "shop.db")+"?_journal_mode=WAL&_busy_timeout=5000"),
		&gorm.Config{Logger: logger.Discard})
	if err != nil {
		return err
	}
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	sqlDB.SetMaxOpenConns(8)
	if err := seed(db); err != nil {
		return err
	}

	// Traces go to w when the provider shuts down (the batcher's timeout
	// is long, so they stay in their own section).
	exp, err := stdouttrace.New(stdouttrace.WithWriter(w))
	if err != nil {
		return err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Minute)))
	// GORM's tracing plugin: a span per statement, under its query's span.
	if err := db.Use(tracing.NewPlugin(tracing.WithTracerProvider(tp), tracing.WithoutMetrics())); err != nil {
		return err
	}
	p := gormbatch.New(gormbatch.Config{
		Logger: slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{AddSource: true, Level: slog.LevelDebug})),
		Hooks:  []gormbatch.Hook{gormbatchotel.NewHook(gormbatchotel.WithTracerProvider(tp))},
	})
	if err := db.Use(p); err != nil {
		return err
	}
	defer p.Close()

	fmt.Fprintln(w, "== slog records (JSON, Debug and up)")
	ctx, request := tp.Tracer("example").Start(context.Background(), "GET /dashboard")
	var (
		active   []User
		recent   []Order
		nUsers   int64
		topSpend struct{ UserID, Total int }
		slowSum  int64
	)
	rep, err := gormbatch.From(db.WithContext(ctx)).Name("dashboard").
		Timeout(300*time.Millisecond).
		Find(&active, "active = ?", true, gormbatch.As("active users")).
		Go("recent orders", func(tx *gorm.DB) error {
			return tx.Order("id DESC").Limit(5).Find(&recent).Error
		}).
		Count(&nUsers, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&User{}) })).
		Raw(&topSpend, "SELECT user_id, SUM(amount) AS total FROM orders GROUP BY user_id ORDER BY total DESC LIMIT 1",
			gormbatch.As("top spender")).
		// A report that would take seconds: cancelled at the deadline.
		Raw(&slowSum, slowReport, gormbatch.As("slow report"), gormbatch.Optional()).
		Wait()
	request.End()

	fmt.Fprintln(w, "\n== report")
	fmt.Fprint(w, rep)
	if err != nil {
		return fmt.Errorf("required query failed: %w", err)
	}
	fmt.Fprintf(w, "%d active of %d users, %d recent orders, top spender user %d\n",
		len(active), nUsers, len(recent), topSpend.UserID)

	fmt.Fprintln(w, "\n== plugin stats")
	fmt.Fprintf(w, "%+v\n", p.Stats())

	fmt.Fprintln(w, "\n== spans (stdouttrace, one JSON object each)")
	return tp.Shutdown(context.Background())
}

// slowReport counts to 100 million: seconds of work, interrupted at the
// deadline.
const slowReport = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100000000) SELECT SUM(x) FROM c"

func seed(db *gorm.DB) error {
	if err := db.AutoMigrate(&User{}, &Order{}); err != nil {
		return err
	}
	users := make([]User, 50)
	for i := range users {
		users[i] = User{Name: fmt.Sprintf("user%02d", i+1), Active: i%3 != 0}
	}
	if err := db.Create(&users).Error; err != nil {
		return err
	}
	orders := make([]Order, 500)
	for i := range orders {
		orders[i] = Order{UserID: uint(i%50 + 1), Amount: (i * 37) % 200}
	}
	return db.Create(&orders).Error
}
