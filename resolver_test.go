package gormbatch_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	gormmysql "gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	"gorm.io/plugin/dbresolver"
)

func replicaDSN() string {
	if dsn := os.Getenv("GORMBATCH_MYSQL_REPLICA_DSN"); dsn != "" {
		return dsn
	}
	return "root@tcp(127.0.0.1:3316)/test"
}

// With dbresolver sending reads to a replica (a second server), the batch
// pins its connection from the replica's pool and kills there.
func TestMySQLResolverReplica(t *testing.T) {
	replica, err := gorm.Open(gormmysql.Open(replicaDSN()), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		unreachable(t, fmt.Errorf("replica: %w", err))
	}
	replicaSQL, _ := replica.DB()
	defer replicaSQL.Close()
	if err := replica.AutoMigrate(&User{}); err != nil {
		t.Fatal(err)
	}
	replica.Exec("DELETE FROM users")
	replica.Create(&[]User{{ID: 1, Name: "on-replica"}, {ID: 2, Name: "on-replica"}})

	db, _, _ := openMySQL(t, gormbatch.Config{NoServerDeadline: true})
	var primaryPort, replicaPort int
	db.Raw("SELECT @@port").Scan(&primaryPort)
	replica.Raw("SELECT @@port").Scan(&replicaPort)
	if primaryPort == replicaPort {
		t.Logf("replica is a second database on the same server (port %d)", primaryPort)
	}
	if err := db.Use(dbresolver.Register(dbresolver.Config{
		// The replica pool is ours, so the test can close it.
		Replicas: []gorm.Dialector{gormmysql.New(gormmysql.Config{Conn: replicaSQL})},
	})); err != nil {
		t.Fatal(err)
	}

	tg := tag(t)
	var users []User
	var n int64
	run := func() *gormbatch.Report {
		users, n = nil, 0
		rep, _ := gormbatch.From(db).Timeout(200*time.Millisecond).
			Find(&users, gormbatch.As("fast")).
			Raw(&n, heavy(tg), gormbatch.As("heavy")).
			Wait()
		return rep
	}
	run() // warm up pools and kill connections
	settled(t, replica, tg)
	before := connections(t, replica)
	for range 3 {
		rep := run()
		status(t, rep, "fast", gormbatch.Done)
		if r := status(t, rep, "heavy", gormbatch.TimedOut); !r.Killed {
			t.Fatalf("heavy was not killed on the replica")
		}
		if len(users) != 2 || !strings.HasPrefix(users[0].Name, "on-replica") {
			t.Fatalf("reads did not go to the replica: %+v", users)
		}
		settled(t, replica, tg)
		if primaryPort != replicaPort && running(t, db, tg) != 0 {
			t.Fatal("heavy query ran on the primary")
		}
	}
	if d := connections(t, replica) - before; d != 0 {
		t.Fatalf("%d reconnects on the replica", d)
	}
}
