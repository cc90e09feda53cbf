// Quickstart: a dashboard built from several reads run as one gormbatch
// batch on embedded SQLite. One read is deliberately slow; it is cancelled at
// the 300 ms deadline while the others keep their results.
//
//	go run ./examples/quickstart
package main

import (
	"fmt"
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
	dir, err := os.MkdirTemp("", "gormbatch-quickstart")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "shop.db")+"?_journal_mode=WAL&_busy_timeout=5000"),
		&gorm.Config{Logger: logger.Discard})
	if err != nil {
		log.Fatal(err)
	}
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	sqlDB.SetMaxOpenConns(8)
	seed(db)

	if err := db.Use(gormbatch.New(gormbatch.Config{})); err != nil {
		log.Fatal(err)
	}

	var (
		active   []User
		recent   []Order
		nUsers   int64
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
		Go("user count", func(tx *gorm.DB) error {
			return tx.Model(&User{}).Count(&nUsers).Error
		}).
		Raw(&topSpend, "SELECT user_id, SUM(amount) AS total FROM orders GROUP BY user_id ORDER BY total DESC LIMIT 1",
			gormbatch.As("top spender")).
		// A report that would take seconds: cancelled at the deadline.
		Raw(&slowSum, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100000000) SELECT SUM(x) FROM c",
			gormbatch.As("slow report"), gormbatch.Optional()).
		Wait()
	fmt.Printf("Wait returned after %v (deadline 300ms)\n\n", time.Since(start).Round(time.Millisecond))
	fmt.Print(rep)
	if err != nil {
		log.Fatalf("required query failed: %v", err)
	}
	fmt.Printf("\n%d active of %d users; %d recent orders; top spender user %d (%d); slow report %d (untouched)\n",
		len(active), nUsers, len(recent), topSpend.UserID, topSpend.Total, slowSum)
}

func seed(db *gorm.DB) {
	if err := db.AutoMigrate(&User{}, &Order{}); err != nil {
		log.Fatal(err)
	}
	users := make([]User, 50)
	for i := range users {
		users[i] = User{Name: fmt.Sprintf("user%02d", i+1), Active: i%3 != 0}
	}
	db.Create(&users)
	orders := make([]Order, 500)
	for i := range orders {
		orders[i] = Order{UserID: uint(i%50 + 1), Amount: (i * 37) % 200}
	}
	db.Create(&orders)
}
