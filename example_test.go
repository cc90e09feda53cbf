package gormbatch_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gormbatch/gormbatch"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Three reads of a page run concurrently under a 300 ms deadline. The slow
// one is cancelled; the others keep their results, and the slow one's
// destination is untouched.
func Example() {
	dir, _ := os.MkdirTemp("", "gormbatch-example")
	defer os.RemoveAll(dir)
	db, _ := gorm.Open(sqlite.Open(filepath.Join(dir, "db.sqlite")), &gorm.Config{Logger: logger.Discard})
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	db.AutoMigrate(&User{})
	db.Create(&[]User{{Name: "ann", Active: true}, {Name: "bob"}, {Name: "cid", Active: true}})

	// Register once.
	if err := db.Use(gormbatch.New(gormbatch.Config{})); err != nil {
		panic(err)
	}

	var active []User
	var total int64
	var report = int64(-1)
	rep, err := gormbatch.From(db.WithContext(context.Background())).
		Timeout(300*time.Millisecond).
		Find(&active, "active = ?", true, gormbatch.As("active")).
		Go("total", func(tx *gorm.DB) error { return tx.Model(&User{}).Count(&total).Error }).
		Raw(&report, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 1e9) SELECT SUM(x) FROM c",
			gormbatch.As("slow report")).
		Wait()

	for _, r := range rep.Results {
		fmt.Println(r.Name, r.Status)
	}
	fmt.Println(len(active), total, report)
	fmt.Println(err)
	// Output:
	// active done
	// total done
	// slow report timed out
	// 2 3 -1
	// gormbatch: 1 required query not done: slow report (timed out: batch deadline 300ms: context deadline exceeded)
}
