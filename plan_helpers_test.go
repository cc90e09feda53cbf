package gormbatch_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/gormbatch/gormbatch"
	"go.uber.org/goleak"
	"gorm.io/gorm"
)

// Batch plans: a random (soak) or fuzzed (FuzzBatch) description of a
// batch, run against a backend and checked against the plugin's promises.
// The checks (checkRun) are the same for every source of plans:
//
//   - every query ends in exactly one valid Status, with Err nil iff Done,
//     a Stack iff Panicked, and an error matching the status;
//   - a status is only possible when its cause was planned (TimedOut needs
//     a deadline, Canceled a parent cancel or FailFast, Skipped an early
//     end, Panicked a panicking query, Failed a failing query or a fault);
//   - Done ⇔ the destination was written: a Done destination holds exactly
//     the expected result, any other destination still holds its sentinel
//     (down to the spare capacity of a slice's backing array);
//   - Wait's error is nil iff every required query is Done, and otherwise
//     an *Error listing exactly the required queries not Done;
//   - Wait returns by its earliest deadline or cancel plus the backend's
//     slack (KillGrace, or SQLite's interrupt granularity) plus a margin;
//   - when Wait returns, InUse is 0 and no goroutine is left.

type kind int

const (
	kFind      kind = iota // Find(&[]User)
	kFirst                 // First(&User)
	kRaw                   // Raw(&int64, scalar query)
	kCount                 // Go: Model(&User{}).Where(...).Count
	kPluck                 // Go: Pluck("name", &[]string)
	kMap                   // Go: Take(&map[string]any)
	kGoValue               // GoValue: Raw(...).Scan
	kGoMulti               // Go: Find, then Count
	kSleep                 // MariaDB SLEEP (Done ⇒ 0: a killed SLEEP returns 1); SQLite: one nap
	kSQLErr                // Raw from a missing table
	kLateErr               // Go: a statement, then one from a missing table
	kPanicHook             // Find(&[]Boom): AfterFind panics
	kPanicGo               // Go: a statement, then a panic
	numKinds
)

var kindNames = [...]string{"find", "first", "raw", "count", "pluck", "map", "govalue", "gomulti", "sleep",
	"sqlerr", "lateerr", "panichook", "panicgo"}

func (k kind) String() string { return kindNames[k] }

// failing kinds never end Done; panicking ones end Panicked when they run
// to the end.
func (k kind) fails() bool  { return k == kSQLErr || k == kLateErr }
func (k kind) panics() bool { return k == kPanicHook || k == kPanicGo }

type qplan struct {
	kind     kind
	rows     int           // rows read: ids 1..rows (1..40)
	ms       int           // approximate cost
	timeout  time.Duration // WithTimeout; 0: none
	optional bool
}

type bplan struct {
	qs          []qplan
	timeout     time.Duration // batch Timeout; 0: none
	limit       int           // Limit; 0: default
	failFast    bool
	cancelAfter time.Duration // cancel the parent context; 0: never
	parentDL    time.Duration // parent context deadline; 0: none
}

func (p bplan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "timeout %v limit %d failFast %v cancelAfter %v parentDL %v:", p.timeout, p.limit, p.failFast, p.cancelAfter, p.parentDL)
	for i, q := range p.qs {
		fmt.Fprintf(&b, " q%d{%v rows %d %dms", i, q.kind, q.rows, q.ms)
		if q.timeout > 0 {
			fmt.Fprintf(&b, " timeout %v", q.timeout)
		}
		if q.optional {
			b.WriteString(" optional")
		}
		b.WriteString("}")
	}
	return b.String()
}

// byteSrc feeds plan decisions; past its end it reads zeros.
type byteSrc struct {
	b []byte
	i int
}

func (s *byteSrc) u8() int {
	if s.i >= len(s.b) {
		return 0
	}
	v := s.b[s.i]
	s.i++
	return int(v)
}

// planLimits bound what decodePlan builds.
type planLimits struct {
	maxQueries int
	maxNatural int // ms: queries of a plan without any deadline cost at most this in all
	scale      int // percent applied to every cost and duration; 0 means 100
}

