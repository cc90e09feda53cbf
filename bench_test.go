package gormbatch_test

import (
	"context"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	"golang.org/x/sync/errgroup"
	"gorm.io/gorm"
)

// Micro-benchmarks for the scheduler and the callbacks:
//
//	go test -run '^$' -bench . -benchmem
//
// The side-by-side benchmark against the naive way lives in bench/.

// BenchmarkScheduler: a batch of 8 closures that touch no database.
func BenchmarkScheduler(b *testing.B) {
	db, _ := openSQLite(b, gormbatch.Config{})
	nop := func(*gorm.DB) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		bt := gormbatch.From(db).Timeout(time.Second)
		for range 8 {
			bt = bt.Go("nop", nop)
		}
		if _, err := bt.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCallbacksOutsideBatch: what the plugin's callbacks cost a query
// that is not in a batch (a context lookup).
func BenchmarkCallbacksOutsideBatch(b *testing.B) {
	db, _ := openSQLite(b, gormbatch.Config{})
	b.ReportAllocs()
	for b.Loop() {
		var u User
		if err := db.First(&u, 7).Error; err != nil {
			b.Fatal(err)
		}
	}
}

func batch8(b *testing.B, db *gorm.DB) {
	b.ReportAllocs()
	var us [8]User
	for b.Loop() {
		bt := gormbatch.From(db).Timeout(time.Second)
		for i := range us {
			bt = bt.First(&us[i], i+1)
		}
		if _, err := bt.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}

func naive8(b *testing.B, db *gorm.DB) {
	b.ReportAllocs()
	var us [8]User
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		g, ctx := errgroup.WithContext(ctx)
		for i := range us {
			g.Go(func() error { return db.WithContext(ctx).First(&us[i], i+1).Error })
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		cancel()
	}
}

// Batches of 8 point reads through the plugin, and the same with errgroup +
// WithContext on a pool without the plugin.
func BenchmarkBatch8SQLite(b *testing.B) {
	db, _ := openSQLite(b, gormbatch.Config{})
	batch8(b, db)
}

func BenchmarkNaive8SQLite(b *testing.B) {
	db, _ := openSQLite(b, gormbatch.Config{ServerCancel: gormbatch.ServerCancelOff})
	naive8(b, db)
}

func BenchmarkBatch8MariaDB(b *testing.B) {
	batch8(b, openServer(b, mysqlBackend, gormbatch.Config{}).DB)
}

func BenchmarkNaive8MariaDB(b *testing.B) {
	naive8(b, openServer(b, mysqlBackend, gormbatch.Config{}).DB)
}

func BenchmarkBatch8Postgres(b *testing.B) {
	batch8(b, openServer(b, postgresBackend, gormbatch.Config{}).DB)
}

func BenchmarkNaive8Postgres(b *testing.B) {
	naive8(b, openServer(b, postgresBackend, gormbatch.Config{}).DB)
}
