package gormbatch_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/gormbatch/gormbatch"
	gormmysql "gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Security of the kill path and of credentials.
//
// Review of the kill path (mysql.go, conn.go): the only statements the
// plugin builds are
//   - "KILL QUERY %d" with target.id, an int64 scanned from the server's own
//     SELECT CONNECTION_ID() on the pinned connection (bind);
//   - "DO SLEEP(0)" (consume), constant;
//   - "SET STATEMENT max_statement_time=%d.%03d FOR <query>" and the MySQL
//     "/*+ MAX_EXECUTION_TIME(%d) */" hint: integers computed from the
//     context deadline, around the caller's own statement;
//   - SELECT VERSION() and SELECT CONNECTION_ID(), constant.
//
// No name, tag, SQL text or argument of a query reaches a kill, and the
// admin pool is opened from the application pool's connector, so no DSN is
// ever formatted. The tests below check this on the wire (through the fault
// proxy, which records every statement) with hostile query text, and look
// for a password in every error, report and log line.

var (
	killRE     = regexp.MustCompile(`^KILL QUERY ([0-9]+)$`)
	deadlineRE = regexp.MustCompile(`^SET STATEMENT max_statement_time=[0-9]+\.[0-9]{3} FOR `)
)

const hostile = `x' OR 1=1; KILL CONNECTION 1; -- */ KILL QUERY 1 /* \'`

// checkPluginStatements checks every statement the plugin itself sent:
// kills carry digits only, and only ids the server reported for victims.
func checkPluginStatements(t *testing.T, stmts []string, victims map[int64]bool) (kills int) {
	t.Helper()
	for _, s := range stmts {
		switch {
		case strings.HasPrefix(strings.ToUpper(s), "KILL"):
			m := killRE.FindStringSubmatch(s)
			if m == nil {
				t.Errorf("kill statement with more than an id: %q", s)
				continue
			}
			id, _ := strconv.ParseInt(m[1], 10, 64)
			if victims != nil && !victims[id] {
				t.Errorf("kill of thread %d, not a victim (%v)", id, victims)
			}
			kills++
		case strings.HasPrefix(s, "SET STATEMENT"):
			if !deadlineRE.MatchString(s) {
				t.Errorf("server deadline statement: %q", s)
			}
		}
		if strings.Contains(s, "KILL CONNECTION 1") && !strings.Contains(s, "gbtest:") {
			t.Errorf("hostile text outside the victim's own statement: %q", s)
		}
	}
	return kills
}

