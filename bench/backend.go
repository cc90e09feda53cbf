package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/gormbatch/gormbatch"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	gmysql "gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
)

const (
	defaultMariaDSN    = "root@tcp(127.0.0.1:3306)/test"
	defaultPostgresDSN = "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable"
	appName            = "gormbatch-bench" // PostgreSQL application_name of every bench connection
)

// backend is one database the figures run on. SQLite is embedded; MariaDB
// and PostgreSQL are servers, each with a monitor: one dedicated, long-lived
// connection for every server-side measurement (process list) and for
// stopping the heavy queries a round leaves, so measuring opens no
// connection of its own.
type backend struct {
	name    string // "sqlite", "mariadb", "postgres"
	label   string // "SQLite", "MariaDB", "PostgreSQL"
	dsn     string
	version string
	skip    string // why its figures are not measured; "" when it is up
	sleep   string // a query that sleeps 50 ms and returns one integer
	heavy   string // the CPU-heavy query (servers)
	lookup  string // a PK lookup with one placeholder (servers)

	monDB *sql.DB
	mon   *sql.Conn
}

func (k *backend) up() bool { return k.skip == "" }

// mariaHeavy counts seq_1_to_1000 × seq_1_to_1000 × seq_1_to_<c> (Sequence
// engine): with c=50, 50 M rows, about 2 s of one core on MariaDB 10.11.
// It starts with "SELECT /* tag */" so the plugin still sees a read.
func mariaHeavy(c int) string {
	return fmt.Sprintf("SELECT /* %s */ COUNT(*) FROM seq_1_to_1000 a, seq_1_to_1000 b, seq_1_to_%d c", heavyTag, c)
}

// pgHeavy counts n rows of generate_series: with 30 M, about 4 s of one
// core on PostgreSQL 15 (a function scan runs in one process).
func pgHeavy(n int) string {
	return fmt.Sprintf("SELECT /* %s */ count(*) FROM generate_series(1, %d)", heavyTag, n)
}

func sqliteBackend() *backend {
	return &backend{name: "sqlite", label: "SQLite", sleep: "SELECT nap(50)"}
}

