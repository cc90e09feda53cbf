package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gormbatch/gormbatch"
	"golang.org/x/sync/errgroup"
	"gorm.io/gorm"
)

// job is one query of a batch: a primary-key point read (pk > 0), or raw
// SQL scanned into an int64.
type job struct {
	pk  uint
	sql string
}

func pointReads(ids ...uint) []job {
	js := make([]job, len(ids))
	for i, id := range ids {
		js[i] = job{pk: id}
	}
	return js
}

func rawJobs(sql string, n int) []job {
	js := make([]job, n)
	for i := range js {
		js[i] = job{sql: sql}
	}
	return js
}

// outcome is what one batch run tells the figures.
type outcome struct {
	elapsed   time.Duration // from the start of the deadline (Wait, or the naive context) to the return
	total     time.Duration // including building the batch: what a caller pays
	cancelled int           // queries cut by the deadline (or never started)
	failed    int           // queries that failed on their own
	firstErr  error         // the first own failure, for warnings
}

// runner runs one batch of jobs under a deadline. tr, when not nil, is the
// batch's stop clock (clock.go); it is nil wherever the cost is measured.
type runner func(tr *stopTrace, jobs []job, timeout time.Duration) outcome

// pluginRunner runs the batch with gormbatch: point reads through the Take
// finder, raw SQL through the Raw finder.
func pluginRunner(db *gorm.DB) runner {
	return func(tr *stopTrace, jobs []job, timeout time.Duration) outcome {
		tb := time.Now()
		from := db
		if tr != nil {
			from = db.WithContext(withTrace(context.Background(), tr))
		}
		b := gormbatch.From(from).Timeout(timeout)
		dests := make([]Item, len(jobs))
		counts := make([]int64, len(jobs))
		for i, j := range jobs {
			if j.pk > 0 {
				b.Take(&dests[i], j.pk)
			} else {
				b.Raw(&counts[i], j.sql)
			}
		}
		t0 := time.Now()
		rep, err := b.Wait()
		o := outcome{elapsed: time.Since(t0), total: time.Since(tb)}
		if tr != nil {
			tr.setWaited()
		}
		if rep == nil {
			o.failed, o.firstErr = len(jobs), err
			return o
		}
		for _, r := range rep.Results {
			switch r.Status {
			case gormbatch.Done:
			case gormbatch.TimedOut, gormbatch.Canceled, gormbatch.Skipped:
				o.cancelled++
			default:
				o.failed++
				if o.firstErr == nil {
					o.firstErr = fmt.Errorf("%s %s: %w", r.Name, r.Status, r.Err)
				}
			}
		}
		return o
	}
}

// naiveRunner is the baseline without the plugin: an errgroup whose
// goroutines each run db.WithContext(ctx) under one context deadline.
func naiveRunner(db *gorm.DB) runner {
	return func(tr *stopTrace, jobs []job, timeout time.Duration) outcome {
		dests := make([]Item, len(jobs))
		errs := make([]error, len(jobs))
		t0 := time.Now()
		parent := context.Background()
		if tr != nil {
			parent = withTrace(parent, tr)
		}
		ctx, cancel := context.WithTimeout(parent, timeout)
		defer cancel()
		if tr != nil {
			dl, _ := ctx.Deadline()
			tr.setDeadline(dl)
		}
		var g errgroup.Group
		for i, j := range jobs {
			g.Go(func() error {
				qctx := ctx
				if tr != nil {
					qctx = context.WithValue(ctx, queryKey{}, i)
				}
				tx := db.WithContext(qctx)
				if j.pk > 0 {
					errs[i] = tx.Take(&dests[i], j.pk).Error
				} else {
					var n int64
					errs[i] = tx.Raw(j.sql).Scan(&n).Error
				}
				return errs[i]
			})
		}
		g.Wait()
		o := outcome{elapsed: time.Since(t0)}
		o.total = o.elapsed
		if tr != nil {
			tr.setWaited()
		}
		for _, err := range errs {
			switch {
			case err == nil:
			case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
				o.cancelled++
			default:
				o.failed++
				if o.firstErr == nil {
					o.firstErr = err
				}
			}
		}
		return o
	}
}

// sequentialRunner runs the jobs one after another on db (no plugin), each
// under the same deadline.
func sequentialRunner(db *gorm.DB) runner {
	return func(_ *stopTrace, jobs []job, timeout time.Duration) outcome {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		o := outcome{}
		for _, j := range jobs {
			tx := db.WithContext(ctx)
			var err error
			if j.pk > 0 {
				var it Item
				err = tx.Take(&it, j.pk).Error
			} else {
				var n int64
				err = tx.Raw(j.sql).Scan(&n).Error
			}
			if err != nil {
				o.failed++
				if o.firstErr == nil {
					o.firstErr = err
				}
			}
		}
		o.elapsed = time.Since(t0)
		o.total = o.elapsed
		return o
	}
}

// mode is one way of running batches on one pool.
type mode struct {
	name string // "plugin" or "naive"
	run  runner
	db   *gorm.DB
}

func modes(p *pair) []mode {
	return []mode{{"plugin", pluginRunner(p.plugin), p.plugin}, {"naive", naiveRunner(p.naive), p.naive}}
}

// alternate returns the modes in round r's order: plugin first on even
// rounds, naive first on odd ones, so neither always runs on a warmer
// machine.
func alternate(ms []mode, r int) []mode {
	if r%2 == 0 {
		return ms
	}
	return []mode{ms[1], ms[0]}
}
