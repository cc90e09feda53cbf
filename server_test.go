package gormbatch_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/gormbatch/gormbatch"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Server cancel on every server backend (MariaDB, PostgreSQL). The bounds
// are wide on purpose: they prove Wait did not wait for a statement of
// seconds, on a busy machine too; the benchmark measures how close to the
// deadline Wait returns.

const (
	serverDeadline = 200 * time.Millisecond
	serverMargin   = 2 * time.Second // on top of deadline + KillGrace, for -race on a busy machine
	leaveWithin    = 5 * time.Second // for a stopped statement to leave the process list
)

// Promise 3: a cancelled query stops on the server and its connection is
// kept (no new connection), for each way a query can be cancelled; and
// promises 1 and 2 around it.
func TestServerCancel(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		cases := []struct {
			name   string
			cfg    gormbatch.Config
			parent bool // cancel the parent context instead of a deadline
			want   gormbatch.Status
		}{
			{"deadline", gormbatch.Config{NoServerDeadline: true}, false, gormbatch.TimedOut},
			{"deadline+server-limit", gormbatch.Config{}, false, gormbatch.TimedOut},
			{"parent-cancel", gormbatch.Config{}, true, gormbatch.Canceled},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				s := openServer(t, be, c.cfg)
				tg := tag(t)
				batch := func() (*gormbatch.Report, error) {
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					b := gormbatch.From(s.WithContext(ctx))
					if c.parent {
						time.AfterFunc(serverDeadline, cancel)
					} else {
						b = b.Timeout(serverDeadline)
					}
					var users []User
					n1, n2 := int64(-1), int64(-1)
					rep, err := b.
						Find(&users, "active = ?", true, gormbatch.As("fast")).
						Raw(&n1, be.heavy(tg), gormbatch.As("heavy1")).
						Raw(&n2, be.heavy(tg), gormbatch.As("heavy2")).
						Wait()
					if n1 != -1 || n2 != -1 || len(users) != seedUsers/2 {
						t.Errorf("PROMISE 4: destinations: heavy %d %d, fast %d rows\n%v", n1, n2, len(users), rep)
					}
					return rep, err
				}
				batch() // warm the pool, the server cancel setup and the caches
				s.gone(t, tg, leaveWithin)
				reclaimed(t, s.p, s.sqlDB)
				before := s.connects.Load()
				limits := s.p.Stats().ServerLimitStops
				for range 5 {
					rep, err := batch()
					if bound := serverDeadline + 100*time.Millisecond + serverMargin; rep.Elapsed > bound {
						t.Errorf("PROMISE 1: Wait took %v, bound %v\n%v", rep.Elapsed, bound, rep)
					}
					status(t, rep, "fast", gormbatch.Done)
					stopped := s.p.Stats().ServerLimitStops > limits // the server's own limit may answer first
					for _, h := range []string{"heavy1", "heavy2"} {
						r := status(t, rep, h, c.want)
						if !r.Killed && !stopped || c.want == gormbatch.TimedOut && !errors.Is(r.Err, context.DeadlineExceeded) ||
							c.want == gormbatch.Canceled && !errors.Is(r.Err, context.Canceled) {
							t.Errorf("%s: killed %v, err %v\n%v", h, r.Killed, r.Err, rep)
						}
					}
					if err == nil {
						t.Error("batch error is nil")
					}
					s.gone(t, tg, leaveWithin)
					reclaimed(t, s.p, s.sqlDB)
				}
				if d := s.connects.Load() - before; d != 0 {
					t.Errorf("PROMISE 3: %d new connections for 10 cancelled queries, want 0; %+v; pool %+v", d, s.p.Stats(), s.sqlDB.Stats())
				}
			})
		}
	})
}

// Promise 4: an answer the server gives to a stopped statement is never
// Done, whatever it carries: MariaDB's SLEEP returns 1 when killed, and
// pg_sleep fails. 50 batches per server.
func TestServerStoppedAnswerIsNotDone(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		s := openServer(t, be, gormbatch.Config{NoServerDeadline: true})
		tg := tag(t)
		skipped := 0
		for i := range 50 {
			v := int64(-1)
			rep, _ := gormbatch.From(s.DB).Timeout(100*time.Millisecond).
				Raw(&v, be.sleep(tg, 5), gormbatch.As("sleep")).
				Wait()
			r := rep.Results[0]
			if r.Status == gormbatch.Skipped && v == -1 {
				skipped++ // a starved machine may not start it within 100 ms
			} else if r.Status == gormbatch.Done || !r.Killed || v != -1 {
				t.Fatalf("batch %d: %v, killed %v, dest %d: %v\n%v", i, r.Status, r.Killed, v, r.Err, rep)
			}
			if rep.Elapsed > 100*time.Millisecond+100*time.Millisecond+serverMargin {
				t.Fatalf("PROMISE 1: Wait took %v", rep.Elapsed)
			}
		}
		if skipped > 10 {
			t.Fatalf("%d of 50 batches never started their query: too few stopped", skipped)
		}
		s.gone(t, tg, leaveWithin)
		reclaimed(t, s.p, s.sqlDB)
	})
}