// decodePlan turns bytes into a plan. Every byte string is a valid plan.
func decodePlan(s *byteSrc, lim planLimits) bplan {
	var p bplan
	h := s.u8()
	p.failFast = h&1 != 0
	p.limit = (h >> 1) & 3 // 0: default
	if t := s.u8(); t >= 96 {
		p.timeout = time.Duration(5+(t-96)*2) * time.Millisecond // 5..323ms
	}
	if c := s.u8(); c >= 216 {
		p.cancelAfter = time.Duration((c-216)*5) * time.Millisecond // 0..195ms
	}
	if d := s.u8(); d >= 232 {
		p.parentDL = time.Duration(1+(d-232)*8) * time.Millisecond // 1..185ms
	}
	n := 1 + s.u8()%lim.maxQueries
	total := 0
	for range n {
		q := qplan{kind: kind(s.u8() % int(numKinds)), rows: 1 + s.u8()%40}
		switch c := s.u8(); {
		case c < 160:
			q.ms = c % 10
		case c < 230:
			q.ms = 10 + (c-160)%30
		default:
			q.ms = 40 + (c-230)*4 // ..140ms
		}
		f := s.u8()
		q.optional = f&1 != 0
		if f&6 == 6 {
			q.timeout = time.Duration(1+s.u8()%100) * time.Millisecond
		}
		total += q.ms
		p.qs = append(p.qs, q)
	}
	if p.timeout == 0 && p.cancelAfter == 0 && p.parentDL == 0 && total > lim.maxNatural {
		for i := range p.qs {
			p.qs[i].ms = p.qs[i].ms * lim.maxNatural / total
		}
	}
	if lim.scale > 0 && lim.scale != 100 {
		d := func(v time.Duration) time.Duration {
			if v == 0 {
				return 0
			}
			return max(time.Millisecond, v*time.Duration(lim.scale)/100)
		}
		p.timeout, p.cancelAfter, p.parentDL = d(p.timeout), d(p.cancelAfter), d(p.parentDL)
		for i := range p.qs {
			p.qs[i].ms = p.qs[i].ms * lim.scale / 100
			p.qs[i].timeout = d(p.qs[i].timeout)
		}
	}
	return p
}

// planTarget is a database a plan runs on.
type planTarget struct {
	name  string
	db    *gorm.DB
	sqlDB *sql.DB
	p     *gormbatch.Plugin
	tag   string // marks every statement of the plans (the process list)
	// cond is a true SQL condition costing about ms over rows rows.
	cond func(ms, rows int) string
	// scalar is a query of one int64 value costing about ms.
	scalar func(ms int) (string, int64)
	// sleep is a query that sleeps ms and the value it returns when it
	// completes.
	sleep  func(ms int) (string, int64)
	errSQL string
	// granularity is how late a cancelled query of this plan may return
	// (SQLite checks interrupts between rows; servers stop it at once,
	// within KillGrace).
	granularity func(q qplan) time.Duration
	// leftovers counts tagged statements still running; nil if unknown.
	leftovers func() (int64, error)
	// leakIgnore lists goroutines that may appear during a batch and are
	// not the batch's (driver watchers of new pool connections, proxies).
	leakIgnore []goleak.Option
}

func sqliteTarget(db *gorm.DB, sqlDB *sql.DB, p *gormbatch.Plugin) *planTarget {
	// The first n rows nap k ms each: about ms in all, interruptible every
	// k ms.
	split := func(ms, rows int) (n, k int) {
		if ms <= 0 {
			return 0, 0
		}
		n = max(1, min(rows, ms))
		return n, ms / n
	}
	cond := func(ms, rows int) string {
		n, k := split(ms, rows)
		switch {
		case n == 0:
			return "1 = 1"
		case rows == 1: // First, Take: the one row read naps
			return fmt.Sprintf("nap(%d) = 1", k)
		}
		return fmt.Sprintf("(id > %d OR nap(%d) = 1)", n, k)
	}
	return &planTarget{
		name: "sqlite", db: db, sqlDB: sqlDB, p: p,
		cond: cond,
		scalar: func(ms int) (string, int64) {
			return "SELECT COUNT(*) FROM users WHERE id <= 10 AND " + cond(ms, 10), 10
		},
		sleep:  func(ms int) (string, int64) { return fmt.Sprintf("SELECT nap(%d)", ms), 1 },
		errSQL: "SELECT * FROM gb_no_such_table",
		granularity: func(q qplan) time.Duration {
			rows := q.rows
			switch q.kind {
			case kSleep:
				return time.Duration(q.ms) * time.Millisecond
			case kFirst, kMap:
				rows = 1
			case kRaw, kGoValue:
				rows = 10
			}
			_, k := split(q.ms, rows)
			return time.Duration(k) * time.Millisecond
		},
	}
}

