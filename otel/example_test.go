package gormbatchotel_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gormbatch/gormbatch"
	gormbatchotel "github.com/gormbatch/gormbatch/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	"gorm.io/plugin/opentelemetry/tracing"
)

// Register the hook, here with the global tracer and meter providers that
// the application sets up once (otel.SetTracerProvider,
// otel.SetMeterProvider), next to GORM's tracing plugin, whose statement
// spans nest under the query spans.
func ExampleNewHook() {
	db, err := gorm.Open(sqlite.Open("shop.db"), &gorm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := db.Use(tracing.NewPlugin()); err != nil {
		log.Fatal(err)
	}
	if err := db.Use(gormbatch.New(gormbatch.Config{
		Timeout: 300 * time.Millisecond,
		Hooks:   []gormbatch.Hook{gormbatchotel.NewHook()},
	})); err != nil {
		log.Fatal(err)
	}

	// In a request handler, ctx holds the request's span: the batch span
	// is its child.
	ctx := context.Background()
	var (
		active []User
		orders int64
	)
	rep, err := gormbatch.From(db.WithContext(ctx)).Name("dashboard").
		Find(&active, "active = ?", true, gormbatch.As("active users")).
		Count(&orders, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&Order{}) })).
		Wait()
	if err != nil {
		log.Print(err)
	}
	fmt.Print(rep)
}

// The trace of a batch: its span, a child span per query, and under each
// query the spans of its statements from GORM's tracing plugin.
func Example() {
	// A tracer provider that keeps the spans in memory, to print them; an
	// application exports them instead (OTLP, stdout, ...).
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())

	dir, err := os.MkdirTemp("", "gormbatchotel")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "shop.db")), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		log.Fatal(err)
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	db.AutoMigrate(&User{}, &Order{})
	db.Create(&[]User{{Name: "ann", Active: true}, {Name: "bob"}})

	if err := db.Use(tracing.NewPlugin(tracing.WithTracerProvider(tp), tracing.WithoutMetrics())); err != nil {
		log.Fatal(err)
	}
	if err := db.Use(gormbatch.New(gormbatch.Config{
		Hooks: []gormbatch.Hook{gormbatchotel.NewHook(gormbatchotel.WithTracerProvider(tp))},
	})); err != nil {
		log.Fatal(err)
	}

	var (
		active []User
		orders int64
	)
	_, err = gormbatch.From(db).Name("dashboard").Timeout(time.Second).
		Find(&active, "active = ?", true, gormbatch.As("active users")).
		Count(&orders, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&Order{}) })).
		Wait()
	if err != nil {
		log.Fatal(err)
	}
	printTree(spans.Ended())
	// Output:
	// gormbatch.batch dashboard
	//   gormbatch.query Count orders (done)
	//     select orders
	//   gormbatch.query active users (done)
	//     select users
}

// printTree prints spans as a tree, children sorted by name, with each
// query's status.
func printTree(spans []sdktrace.ReadOnlySpan) {
	children := map[string][]sdktrace.ReadOnlySpan{}
	ids := map[string]bool{}
	for _, s := range spans {
		ids[s.SpanContext().SpanID().String()] = true
	}
	for _, s := range spans {
		parent := ""
		if ids[s.Parent().SpanID().String()] {
			parent = s.Parent().SpanID().String()
		}
		children[parent] = append(children[parent], s)
	}
	var walk func(parent, indent string)
	walk = func(parent, indent string) {
		kids := children[parent]
		slices.SortFunc(kids, func(a, b sdktrace.ReadOnlySpan) int { return strings.Compare(a.Name(), b.Name()) })
		for _, s := range kids {
			line := indent + s.Name()
			for _, kv := range s.Attributes() {
				if kv.Key == "gormbatch.query.status" {
					line += " (" + kv.Value.AsString() + ")"
				}
			}
			fmt.Println(line)
			walk(s.SpanContext().SpanID().String(), indent+"  ")
		}
	}
	walk("", "")
}
