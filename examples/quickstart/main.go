// Quickstart: a dashboard built from several reads run as one gormbatch
// batch on embedded SQLite. One read is deliberately slow; it is cancelled at
// the 300 ms deadline while the others keep their results.
//
//	go run ./examples/quickstart
package main

import (
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/gormbatch/gormbatch"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
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

func run(w io.Writer) error {
	dir, err := os.MkdirTemp("", "gormbatch-quickstart")
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

	plugin := gormbatch.New(gormbatch.Config{})
	if err := db.Use(plugin); err != nil {
		return err
	}
	defer plugin.Close()

	var (
		active   []User
		recent   []Order
		nOrders  int64
		topSpend struct{ UserID, Total int }
		slowSum  int64
	)
	start := time.Now()
	rep, err := gormbatch.From(db).
		Timeout(300*time.Millisecond).
		Find(&active, "active = ?", true, gormbatch.As("active users")).
		Go("recent orders", func(tx *gorm.DB) error {
			return tx.Order("id DESC").Limit(5).Find(&recent).Error
		}).
		Count(&nOrders, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&Order{}) })).
		Raw(&topSpend, "SELECT user_id, SUM(amount) AS total FROM orders GROUP BY user_id ORDER BY total DESC LIMIT 1",
			gormbatch.As("top spender")).
		// A report that would take seconds: cancelled at the deadline.
		Raw(&slowSum, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100000000) SELECT SUM(x) FROM c",
			gormbatch.As("slow report"), gormbatch.Optional()).
		Wait()
	fmt.Fprintf(w, "Wait returned after %v (deadline 300ms)\n\n", time.Since(start).Round(time.Millisecond))
	fmt.Fprint(w, rep)
	if err != nil {
		return fmt.Errorf("required query failed: %w", err)
	}
	fmt.Fprintf(w, "\n%d active users, %d orders, %d recent; top spender user %d (%d); slow report %d (untouched)\n",
		len(active), nOrders, len(recent), topSpend.UserID, topSpend.Total, slowSum)
	return nil
}

func seed(db *gorm.DB) error {
	if err := db.AutoMigrate(&User{}, &Order{}); err != nil {
		return err
	}
	users := make([]User, 50)
	for i := range users {
		users[i] = User{Name: fmt.Sprintf("user%02d", i+1), Active: i%3 != 0}
	}
	orders := make([]Order, 500)
	for i := range orders {
		orders[i] = Order{UserID: uint(i%50 + 1), Amount: (i * 37) % 200}
	}
	if err := db.Create(&users).Error; err != nil {
		return err
	}
	return db.Create(&orders).Error
}