// serverTarget is a plan target on a server backend; grace is the
// plugin's KillGrace.
func serverTarget(s *serverDB, tag string, grace time.Duration) *planTarget {
	mark := " /* gbsoak:" + tag + " */"
	tg := &planTarget{
		name: s.be.name, db: s.DB, sqlDB: s.sqlDB, p: s.p, tag: tag,
		errSQL:      "SELECT * FROM gb_no_such_table" + mark,
		granularity: func(qplan) time.Duration { return grace },
		// Goroutines the drivers keep per connection, not the batch's: a
		// pooled connection's watcher, pgx closing a connection, and pgx's
		// background reader, which a slow write starts and which, once
		// stopped, stays in its read until the idle connection's next
		// answer (pgconn's enterPotentialWriteReadDeadlock).
		leakIgnore: []goleak.Option{
			goleak.IgnoreAnyFunction("github.com/go-sql-driver/mysql.(*mysqlConn).startWatcher.func1"),
			goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgconn.(*PgConn).asyncClose.func1"),
			goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgconn/internal/bgreader.(*BGReader).bgRead"),
		},
	}
	if s.be == postgresBackend {
		rows := func(ms int) int { return max(1, 7000*ms) } // ~7k rows a ms
		tg.cond = func(ms, _ int) string {
			return fmt.Sprintf("(SELECT count(*) FROM generate_series(1, %d)) > 0%s", rows(ms), mark)
		}
		tg.scalar = func(ms int) (string, int64) {
			return fmt.Sprintf("SELECT count(*) FROM generate_series(1, %d)%s", rows(ms), mark), int64(rows(ms))
		}
		tg.sleep = func(ms int) (string, int64) {
			return fmt.Sprintf("SELECT 0::bigint FROM pg_sleep(%.3f)%s", float64(ms)/1000, mark), 0
		}
	} else {
		seq := func(ms int) int { return max(1, 23*ms) } // ~23k rows a ms
		tg.cond = func(ms, _ int) string {
			return fmt.Sprintf("(SELECT COUNT(*) FROM seq_1_to_1000 sa, seq_1_to_%d sb) > 0%s", seq(ms), mark)
		}
		tg.scalar = func(ms int) (string, int64) {
			return fmt.Sprintf("SELECT COUNT(*) FROM seq_1_to_1000 a, seq_1_to_%d b%s", seq(ms), mark), int64(1000 * seq(ms))
		}
		tg.sleep = func(ms int) (string, int64) { return fmt.Sprintf("SELECT SLEEP(%.3f)%s", float64(ms)/1000, mark), 0 }
	}
	tg.leftovers = func() (int64, error) {
		q := "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()"
		if s.be == postgresBackend {
			q = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE ? AND pid <> pg_backend_pid()"
		}
		var n int64
		err := s.Raw(q, "%gbsoak:"+tag+" */%").Scan(&n).Error
		return n, err
	}
	return tg
}

// runStats counts what a series of plans did.
type runStats struct {
	batches, queries     int
	status               [gormbatch.Panicked + 1]int
	kinds                [numKinds]int
	batchTimeouts        int
	queryTimeouts        int
	parentCancels        int
	parentDeadlines      int
	failFast             int
	optional             int
	calm                 int // batches with no deadline or cancel: exact statuses checked
	maxOver              time.Duration
	killed               int
	batchErrs            int
	sqlErrors, panics    int
	waitTotal, waitMax   time.Duration
	leftoverChecks       int
	goroutineChecks      int
	networkFaults        int
	failedByNetworkFault int
}