// openServer connects the monitor of a MariaDB ("mariadb") or PostgreSQL
// ("postgres") server and stops heavy queries an interrupted run may have
// left. On failure the backend comes back with skip set.
func openServer(ctx context.Context, name, dsn string, o options) *backend {
	k := &backend{name: name, dsn: dsn}
	driverName := "mysql"
	switch name {
	case "mariadb":
		k.label, k.sleep, k.heavy = "MariaDB", "SELECT SLEEP(0.05)", mariaHeavy(o.heavyScale)
		k.lookup = "SELECT value FROM gb_bench_items WHERE id = ?"
	case "postgres":
		k.label, k.sleep, k.heavy = "PostgreSQL", "SELECT 1 FROM pg_sleep(0.05)", pgHeavy(o.pgHeavyRows)
		k.lookup, driverName = "SELECT value FROM gb_bench_items WHERE id = $1", "pgx"
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := k.openMonitor(cctx, driverName)
	if err == nil {
		_, err = k.killOrphans(cctx)
	}
	if err != nil {
		k.close()
		k.skip = fmt.Sprintf("%s unreachable at %s: %v", k.label, k.addr(), err)
	}
	return k
}

func (k *backend) openMonitor(ctx context.Context, driverName string) error {
	db, err := sql.Open(driverName, k.dsn)
	if err != nil {
		return err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	k.monDB = db
	if k.mon, err = db.Conn(ctx); err != nil {
		return err
	}
	if k.name == "postgres" {
		if err := k.mon.QueryRowContext(ctx, "SHOW server_version").Scan(&k.version); err != nil {
			return err
		}
		k.version, _, _ = strings.Cut(k.version, " ")
		return nil
	}
	if err := k.mon.QueryRowContext(ctx, "SELECT VERSION()").Scan(&k.version); err != nil {
		return err
	}
	var n int
	if err := k.mon.QueryRowContext(ctx, "SELECT COUNT(*) FROM seq_1_to_3").Scan(&n); err != nil || n != 3 {
		return fmt.Errorf("server %s has no Sequence engine (seq_1_to_N): MariaDB is required (%v)", k.version, err)
	}
	return nil
}

// close stops what the run left on the server, drops the table and closes
// the monitor.
func (k *backend) close() {
	if k.mon != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
		k.killOrphans(ctx)
		if k.version != "" {
			k.mon.ExecContext(ctx, "DROP TABLE IF EXISTS gb_bench_items")
		}
		cancel()
		k.mon.Close()
	}
	if k.monDB != nil {
		k.monDB.Close()
	}
}

// addr is the DSN without credentials, for messages.
func (k *backend) addr() string {
	switch k.name {
	case "mariadb":
		if cfg, err := mysql.ParseDSN(k.dsn); err == nil {
			return cfg.Net + "(" + cfg.Addr + ")/" + cfg.DBName
		}
	case "postgres":
		if cfg, err := pgconn.ParseConfig(k.dsn); err == nil {
			return fmt.Sprintf("%s:%d/%s", cfg.Host, cfg.Port, cfg.Database)
		}
	}
	return "(unparsable DSN)"
}

// openPair opens the plugin and naive pools. Instrumented pairs carry the
// stop clock (clock.go): the plugin gets stopHook, and the statements'
// returns are timestamped. Plain pairs (overhead, growth, concurrent,
// speedup) carry nothing but the connection counter, which costs nothing
// per query.
func (k *backend) openPair(instrumented bool) (*pair, error) {
	var hooks []gormbatch.Hook
	if instrumented {
		hooks = []gormbatch.Hook{stopHook{}}
	}
	return openPair(k.name, hooks, func(string) (gorm.Dialector, *countingConnector, error) {
		if k.name == "mariadb" {
			cfg, err := mysql.ParseDSN(k.dsn)
			if err != nil {
				return nil, nil, err
			}
			c, err := mysql.NewConnector(cfg)
			if err != nil {
				return nil, nil, err
			}
			cc := &countingConnector{Connector: c, clock: instrumented}
			return gmysql.New(gmysql.Config{Conn: sql.OpenDB(cc)}), cc, nil
		}
		cfg, err := pgx.ParseConfig(k.dsn)
		if err != nil {
			return nil, nil, err
		}
		cfg.RuntimeParams["application_name"] = appName
		if instrumented {
			cfg.Tracer = pgClock{}
		}
		cc := &countingConnector{Connector: stdlib.GetConnector(*cfg)}
		return postgres.New(postgres.Config{Conn: sql.OpenDB(cc)}), cc, nil
	})
}

// openSingle opens a pool of one connection of its own (the neighbour's).
func (k *backend) openSingle(ctx context.Context) (*sql.DB, error) {
	driverName := map[string]string{"mariadb": "mysql", "postgres": "pgx"}[k.name]
	db, err := sql.Open(driverName, k.dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// orphan is a server session running the tagged heavy query.
type orphan struct {
	id, queryID int64 // session (thread id, pid) and, on MariaDB, the query id
	ageMS       float64
}

// orphans lists the server sessions whose running statement carries the
// heavy query's tag: MariaDB information_schema.PROCESSLIST (command Query,
// Execute or Killed), PostgreSQL pg_stat_activity with state 'active'. The
// pattern is built with CONCAT (||) and the monitor's own session is
// excluded, so the listing never counts itself.
func (k *backend) orphans(ctx context.Context) ([]orphan, error) {
	q := `SELECT ID, COALESCE(QUERY_ID, 0), COALESCE(TIME_MS, 0) FROM information_schema.PROCESSLIST
		WHERE INFO LIKE CONCAT('%', 'gb-bench', '-heavy', '%') AND ID <> CONNECTION_ID()
		AND COMMAND IN ('Query', 'Execute', 'Killed')`
	if k.name == "postgres" {
		q = `SELECT pid, 0, COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - query_start) * 1000, 0)::float8
			FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || 'gb-bench' || '-heavy%'
			AND pid <> pg_backend_pid()`
	}
	rows, err := k.mon.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []orphan
	for rows.Next() {
		var o orphan
		if err := rows.Scan(&o.id, &o.queryID, &o.ageMS); err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

// killOrphans stops every tagged statement still running and waits until
// none is left: MariaDB KILL QUERY ID (it cannot hit a later statement),
// PostgreSQL pg_cancel_backend; after two seconds it escalates to KILL
// CONNECTION / pg_terminate_backend. It returns how many it stopped.
func (k *backend) killOrphans(ctx context.Context) (int, error) {
	killed := map[int64]bool{}
	deadline := time.Now().Add(5 * time.Second)
	escalate := time.Now().Add(2 * time.Second)
	for {
		os, err := k.orphans(ctx)
		if err != nil || len(os) == 0 {
			return len(killed), err
		}
		if time.Now().After(deadline) {
			return len(killed), fmt.Errorf("%d heavy queries still running after 5s of kills", len(os))
		}
		hard := time.Now().After(escalate)
		for _, o := range os {
			var stmt string
			switch {
			case k.name == "postgres" && hard:
				stmt = fmt.Sprintf("SELECT pg_terminate_backend(%d)", o.id)
			case k.name == "postgres":
				stmt = fmt.Sprintf("SELECT pg_cancel_backend(%d)", o.id)
			case hard:
				stmt = fmt.Sprintf("KILL CONNECTION %d", o.id)
			default:
				stmt = fmt.Sprintf("KILL QUERY ID %d", o.queryID)
			}
			_, err := k.mon.ExecContext(ctx, stmt)
			var me *mysql.MySQLError
			if err != nil && !(errors.As(err, &me) && (me.Number == 1957 || me.Number == 1094)) {
				return len(killed), fmt.Errorf("%s: %w", stmt, err)
			}
			killed[o.id] = true
		}
		time.Sleep(20 * time.Millisecond)
	}
}
