package gormbatch_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/gormbatch/gormbatch"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// MariaDB/MySQL only: what the generic server tests cannot express.

// Promise 4: MariaDB's GET_LOCK returns NULL, with no error, when its
// statement limit or a kill interrupts it; that answer must never be Done.
// 300 batches (deadlines 20, 50 and 200 ms) wait on a lock another session
// holds, with the server-side limit on, so the server's own limit and the
// plugin's kill race each other.
func TestMySQLInterruptedLockIsNotDone(t *testing.T) {
	s := openServer(t, mysqlBackend, gormbatch.Config{})
	if !isMariaDB(s.DB) {
		t.Skip("GET_LOCK returns NULL when interrupted on MariaDB")
	}
	outside := mysqlBackend.open(t, mysqlDSN(), &gorm.Config{Logger: logger.Discard})
	holder, err := outside.sqlDB.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	lock := tag(t)
	if _, err := holder.ExecContext(context.Background(), "DO GET_LOCK(?, 10)", lock); err != nil {
		t.Fatal(err)
	}
	defer holder.ExecContext(context.Background(), "DO RELEASE_LOCK(?)", lock)
	var mu sync.Mutex
	counts := map[gormbatch.Status]int{}
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := []time.Duration{20 * time.Millisecond, 50 * time.Millisecond, 200 * time.Millisecond}[w]
			for range 100 {
				got := int64(-7)
				rep, _ := gormbatch.From(s.DB).Timeout(d).Raw(&got, "SELECT GET_LOCK(?, 10)", lock, gormbatch.As("lock")).Wait()
				r := rep.Results[0]
				mu.Lock()
				counts[r.Status]++
				mu.Unlock()
				if r.Status == gormbatch.Done || got != -7 {
					t.Errorf("PROMISE 4: GET_LOCK on a held lock under a %v deadline: %v, dest %d (ran %v)", d, r.Status, got, r.Ran)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("300 batches: %v; %+v", counts, s.p.Stats())
	reclaimed(t, s.p, s.sqlDB)
}

// The thread id is asked once per physical connection, not per query.
func TestMySQLConnectionIDOnce(t *testing.T) {
	s := openServer(t, mysqlBackend, gormbatch.Config{})
	s.sqlDB.SetMaxOpenConns(2)
	s.sqlDB.SetMaxIdleConns(2)
	for range 50 {
		var a, b []User
		if _, err := gormbatch.From(s.DB).Find(&a).Find(&b, "active").Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if n := gormbatch.IDLookups(s.p); n > 2 {
		t.Fatalf("%d connection id lookups for 100 queries on 2 connections", n)
	}
}

// The server enforces the limit the plugin sends with a read: MariaDB stops
// it with error 1969, which the plugin reports TimedOut (even where it
// arrives before the plugin's own timer).
func TestMySQLServerLimit(t *testing.T) {
	s := openServer(t, mysqlBackend, gormbatch.Config{})
	if !isMariaDB(s.DB) {
		t.Skip("SET STATEMENT max_statement_time is MariaDB's")
	}
	var n int64
	err := s.Raw(gormbatch.Rewrite(true, mysqlBackend.heavy(tag(t)), 150)).Scan(&n).Error
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1969 {
		t.Fatalf("server limit: err %v, want 1969", err)
	}
}

// Every read carries the limit, whatever comes before its first keyword:
// comments (what sqlcommenter and tracing tools add), whitespace,
// parentheses. The server shows the statement it runs.
func TestMySQLLimitAfterLeadingComments(t *testing.T) {
	s := openServer(t, mysqlBackend, gormbatch.Config{})
	if !isMariaDB(s.DB) {
		t.Skip("the process list shows MariaDB's SET STATEMENT")
	}
	for i, prefix := range []string{"/* traceparent='00-1' */ ", "-- tag\n", "\n\t ( ", "#x\n/*a*/ /*b*/ "} {
		tg := fmt.Sprintf("%s-%d", tag(t), i)
		q := prefix + "SELECT SLEEP(1)" + strings.Repeat(")", strings.Count(prefix, "(")) + mark(tg)
		done := make(chan struct{})
		var info string
		go func() {
			defer close(done)
			within(3*time.Second, func() error {
				err := s.Raw("SELECT INFO FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()", tagged(tg)).Scan(&info).Error
				if err == nil && info == "" {
					err = errors.New("not running yet")
				}
				return err
			})
		}()
		v := int64(-1)
		rep, _ := gormbatch.From(s.DB).Timeout(500*time.Millisecond).Raw(&v, q, gormbatch.As("read")).Wait()
		<-done
		if !strings.HasPrefix(info, "SET STATEMENT max_statement_time=") {
			t.Errorf("%q ran as %q, without the server limit\n%v", q, info, rep)
		}
	}
	reclaimed(t, s.p, s.sqlDB)
}