func (s *runStats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d batches, %d queries; statuses:", s.batches, s.queries)
	for st := gormbatch.Done; st <= gormbatch.Panicked; st++ {
		fmt.Fprintf(&b, " %v %d,", st, s.status[st])
	}
	fmt.Fprintf(&b, " (%d killed on the server); faults injected: %d batch timeouts, %d query timeouts, %d parent cancels, %d parent deadlines, %d FailFast batches, %d SQL errors, %d panics, %d optional queries",
		s.killed, s.batchTimeouts, s.queryTimeouts, s.parentCancels, s.parentDeadlines, s.failFast, s.sqlErrors, s.panics, s.optional)
	if s.networkFaults > 0 {
		fmt.Fprintf(&b, ", %d network cuts (%d queries failed by them)", s.networkFaults, s.failedByNetworkFault)
	}
	fmt.Fprintf(&b, "; %d calm batches with exact statuses; %d batch errors; %d goroutine checks, %d PROCESSLIST checks; Wait mean %v max %v; worst Wait past its bound %v; queries by kind:",
		s.calm, s.batchErrs, s.goroutineChecks, s.leftoverChecks, (s.waitTotal / time.Duration(max(s.batches, 1))).Round(time.Microsecond), s.waitMax.Round(time.Millisecond), s.maxOver.Round(time.Millisecond))
	for k, n := range s.kinds {
		fmt.Fprintf(&b, " %v %d", kind(k), n)
	}
	return b.String()
}

// addedQuery is a query added to a batch and how to check its destination.
type addedQuery struct {
	plan qplan
	// check returns an error if the destination does not match the
	// status: exactly the expected value if done, else its sentinel.
	check func(done bool) error
}

var sentinelUser = User{ID: 4242, Name: "sentinel"}

// sentinelUsers returns a slice of length 1 and capacity 8 whose whole
// backing array holds sentinelUser, and a check that it is untouched.
func sentinelUsers() ([]User, func([]User) error) {
	s := make([]User, 8)
	for i := range s {
		s[i] = sentinelUser
	}
	s = s[:1]
	return s, func(got []User) error {
		if len(got) != 1 || cap(got) != 8 {
			return fmt.Errorf("sentinel slice replaced: len %d cap %d", len(got), cap(got))
		}
		for i, u := range got[:8] {
			if !reflect.DeepEqual(u, sentinelUser) {
				return fmt.Errorf("sentinel backing array written at %d: %+v", i, u)
			}
		}
		return nil
	}
}

func wantIDs(got []User, rows int) error {
	if len(got) != rows {
		return fmt.Errorf("%d rows, want %d", len(got), rows)
	}
	for i, u := range got {
		if u.ID != uint(i+1) || u.Name != fmt.Sprintf("user%03d", i+1) {
			return fmt.Errorf("row %d is %+v", i, u)
		}
	}
	return nil
}

func wantInt(got, want, sentinel int64, done bool) error {
	if done && got != want {
		return fmt.Errorf("done with %d, want %d", got, want)
	}
	if !done && got != sentinel {
		return fmt.Errorf("not done, yet dest %d (sentinel %d)", got, sentinel)
	}
	return nil
}

func check2(done bool, doneErr func() error, untouched func() error) error {
	if done {
		return doneErr()
	}
	return untouched()
}