// A stop the plugin did not send (KILL QUERY or pg_cancel_backend from
// another session) is the query's own failure: Failed, not Killed.
func TestServerForeignStop(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		s := openServer(t, be, gormbatch.Config{})
		outside := be.open(t, be.dsn(), &gorm.Config{Logger: logger.Discard})
		tg := tag(t)
		stopped, done := make(chan error, 1), make(chan struct{})
		go func() { stopped <- outside.stopUntil(tg, be.stopOutside, done) }()
		n := int64(-1)
		rep, err := gormbatch.From(s.DB).Timeout(20*time.Second).Raw(&n, be.heavy(tg), gormbatch.As("heavy")).Wait()
		close(done)
		if serr := <-stopped; serr != nil {
			t.Fatalf("the outside stop was not sent: %v", serr)
		}
		r := status(t, rep, "heavy", gormbatch.Failed)
		if r.Killed || n != -1 || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			t.Fatalf("killed %v, dest %d, err %v", r.Killed, n, err)
		}
		checkPool(t, s.sqlDB)
	})
}

// Promise 3, the safety half: a stop never reaches another statement.
// Queries end right around their deadline, and after each batch a
// neighbour statement runs on the same connection (the pool has one); it
// must never be interrupted. A control sends the same stops without
// waiting for their answer and does hit neighbours, so the test can fail.
// PostgreSQL runs with pgx's statement cache and with the simple protocol.
func TestServerStopNeverHitsAnotherStatement(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		dsns := map[string]string{"": be.dsn()}
		if be == postgresBackend {
			dsns = map[string]string{"statement-cache": be.dsn(), "simple-protocol": be.dsn() + " default_query_exec_mode=simple_protocol"}
		}
		for name, dsn := range dsns {
			t.Run(name, func(t *testing.T) {
				s := be.open(t, dsn, &gorm.Config{Logger: logger.Discard})
				s.p = use(t, s.DB, gormbatch.Config{NoServerDeadline: true})
				s.sqlDB.SetMaxOpenConns(1)
				s.sqlDB.SetMaxIdleConns(1)
				neverHits(t, s, be)
			})
		}
	})
}

// neverHits runs the edge batches and the control on s (one connection).
func neverHits(t *testing.T, s *serverDB, be *backend) {
	// Deadlines spread over 0.5..1.5 times the query's median time, so
	// about half the stops land while it runs and the rest just after it
	// ended.
	times := make([]time.Duration, 21)
	for i := range times {
		t0 := time.Now()
		s.Exec(be.edge)
		times[i] = time.Since(t0)
	}
	slices.Sort(times)
	median := times[len(times)/2]
	iterations := 1000
	if testing.Short() {
		iterations = 200
	}
	var done, timedOut, killed int
	for i := range iterations {
		n := int64(-1)
		d := median/2 + time.Duration(rand.Int64N(int64(median)))
		rep, _ := gormbatch.From(s.DB).Timeout(d).Raw(&n, be.edge, gormbatch.As("edge")).Wait()
		r := rep.Results[0]
		switch r.Status {
		case gormbatch.Done:
			done++
			if n != be.edgeWant {
				t.Fatalf("iteration %d: Done with %d", i, n)
			}
		case gormbatch.TimedOut:
			timedOut++
		case gormbatch.Skipped: // the deadline passed before it started (slow -race runs)
		default:
			t.Fatalf("iteration %d: %v %v\n%v", i, r.Status, r.Err, rep)
		}
		if r.Killed {
			killed++
		}
		reclaimed(t, s.p, s.sqlDB)
		var m int64
		if err := s.Raw(be.edge).Scan(&m).Error; err != nil || m != be.edgeWant {
			t.Fatalf("PROMISE 3: iteration %d: the neighbour statement was hit: %v (%d)\n%v", i, err, m, rep)
		}
	}
	t.Logf("query median %v; %d batches: %d done, %d timed out, %d killed; 0 neighbours hit; %+v",
		median, iterations, done, timedOut, killed, s.p.Stats())
	if killed == 0 || done == 0 {
		t.Fatalf("deadlines did not straddle the query: %d done, %d killed", done, killed)
	}
	checkPool(t, s.sqlDB)

	// Control: the same stops, sent as soon as the statement returns and
	// not waited for, do hit the neighbour.
	hits := be.control(t, s, be.edge, 200)
	t.Logf("control: %d of 200 neighbours hit when the stop is not waited for", hits)
	if hits == 0 {
		t.Errorf("the control hit no neighbour: the test could not see a stray stop")
	}
}