// Kill statements are KILL QUERY <digits>, with the thread id the server
// reported for the victim, however hostile the victim's SQL text, arguments
// and name.
func TestMySQLKillStatementsAreDigits(t *testing.T) {
	px, s := openProxied(t, mysqlBackend, gormbatch.Config{NoServerDeadline: true, KillGrace: faultGrace})
	outside := mysqlBackend.open(t, mysqlDSN(), &gorm.Config{Logger: logger.Discard})
	tg := tag(t)
	quoted := strings.ReplaceAll(strings.ReplaceAll(hostile, `\`, `\\`), "'", "''")
	query := fmt.Sprintf("SELECT COUNT(*) FROM seq_1_to_1000 a, seq_1_to_1000 b, seq_1_to_200 c WHERE ? = '%s'", quoted) + mark(tg)
	victims := map[int64]bool{}
	for i := range 6 {
		found := make(chan int64, 1)
		go func() {
			id, _ := outside.session(tg, 3*time.Second)
			found <- id
		}()
		ctx, cancel := context.WithCancel(context.Background())
		b := gormbatch.From(s.WithContext(ctx))
		if i%2 == 0 {
			b = b.Timeout(200 * time.Millisecond)
		} else {
			time.AfterFunc(200*time.Millisecond, cancel)
		}
		n := int64(-7)
		rep, _ := b.Raw(&n, query, hostile, gormbatch.As(hostile)).Wait()
		cancel()
		id := <-found
		if id == 0 {
			t.Fatalf("the victim never showed up in PROCESSLIST\n%v", rep)
		}
		victims[id] = true
		r := rep.Results[0]
		if r.Status == gormbatch.Done || !r.Killed || n != -7 {
			t.Fatalf("victim: %v killed %v dest %d: %v", r.Status, r.Killed, n, r.Err)
		}
		outside.gone(t, tg, leaveWithin)
	}
	stmts := px.Statements()
	kills := checkPluginStatements(t, stmts, victims)
	t.Logf("%d statements through the proxy, %d kills, victims %v", len(stmts), kills, victims)
	if kills < 6 {
		t.Fatalf("%d kills seen for 6 cancelled queries", kills)
	}
	reclaimed(t, s.p, s.sqlDB)
}

const secretPW = "S3cr3t-pw-xyz"

// Errors, reports and logs (GORM's logger at Info level, the driver's
// logger) never contain the DSN password: batches with kills, SQL errors,
// panics and cut connections, a wrong password, and a kill pool that cannot
// log in.
func TestMySQLNoPasswordInErrorsOrLogs(t *testing.T) {
	root := mysqlBackend.open(t, mysqlDSN(), &gorm.Config{Logger: logger.Discard})
	// '%' as asked, plus localhost and 127.0.0.1: where the server has an
	// anonymous ''@'localhost' (mariadb-install-db), it would win over '%'
	// for a client it resolves to localhost.
	hosts := []string{"'gbsecret'@'%'", "'gbsecret'@'localhost'", "'gbsecret'@'127.0.0.1'"}
	setPassword := func(pw string) {
		t.Helper()
		for _, u := range hosts {
			for _, stmt := range []string{
				"CREATE USER IF NOT EXISTS " + u + " IDENTIFIED BY '" + pw + "'",
				"ALTER USER " + u + " IDENTIFIED BY '" + pw + "'",
				"GRANT ALL ON test.* TO " + u,
			} {
				if err := root.Exec(stmt).Error; err != nil {
					t.Fatalf("%s: %v", strings.ReplaceAll(stmt, pw, "***"), redact(err))
				}
			}
		}
	}
	setPassword(secretPW)
	t.Cleanup(func() {
		for _, u := range hosts {
			root.Exec("DROP USER IF EXISTS " + u)
		}
	})

	var logs gormbatch.SyncBuffer
	var seen []string // every error and report string produced
	note := func(rep *gormbatch.Report, err error) {
		if err != nil {
			seen = append(seen, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
		}
		if rep != nil {
			seen = append(seen, rep.String(), fmt.Sprintf("%+v", rep.Results))
			for _, r := range rep.Results {
				seen = append(seen, string(r.Stack))
				if r.Err != nil {
					seen = append(seen, r.Err.Error())
				}
			}
		}
	}
	var proxies []*faultProxy
	open := func(pw string, sc gormbatch.ServerCancel) (*gorm.DB, *sql.DB, *faultProxy, *gormbatch.Plugin) {
		mc, err := mysql.ParseDSN(mysqlDSN())
		if err != nil {
			t.Fatal(redact(err))
		}
		px := newFaultProxy(t, "mysql", mc.Addr)
		proxies = append(proxies, px)
		mc.Addr, mc.User, mc.Passwd = px.Addr(), "gbsecret", pw
		mc.Logger = log.New(&logs, "[mysql] ", 0)
		connector, err := mysql.NewConnector(mc)
		if err != nil {
			t.Fatal(err)
		}
		sqlDB := sql.OpenDB(connector)
		t.Cleanup(func() { sqlDB.Close() })
		db, err := gorm.Open(gormmysql.New(gormmysql.Config{Conn: sqlDB, SkipInitializeWithVersion: true}), &gorm.Config{
			DisableAutomaticPing: true,
			Logger:               logger.New(log.New(&logs, "[gorm] ", 0), logger.Config{LogLevel: logger.Info}),
		})
		if err != nil {
			t.Fatal(err)
		}
		p := gormbatch.New(gormbatch.Config{KillGrace: faultGrace, ServerCancel: sc,
			Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		if err := db.Use(p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return db, sqlDB, px, p
	}

	// The right password: kills, SQL errors, panics, a cut connection.
	// The plugin's own records go to logs too, at Debug.
	db, sqlDB, px, p := open(secretPW, gormbatch.ServerCancelAuto)
	tg := tag(t)
	for i := range 3 {
		var users []User
		var booms []Boom
		n, m, cut := int64(-1), int64(-1), int64(-1)
		if i == 2 {
			px.On(strings.TrimSpace(mark(tg+"cut")), cutAfter, 1, 50*time.Millisecond)
		}
		rep, err := gormbatch.From(db).Timeout(10*time.Second).
			Find(&users, "id <= ?", 3).
			Raw(&n, mysqlBackend.heavy(tg), gormbatch.As("killed"), gormbatch.WithTimeout(300*time.Millisecond)).
			Raw(&m, "SELECT * FROM gb_no_such_table").
			Find(&booms, "id <= 2", gormbatch.Optional()).
			Raw(&cut, mysqlBackend.medium(tg+"cut"), gormbatch.As("cut")).
			Wait()
		note(rep, err)
		if err == nil || len(users) != 3 {
			t.Fatalf("batch %d: %v\n%v", i, err, rep)
		}
		reclaimed(t, p, sqlDB)
	}
	root.gone(t, tg, leaveWithin)

	// A wrong password: every query fails to connect.
	bad, _, _, _ := open("wrong-"+secretPW+"-wrong", gormbatch.ServerCancelAuto)
	var users []User
	rep, err := gormbatch.From(bad).Timeout(2 * time.Second).Find(&users).Wait()
	note(rep, err)
	if err == nil || !strings.Contains(err.Error(), "Access denied") {
		t.Fatalf("wrong password: %v", err)
	}

	// The kill connections cannot log in (the password changed after the
	// application pool connected): server cancel setup fails. Under
	// ServerCancelAuto the query runs with the driver's cancel, and the
	// failure is counted and logged; under ServerCancelRequire it fails.
	late, lateSQL, _, lateP := open(secretPW, gormbatch.ServerCancelAuto)
	strict, strictSQL, _, _ := open(secretPW, gormbatch.ServerCancelRequire)
	for _, db := range []*sql.DB{lateSQL, strictSQL} {
		db.SetMaxIdleConns(4)
		if err := db.Ping(); err != nil { // an idle, logged-in connection
			t.Fatal(err)
		}
	}
	setPassword("another-pw-42")
	rep, err = gormbatch.From(late).Timeout(2 * time.Second).Find(&users).Wait()
	note(rep, err)
	if err != nil || lateP.Stats().SetupFailures == 0 || !strings.Contains(logs.String(), "setup failed") {
		t.Errorf("Auto without kill connections: %v, %+v\n%v", err, lateP.Stats(), rep)
	}
	rep, err = gormbatch.From(strict).Timeout(2 * time.Second).Find(&users).Wait()
	note(rep, err)
	if err == nil {
		t.Errorf("Require ran a query without server cancel\n%v", rep)
	}

	var stmts []string
	for _, p := range proxies {
		stmts = append(stmts, p.Statements()...)
	}
	checkPluginStatements(t, stmts, nil)
	all := append(seen, logs.String())
	all = append(all, stmts...)
	for _, s := range all {
		if strings.Contains(s, secretPW) {
			t.Errorf("the password leaked into: %q", strings.ReplaceAll(s, secretPW, "<PASSWORD>"))
		}
	}
	if !strings.Contains(logs.String(), "[gorm]") {
		t.Error("the GORM logger captured nothing: the check would be vacuous")
	}
	t.Logf("checked %d errors/reports, %d bytes of logs and %d statements", len(seen), len(logs.String()), len(stmts))
	if errors.Is(err, gormbatch.ErrNotRegistered) {
		t.Fatal("plugin not registered")
	}
}