// addQuery adds q to b as query name and returns its destination check.
func addQuery(b *gormbatch.Batch, be *planTarget, name string, q qplan) addedQuery {
	opts := []gormbatch.QueryOption{gormbatch.As(name)}
	if q.timeout > 0 {
		opts = append(opts, gormbatch.WithTimeout(q.timeout))
	}
	if q.optional {
		opts = append(opts, gormbatch.Optional())
	}
	args := func(v ...any) []any {
		for _, o := range opts {
			v = append(v, o)
		}
		return v
	}
	const sentinel = int64(-7777)
	cond := be.cond(q.ms, q.rows)
	aq := addedQuery{plan: q}
	switch q.kind {
	case kFind:
		dest, untouched := sentinelUsers()
		b.Find(&dest, args("id <= ? AND "+cond, q.rows)...)
		aq.check = func(done bool) error {
			return check2(done, func() error { return wantIDs(dest, q.rows) }, func() error { return untouched(dest) })
		}
	case kFirst:
		// No primary key in the sentinel: GORM would add it to the
		// conditions.
		sentinelFirst := User{Name: "sentinel", Active: true}
		dest := sentinelFirst
		b.First(&dest, args("id = ? AND "+be.cond(q.ms, 1), q.rows)...)
		aq.check = func(done bool) error {
			if done && (dest.ID != uint(q.rows) || dest.Name != fmt.Sprintf("user%03d", q.rows)) {
				return fmt.Errorf("done with %+v", dest)
			}
			if !done && !reflect.DeepEqual(dest, sentinelFirst) {
				return fmt.Errorf("not done, yet dest %+v", dest)
			}
			return nil
		}
	case kRaw, kSleep:
		query, want := be.scalar(q.ms)
		if q.kind == kSleep {
			query, want = be.sleep(q.ms)
		}
		dest := sentinel
		b.Raw(&dest, query, args()...)
		aq.check = func(done bool) error { return wantInt(dest, want, sentinel, done) }
	case kCount:
		dest := sentinel
		b.Go(name, func(tx *gorm.DB) error {
			return tx.Model(&User{}).Where("id <= ? AND "+cond, q.rows).Count(&dest).Error
		}, opts...)
		aq.check = func(done bool) error { return wantInt(dest, int64(q.rows), sentinel, done) }
	case kPluck:
		dest := append(make([]string, 0, 4), "sentinel")
		b.Go(name, func(tx *gorm.DB) error {
			return tx.Model(&User{}).Where("id <= ? AND "+cond, q.rows).Order("id").Pluck("name", &dest).Error
		}, opts...)
		aq.check = func(done bool) error {
			if done {
				if len(dest) != q.rows || dest[q.rows-1] != fmt.Sprintf("user%03d", q.rows) {
					return fmt.Errorf("done with %v", dest)
				}
				return nil
			}
			if len(dest) != 1 || cap(dest) != 4 || dest[0] != "sentinel" || dest[:2][1] != "" {
				return fmt.Errorf("not done, yet dest %v (cap %d)", dest, cap(dest))
			}
			return nil
		}
	case kMap:
		dest := map[string]any{"sentinel": 1}
		b.Go(name, func(tx *gorm.DB) error {
			return tx.Model(&User{}).Where("id = ? AND "+be.cond(q.ms, 1), q.rows).Take(&dest).Error
		}, opts...)
		aq.check = func(done bool) error {
			if done {
				name := dest["name"]
				if bs, ok := name.([]byte); ok {
					name = string(bs)
				}
				if name != fmt.Sprintf("user%03d", q.rows) {
					return fmt.Errorf("done with %v", dest)
				}
				return nil
			}
			if !reflect.DeepEqual(dest, map[string]any{"sentinel": 1}) {
				return fmt.Errorf("not done, yet dest %v", dest)
			}
			return nil
		}
	case kGoValue:
		query, want := be.scalar(q.ms)
		dest := sentinel
		gormbatch.GoValue(b, name, &dest, func(tx *gorm.DB) (int64, error) {
			var v int64
			err := tx.Raw(query).Scan(&v).Error
			return v, err
		}, opts...)
		aq.check = func(done bool) error { return wantInt(dest, want, sentinel, done) }
	case kGoMulti:
		users, untouched := sentinelUsers()
		n := sentinel
		half := be.cond(q.ms/2, q.rows)
		b.Go(name, func(tx *gorm.DB) error {
			if err := tx.Where("id <= ? AND "+half, q.rows).Find(&users).Error; err != nil {
				return err
			}
			return tx.Model(&User{}).Where("id <= ? AND "+half, q.rows).Count(&n).Error
		}, opts...)
		aq.check = func(done bool) error {
			if done {
				if err := wantIDs(users, q.rows); err != nil {
					return err
				}
				return wantInt(n, int64(q.rows), sentinel, true)
			}
			if err := untouched(users); err != nil {
				return err
			}
			return wantInt(n, 0, sentinel, false)
		}
	case kSQLErr:
		dest, untouched := sentinelUsers()
		b.Raw(&dest, be.errSQL, args()...)
		aq.check = func(done bool) error {
			return check2(done, func() error { return errors.New("a query of a missing table ended Done") }, func() error { return untouched(dest) })
		}
	case kLateErr:
		users, untouched := sentinelUsers()
		b.Go(name, func(tx *gorm.DB) error {
			if err := tx.Where("id <= ? AND "+cond, q.rows).Find(&users).Error; err != nil {
				return err
			}
			return tx.Raw(be.errSQL).Scan(&[]User{}).Error
		}, opts...)
		aq.check = func(done bool) error {
			return check2(done, func() error { return errors.New("a failing closure ended Done") }, func() error { return untouched(users) })
		}
	case kPanicHook:
		var dest []Boom
		dest = append(make([]Boom, 0, 2), Boom{ID: 4242, Name: "sentinel"})
		b.Find(&dest, args("id <= ? AND "+cond, q.rows)...)
		aq.check = func(done bool) error {
			if done || len(dest) != 1 || cap(dest) != 2 || dest[0].ID != 4242 || dest[:2][1] != (Boom{}) {
				return fmt.Errorf("panicking query: done %v, dest %v", done, dest)
			}
			return nil
		}
	case kPanicGo:
		users, untouched := sentinelUsers()
		b.Go(name, func(tx *gorm.DB) error {
			if err := tx.Where("id <= ? AND "+cond, q.rows).Find(&users).Error; err != nil {
				return err
			}
			panic("soak: panic in a closure")
		}, opts...)
		aq.check = func(done bool) error {
			return check2(done, func() error { return errors.New("a panicking closure ended Done") }, func() error { return untouched(users) })
		}
	}
	return aq
}

