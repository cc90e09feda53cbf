package gormbatch_test

import (
	"os"
	"strings"
	"testing"

	"github.com/gormbatch/gormbatch"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	"gorm.io/plugin/dbresolver"
)

// With dbresolver sending reads to a replica, a batch query pins its
// connection from the replica's pool and stops its statements there, with
// no new connection: MariaDB's replica is a second server
// (GORMBATCH_MYSQL_REPLICA_DSN, default port 3316), PostgreSQL's a second
// database (GORMBATCH_POSTGRES_REPLICA_DSN, default dbname=gbreplica).

func replicaDSN() string {
	if dsn := os.Getenv("GORMBATCH_MYSQL_REPLICA_DSN"); dsn != "" {
		return dsn
	}
	return "root@tcp(127.0.0.1:3316)/test"
}

func postgresReplicaDSN() string {
	if dsn := os.Getenv("GORMBATCH_POSTGRES_REPLICA_DSN"); dsn != "" {
		return dsn
	}
	return "host=127.0.0.1 port=5432 user=postgres dbname=gbreplica sslmode=disable"
}

func TestResolverReplica(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		var replica *serverDB
		if be == mysqlBackend {
			replica = openMySQLDSN(t, "GORMBATCH_MYSQL_REPLICA_DSN", replicaDSN(), &gorm.Config{Logger: logger.Discard})
		} else {
			replica = openPostgresDSN(t, "GORMBATCH_POSTGRES_REPLICA_DSN", postgresReplicaDSN(), &gorm.Config{Logger: logger.Discard})
		}
		replica.Exec("UPDATE users SET name = 'on-replica' WHERE id <= 2")
		s := openServer(t, be, gormbatch.Config{NoServerDeadline: true})
		if err := s.Use(dbresolver.Register(dbresolver.Config{
			Replicas: []gorm.Dialector{replica.Dialector},
		})); err != nil {
			t.Fatal(err)
		}
		tg := tag(t)
		var users []User
		run := func() *gormbatch.Report {
			users = nil
			n := int64(-1)
			rep, _ := gormbatch.From(s.DB).Timeout(serverDeadline).
				Find(&users, "id <= 2", gormbatch.As("fast")).
				Raw(&n, be.heavy(tg), gormbatch.As("heavy")).
				Wait()
			return rep
		}
		run() // warm up the replica's pool and its server cancel setup
		replica.gone(t, tg, leaveWithin)
		reclaimed(t, s.p, replica.sqlDB)
		before := replica.connects.Load()
		for range 3 {
			rep := run()
			status(t, rep, "fast", gormbatch.Done)
			if r := status(t, rep, "heavy", gormbatch.TimedOut); !r.Killed {
				t.Fatalf("heavy was not stopped on the replica\n%v", rep)
			}
			if len(users) != 2 || !strings.HasPrefix(users[0].Name, "on-replica") {
				t.Fatalf("reads did not go to the replica: %+v", users)
			}
			replica.gone(t, tg, leaveWithin)
			reclaimed(t, s.p, replica.sqlDB)
		}
		if d := replica.connects.Load() - before; d != 0 {
			t.Fatalf("%d new connections to the replica for 3 stopped queries", d)
		}
		checkPool(t, s.sqlDB)
	})
}