// txItem is a row of the tables the write and transaction tests change.
type txItem struct {
	ID   uint
	Name string
}

// Transactions keep server cancel: a timed-out read inside db.Transaction
// is stopped on the server, its connection (the transaction's) is kept,
// and the transaction stays usable for its next statement and its commit.
// PostgreSQL, where a cancelled statement aborts the transaction, runs the
// batch under a savepoint.
func TestServerTransaction(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		s := openServer(t, be, gormbatch.Config{})
		outside := be.open(t, be.dsn(), &gorm.Config{Logger: logger.Discard})
		table := "gb_tx_items_" + be.name
		s.Exec("DROP TABLE IF EXISTS " + table)
		if err := s.Table(table).AutoMigrate(&txItem{}); err != nil {
			t.Fatal(err)
		}
		warm := int64(-1)
		gormbatch.From(s.DB).Timeout(50*time.Millisecond).Raw(&warm, be.heavy(tag(t))).Wait() // server cancel setup
		reclaimed(t, s.p, s.sqlDB)
		before := s.connects.Load()
		tg := tag(t)
		err := s.Transaction(func(tx *gorm.DB) error {
			if err := tx.Table(table).Create(&txItem{ID: 1, Name: "before"}).Error; err != nil {
				return err
			}
			var items []txItem
			n := int64(-1)
			rep, berr := gormbatch.From(tx).Timeout(serverDeadline).
				Go("sees-tx", func(tx *gorm.DB) error { return tx.Table(table).Find(&items).Error }).
				Raw(&n, be.heavy(tg), gormbatch.As("slow")).
				Wait()
			status(t, rep, "sees-tx", gormbatch.Done)
			if r := status(t, rep, "slow", gormbatch.TimedOut); !r.Killed || n != -1 {
				t.Errorf("slow: killed %v, dest %d", r.Killed, n)
			}
			if len(items) != 1 || !errors.Is(berr, context.DeadlineExceeded) || errors.Is(berr, gormbatch.ErrTxBroken) {
				t.Errorf("items %v, batch err %v", items, berr)
			}
			outside.gone(t, tg, leaveWithin)
			// The transaction is usable: its next statement works.
			return tx.Table(table).Create(&txItem{ID: 2, Name: "after"}).Error
		})
		if err != nil {
			t.Fatalf("the transaction did not survive a cancelled batch query: %v", err)
		}
		if d := s.connects.Load() - before; d != 0 {
			t.Errorf("PROMISE 3: %d new connections: the transaction's connection was not kept", d)
		}
		checkPool(t, s.sqlDB)
		var n int64
		outside.Table(table).Count(&n)
		if n != 2 {
			t.Errorf("%d rows committed, want 2", n)
		}
		outside.Exec("DROP TABLE IF EXISTS " + table)
	})
}

// PrepareStmt mode keeps server cancel: batch statements run on the pinned
// connection, and a timed-out read is stopped on the server with its
// connection kept.
func TestServerPrepareStmt(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		s := be.open(t, be.dsn(), &gorm.Config{Logger: logger.Discard, PrepareStmt: true})
		s.p = use(t, s.DB, gormbatch.Config{})
		tg := tag(t)
		run := func() {
			var users []User
			n := int64(-1)
			limits := s.p.Stats().ServerLimitStops
			rep, err := gormbatch.From(s.DB).Timeout(serverDeadline).
				Find(&users, "id <= ?", 5, gormbatch.As("fast")).
				Raw(&n, be.heavy(tg), gormbatch.As("slow")).
				Wait()
			status(t, rep, "fast", gormbatch.Done)
			stopped := s.p.Stats().ServerLimitStops > limits // the server's own limit may answer first
			if r := status(t, rep, "slow", gormbatch.TimedOut); !r.Killed && !stopped || n != -1 || err == nil || len(users) != 5 {
				t.Errorf("slow: killed %v, dest %d, err %v\n%v", r.Killed, n, err, rep)
			}
			s.gone(t, tg, leaveWithin)
			reclaimed(t, s.p, s.sqlDB)
		}
		run()
		before := s.connects.Load()
		for range 3 {
			run()
		}
		if d := s.connects.Load() - before; d != 0 {
			t.Errorf("PROMISE 3: %d new connections for 3 cancels under PrepareStmt", d)
		}
	})
}