// runPlan runs one plan on tg, checks every promise and adds to st. It
// returns a description of every violation (empty if none). netFault, if
// not nil, injects a network fault during the batch.
func runPlan(tg *planTarget, p bplan, st *runStats, netFault func() (injected bool)) []string {
	var c planCheck
	leakBase := goleak.IgnoreCurrent()
	r := start(tg, p, netFault)
	c.bound(tg, p, r, st)
	c.cleanup(tg, r, leakBase)
	if r.rep == nil {
		c.fail("no report: %v", r.err)
		return c.errs
	}
	notDone := c.results(p, r, st)
	c.batchError(notDone, r.err)
	c.leftovers(tg, r.faulted)
	st.tally(p, r)
	if r.faulted {
		// The fault may have cut a connection just as it went back to
		// the pool; pgx would find out only at its next use, in another
		// batch. Drop the idle connections so a fault stays in its batch.
		tg.sqlDB.SetMaxIdleConns(0)
		tg.sqlDB.SetMaxIdleConns(8)
	}
	if len(c.errs) > 0 {
		c.errs = append(c.errs, "plan: "+p.String(), "report:\n"+r.rep.String())
	}
	return c.errs
}

// planRun is what running a plan gave.
type planRun struct {
	rep     *gormbatch.Report
	err     error
	added   []addedQuery
	elapsed time.Duration
	faulted bool // a network fault was injected
	held    int  // when Wait returned: connections the plugin held for stopped statements
	inUse   int  // and connections in use
}

// start builds the plan's batch, runs it (with its parent cancel or
// deadline and the network fault, if any) and waits for it.
func start(tg *planTarget, p bplan, netFault func() (injected bool)) planRun {
	planned := time.Now()
	var (
		ctx    context.Context
		cancel context.CancelFunc
	)
	if p.parentDL > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), p.parentDL)
	} else {
		ctx, cancel = context.WithCancel(context.Background())
	}
	defer cancel()
	b := gormbatch.From(tg.db.WithContext(ctx))
	if p.timeout > 0 {
		b = b.Timeout(p.timeout)
	}
	if p.limit > 0 {
		b = b.Concurrency(p.limit)
	}
	if p.failFast {
		b = b.FailFast()
	}
	r := planRun{added: make([]addedQuery, len(p.qs))}
	for i, q := range p.qs {
		r.added[i] = addQuery(b, tg, fmt.Sprintf("q%d", i), q)
	}
	if p.cancelAfter > 0 {
		stop := time.AfterFunc(p.cancelAfter-time.Since(planned), cancel).Stop
		defer stop()
	}
	var faultDone chan bool
	if netFault != nil {
		faultDone = make(chan bool, 1)
		go func() { faultDone <- netFault() }()
	}
	r.rep, r.err = b.Wait()
	r.elapsed = time.Since(planned)
	// Held first: a connection goes back before the plugin stops counting it.
	r.held, r.inUse = tg.p.Stats().Reclaiming, tg.sqlDB.Stats().InUse
	if faultDone != nil {
		r.faulted = <-faultDone
	}
	return r
}

// planCheck collects a plan's violations.
type planCheck struct{ errs []string }

func (c *planCheck) fail(format string, args ...any) {
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

// planBound is the plan's earliest deadline or cancel; 0 if none.
func planBound(p bplan) time.Duration {
	bound := time.Duration(0)
	for _, d := range []time.Duration{p.timeout, p.cancelAfter, p.parentDL} {
		if d > 0 && (bound == 0 || d < bound) {
			bound = d
		}
	}
	return bound
}

// bound checks promise 1: Wait returns by the earliest deadline or cancel
// plus the target's slack (KillGrace, or SQLite's interrupt granularity)
// plus a margin for a busy machine.
func (c *planCheck) bound(tg *planTarget, p bplan, r planRun, st *runStats) {
	bound := planBound(p)
	if bound == 0 {
		return
	}
	var slack time.Duration
	for _, q := range p.qs {
		slack = max(slack, tg.granularity(q))
	}
	const margin = 1500 * time.Millisecond
	st.maxOver = max(st.maxOver, r.elapsed-bound)
	if r.elapsed > bound+slack+margin {
		c.fail("PROMISE 1: Wait took %v; its bound is %v + %v slack + %v margin", r.elapsed, bound, slack, margin)
	}
}

// cleanup checks promise 2: when Wait returns, every connection is back
// and no goroutine of the batch is left - but for the connections the
// plugin still holds for stopped statements (Stats.Reclaiming), which must
// come back within ReclaimTimeout.
func (c *planCheck) cleanup(tg *planTarget, r planRun, leakBase goleak.Option) {
	if r.inUse > r.held {
		c.fail("PROMISE 2: %d connections in use when Wait returned, %d held for stopped statements", r.inUse, r.held)
	}
	deadline := time.Now().Add(15 * time.Second)
	for tg.p.Stats().Reclaiming > 0 && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	if n := tg.p.Stats().Reclaiming; n > 0 {
		c.fail("PROMISE 2: %d connections held for stopped statements not back 15s after Wait", n)
	}
	if n := tg.sqlDB.Stats().InUse; n != 0 {
		c.fail("PROMISE 2: InUse = %d after Wait", n)
	}
	if e := goleak.Find(append([]goleak.Option{leakBase}, tg.leakIgnore...)...); e != nil {
		c.fail("PROMISE 2: goroutines left after Wait: %v", e)
	}
}

// results checks each query: one valid status, whose cause was planned,
// Err nil iff Done, a Stack iff Panicked, and its destination (promise 4).
// It returns the required queries not Done.
func (c *planCheck) results(p bplan, r planRun, st *runStats) (notDone []gormbatch.Result) {
	if len(r.rep.Results) != len(p.qs) {
		c.fail("%d results for %d queries", len(r.rep.Results), len(p.qs))
		return nil
	}
	requiredFailing, queryTimeouts := false, false
	for _, q := range p.qs {
		requiredFailing = requiredFailing || !q.optional && (q.kind.fails() || q.kind.panics())
		queryTimeouts = queryTimeouts || q.timeout > 0
	}
	calm := planBound(p) == 0
	exact := calm && !queryTimeouts && (!p.failFast || !requiredFailing) && !r.faulted
	for i, res := range r.rep.Results {
		q := p.qs[i]
		name := fmt.Sprintf("q%d", i)
		bad := func(format string, args ...any) {
			c.fail("%s (%v): %s (status %v, err %v)", name, q.kind, fmt.Sprintf(format, args...), res.Status, res.Err)
		}
		if res.Name != name || res.Optional != q.optional {
			bad("result %q optional %v", res.Name, res.Optional)
		}
		if res.Status < gormbatch.Done || res.Status > gormbatch.Panicked {
			bad("invalid status %d", int(res.Status))
			continue
		}
		st.status[res.Status]++
		if res.Killed {
			st.killed++
		}
		if (res.Err == nil) != (res.Status == gormbatch.Done) {
			bad("Err nil iff Done broken")
		}
		if (len(res.Stack) > 0) != (res.Status == gormbatch.Panicked) {
			bad("stack of %d bytes", len(res.Stack))
		}
		if why := plannedCause(p, q, res, r.faulted); why != "" {
			bad("%s", why)
		}
		if r.faulted && !q.kind.fails() && res.Status == gormbatch.Failed {
			st.failedByNetworkFault++
		}
		if exact {
			want := gormbatch.Done
			switch {
			case q.kind.fails():
				want = gormbatch.Failed
			case q.kind.panics():
				want = gormbatch.Panicked
			}
			if res.Status != want {
				bad("a batch without deadline or cancel must end this query %v", want)
			}
		}
		if e := r.added[i].check(res.Status == gormbatch.Done); e != nil {
			bad("PROMISE 4: destination: %v", e)
		}
		if res.Status != gormbatch.Done && !q.optional {
			notDone = append(notDone, res)
		}
	}
	return notDone
}

// plannedCause returns why a status was not possible for the plan, or "".
func plannedCause(p bplan, q qplan, res gormbatch.Result, faulted bool) string {
	switch res.Status {
	case gormbatch.Done:
		if q.kind.fails() || q.kind.panics() {
			return "a failing query ended Done"
		}
	case gormbatch.Failed:
		if !q.kind.fails() && !faulted {
			return "Failed without a failure planned"
		}
	case gormbatch.TimedOut:
		if !errors.Is(res.Err, context.DeadlineExceeded) {
			return "TimedOut without DeadlineExceeded"
		}
		if p.timeout == 0 && p.parentDL == 0 && q.timeout == 0 {
			return "TimedOut without a deadline"
		}
	case gormbatch.Canceled:
		if !errors.Is(res.Err, context.Canceled) && !errors.Is(res.Err, gormbatch.ErrFailFast) {
			return "Canceled without context.Canceled or ErrFailFast"
		}
		if p.cancelAfter == 0 && !p.failFast {
			return "Canceled without a cancel or FailFast"
		}
		if errors.Is(res.Err, gormbatch.ErrFailFast) && !p.failFast {
			return "ErrFailFast without FailFast"
		}
	case gormbatch.Skipped:
		if !errors.Is(res.Err, gormbatch.ErrSkipped) {
			return "Skipped without ErrSkipped"
		}
		if planBound(p) == 0 && !p.failFast {
			return "Skipped in a batch that cannot end early"
		}
	case gormbatch.Panicked:
		if !q.kind.panics() || !errors.Is(res.Err, gormbatch.ErrPanicked) {
			return "Panicked without a panic planned"
		}
	}
	return ""
}

// batchError checks Wait's error: nil iff every required query is Done,
// and otherwise an *Error listing exactly the required queries not Done.
func (c *planCheck) batchError(notDone []gormbatch.Result, err error) {
	var be *gormbatch.Error
	switch {
	case len(notDone) == 0 && err != nil:
		c.fail("every required query is Done, yet err %v", err)
	case len(notDone) > 0 && !errors.As(err, &be):
		c.fail("required queries not done, yet err %v", err)
	case len(notDone) > 0 && len(be.Failed) != len(notDone):
		c.fail("*Error lists %d queries, want %d", len(be.Failed), len(notDone))
	case len(notDone) > 0:
		for i := range notDone {
			if be.Failed[i].Name != notDone[i].Name {
				c.fail("*Error lists %s at %d, want %s", be.Failed[i].Name, i, notDone[i].Name)
			}
		}
	}
}

// leftovers checks promise 3: no tagged statement is left running on the
// server (a stopped statement leaves the process list just after it
// answered; later on a busy server).
func (c *planCheck) leftovers(tg *planTarget, faulted bool) {
	if tg.leftovers == nil {
		return
	}
	var n int64
	err := within(2*time.Second, func() (err error) {
		if n, err = tg.leftovers(); err == nil && n > 0 {
			err = fmt.Errorf("%d running", n)
		}
		return err
	})
	if err != nil && !(faulted && n > 0) {
		c.fail("PROMISE 3: tagged statements still on the server 2s after Wait: %v", err)
	}
}

// tally adds the plan and its run to st.
func (st *runStats) tally(p bplan, r planRun) {
	st.batches++
	st.queries += len(p.qs)
	st.waitTotal += r.elapsed
	st.waitMax = max(st.waitMax, r.elapsed)
	st.leftoverChecks++
	st.goroutineChecks++
	if r.err != nil {
		st.batchErrs++
	}
	if r.faulted {
		st.networkFaults++
	}
	if planBound(p) == 0 {
		st.calm++
	}
	for _, c := range []struct {
		on bool
		n  *int
	}{{p.timeout > 0, &st.batchTimeouts}, {p.cancelAfter > 0, &st.parentCancels}, {p.parentDL > 0, &st.parentDeadlines}, {p.failFast, &st.failFast}} {
		if c.on {
			*c.n++
		}
	}
	for _, q := range p.qs {
		st.kinds[q.kind]++
		for _, c := range []struct {
			on bool
			n  *int
		}{{q.timeout > 0, &st.queryTimeouts}, {q.optional, &st.optional}, {q.kind.fails(), &st.sqlErrors}, {q.kind.panics(), &st.panics}} {
			if c.on {
				*c.n++
			}
		}
	}
}