// big is a row of gb_big, 200 000 rows.
type big struct {
	ID   uint
	Name string
}

func (big) TableName() string { return "gb_big" }

// Promise 4 on a server: a 200 000-row Find cut at 30 ms leaves the slice,
// down to its spare capacity, untouched.
func TestServerLargeFindUntouched(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		s := openServer(t, be, gormbatch.Config{})
		var n int64
		if s.Model(&big{}).Count(&n); n != 200000 {
			s.Exec("DROP TABLE IF EXISTS gb_big")
			if err := s.AutoMigrate(&big{}); err != nil {
				t.Fatal(err)
			}
			fill := "INSERT INTO gb_big (id, name) SELECT seq, CONCAT('n', seq) FROM seq_1_to_200000"
			if be == postgresBackend {
				fill = "INSERT INTO gb_big (id, name) SELECT g, 'n' || g FROM generate_series(1, 200000) g"
			}
			if err := s.Exec(fill).Error; err != nil {
				t.Fatal(err)
			}
		}
		sentinel := big{ID: 4242, Name: "sentinel"}
		rows := make([]big, 1, 250000)
		full := rows[:cap(rows)]
		for i := range full {
			full[i] = sentinel
		}
		rep, _ := gormbatch.From(s.DB).Timeout(30*time.Millisecond).Find(&rows, gormbatch.As("big")).Wait()
		if r := rep.Results[0]; r.Status == gormbatch.Done {
			t.Skipf("200 000 rows read in under 30 ms (%v): nothing was cut", r.Ran)
		}
		if len(rows) != 1 || cap(rows) != 250000 {
			t.Fatalf("PROMISE 4: slice replaced: len %d cap %d", len(rows), cap(rows))
		}
		for i, r := range full {
			if r != sentinel {
				t.Fatalf("PROMISE 4: backing array written at %d: %+v", i, r)
			}
		}
		reclaimed(t, s.p, s.sqlDB)
	})
}

// Preload and gorm.G run inside batches on servers too, with their
// statements on the query's pinned connection.
func TestServerSessions(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		s := openServer(t, be, gormbatch.Config{})
		var preloaded, generic []User
		var ids []int64
		rep, err := gormbatch.From(s.Preload("Orders")).
			Find(&preloaded, "id <= ?", 3).
			Go("generic", func(tx *gorm.DB) error {
				var err error
				generic, err = gorm.G[User](tx).Where("active = ?", false).Find(tx.Statement.Context)
				return err
			}).
			Go("same connection", func(tx *gorm.DB) error {
				var a, b int64
				if err := tx.Raw(be.sessionID).Scan(&a).Error; err != nil {
					return err
				}
				err := tx.Raw(be.sessionID).Scan(&b).Error
				ids = []int64{a, b}
				return err
			}).
			Wait()
		if err != nil {
			t.Fatal(err, rep)
		}
		if len(preloaded) != 3 || len(preloaded[2].Orders) != 2 || len(generic) != seedUsers/2 {
			t.Fatalf("preload %+v, generic %d", preloaded, len(generic))
		}
		if ids[0] != ids[1] {
			t.Fatalf("two statements of one query ran on sessions %v", ids)
		}
	})
}

// Promise 2 on a server: a closure that leaves its rows open still gives
// its connection back when Wait returns (the plugin ends the driver's
// context, and database/sql closes the rows), beside a finder whose
// statements see a context that never ends.
func TestServerOpenRows(t *testing.T) {
	eachServer(t, func(t *testing.T, be *backend) {
		s := openServer(t, be, gormbatch.Config{})
		var users []User
		var rep *gormbatch.Report
		var err error
		waited := make(chan struct{})
		go func() {
			defer close(waited)
			rep, err = gormbatch.From(s.DB).Timeout(serverDeadline).
				Find(&users, gormbatch.As("find")).
				Go("open-rows", leaveRowsOpen).
				Wait()
		}()
		select {
		case <-waited:
		case <-time.After(serverDeadline + 100*time.Millisecond + serverMargin):
			t.Fatal("PROMISE 1: Wait did not return: the open rows hold the connection")
		}
		if err != nil || len(users) != seedUsers {
			t.Fatalf("%v: %d users\n%v", err, len(users), rep)
		}
		checkPool(t, s.sqlDB)
		before := s.connects.Load()
		if _, err := gormbatch.From(s.DB).Find(&users).Wait(); err != nil {
			t.Fatal(err)
		}
		if d := s.connects.Load() - before; d != 0 {
			t.Errorf("%d new connections after the batch", d)
		}
	})
}
