package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"time"
)

// hogEnv makes the bench binary a CPU hog: it busy-loops one core for the
// duration in the variable, or until its parent is gone.
const hogEnv = "GORMBATCH_BENCH_HOG"

// runHog is the hog's main.
func runHog(v string) int {
	d, err := time.ParseDuration(v)
	if err != nil || d > 10*time.Minute {
		return 2
	}
	runtime.GOMAXPROCS(1)
	parent := os.Getppid()
	for end := time.Now().Add(d); time.Now().Before(end) && os.Getppid() == parent; {
		for i := range 1_000_000 {
			hogSink += i ^ hogSink
		}
	}
	return 0
}

// hogSink keeps the hog's loop from being optimised away.
var hogSink int

// hogs are the running hog processes, so that an interrupt can stop them.
var hogs struct {
	mu    sync.Mutex
	procs map[*exec.Cmd]bool
}

// startHogs re-executes the bench binary n times as a hog bounded to d.
func startHogs(n int, d time.Duration) ([]*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var cmds []*exec.Cmd
	for range n {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), hogEnv+"="+d.String())
		if err := cmd.Start(); err != nil {
			stopHogs(cmds)
			return nil, err
		}
		hogs.mu.Lock()
		if hogs.procs == nil {
			hogs.procs = map[*exec.Cmd]bool{}
		}
		hogs.procs[cmd] = true
		hogs.mu.Unlock()
		cmds = append(cmds, cmd)
	}
	return cmds, nil
}

// stopHogs kills the given hogs (by their own process) and reaps them.
func stopHogs(cmds []*exec.Cmd) {
	for _, cmd := range cmds {
		cmd.Process.Kill()
		cmd.Wait()
		hogs.mu.Lock()
		delete(hogs.procs, cmd)
		hogs.mu.Unlock()
	}
}

// stopAllHogs kills every hog still running (on interrupt).
func stopAllHogs() {
	hogs.mu.Lock()
	var cmds []*exec.Cmd
	for cmd := range hogs.procs {
		cmds = append(cmds, cmd)
	}
	hogs.mu.Unlock()
	stopHogs(cmds)
}

// overloadFigures run dashboard batches (2 CPU-heavy queries + 3 point
// reads, deadline 200 ms) from several client goroutines (8) for a segment,
// while two hog processes keep both cores busy; plugin and naive segments
// alternate. Per mode, over its segments:
//
//   - overload_wait_p99_ms: how long after the batch deadline Wait
//     (g.Wait) returned, p99 (p50 and max in extra). Goal: within
//     KillGrace plus a scheduler allowance (the machine is saturated on
//     purpose, so every wake-up waits for a time slice);
//   - overload_reconnects_per_cancel: Connect calls of the pool (counting
//     connector), from a pool primed to its 16 connections before the
//     segment until it has been primed back to them after it, divided by
//     the queries cancelled;
//   - overload_failed_fraction: batches (requests) with a query that failed
//     on its own (an error other than the deadline: say, the server
//     refusing connections) / batches.
//
// The plugin's Stats deltas over its segments are in the wait figure's
// extra.plugin_stats.
func (b *bench) overloadFigures(ctx context.Context, k *backend, p *pair) []*Figure {
	wait := newFigure("overload", "overload_wait_p99_ms", k.name, "ms past deadline")
	reco := newFigure("overload", "overload_reconnects_per_cancel", k.name, "new connections per cancel")
	fail := newFigure("overload", "overload_failed_fraction", k.name, "requests failed on their own / requests")
	allowance := b.o.schedulerAllowance
	wait.atMost("plugin", fmt.Sprintf("<= KillGrace %v + %v scheduler allowance", killGrace, allowance), ms(killGrace+allowance))
	reco.atMost("plugin", "<= 0.05 and <= naive", 0.05)
	figs := []*Figure{wait, reco, fail}
	if p == nil {
		return figs
	}
	phase := "overload/" + k.name
	type acc struct {
		over                         []float64
		requests, failedReq, cancels int
		conns                        int64
	}
	res := map[string]*acc{"plugin": {}, "naive": {}}
	var pluginStats map[string]int64
	segment := func(m mode) error {
		if err := prime(ctx, m.db, poolSize); err != nil {
			return err
		}
		m.run(nil, pointReads(b.ids(4)...), time.Second) // the plugin's kill connections are open
		c0, s0 := p.connects(m.name), p.pl.Stats()
		cmds, err := startHogs(2, b.o.overloadSegment+30*time.Second)
		if err != nil {
			return fmt.Errorf("start CPU hogs: %w", err)
		}
		time.Sleep(100 * time.Millisecond) // let them take the cores
		var mu sync.Mutex
		a := res[m.name]
		var wg sync.WaitGroup
		end := time.Now().Add(b.o.overloadSegment)
		for range b.o.overloadClients {
			rng := rand.New(rand.NewPCG(b.rng.Uint64(), 0))
			wg.Go(func() {
				for time.Now().Before(end) {
					jobs := rawJobs(k.heavy, 2)
					for range 3 {
						jobs = append(jobs, job{pk: uint(1 + rng.IntN(seedItems))})
					}
					tr := newStopTrace(len(jobs))
					o := m.run(tr, jobs, b.o.deadline)
					mu.Lock()
					b.check(phase, m.name, o)
					a.over = append(a.over, ms(tr.overshoot()))
					a.requests++
					a.cancels += o.cancelled
					if o.failed > 0 {
						a.failedReq++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		stopHogs(cmds)
		if _, err := k.killOrphans(ctx); err != nil {
			return err
		}
		waitReclaimed(p.pl)
		if err := prime(ctx, m.db, poolSize); err != nil {
			return err
		}
		a.conns += p.connects(m.name) - c0
		if m.name == "plugin" {
			d := statsDelta(s0, p.pl.Stats())
			if pluginStats == nil {
				pluginStats = d
			} else {
				for key, v := range d {
					pluginStats[key] += v
				}
			}
		}
		return nil
	}
	ms2 := modes(p)
	for r := range b.o.overloadRounds {
		for _, m := range alternate(ms2, r) {
			if err := segment(m); err != nil {
				b.warn("%s overload: %v", k.name, err)
				return figs
			}
		}
	}
	pa, na := res["plugin"], res["naive"]
	wait.set(percentile(pa.over, 99), percentile(na.over, 99))
	wait.Extra["plugin_p50_ms"], wait.Extra["naive_p50_ms"] = round3(percentile(pa.over, 50)), round3(percentile(na.over, 50))
	wait.Extra["plugin_max_ms"], wait.Extra["naive_max_ms"] = round3(percentile(pa.over, 100)), round3(percentile(na.over, 100))
	wait.Extra["plugin_requests"], wait.Extra["naive_requests"] = pa.requests, na.requests
	wait.Extra["plugin_stats"] = pluginStats
	wait.Note = fmt.Sprintf("%d clients × batches of 2 × %q + 3 PK reads, %v deadline, both cores saturated by 2 hog processes; %d × %v segments per mode",
		b.o.overloadClients, k.heavy, b.o.deadline, b.o.overloadRounds, b.o.overloadSegment)
	perCancel := func(a *acc) float64 { return float64(a.conns) / float64(a.cancels) }
	reco.set(perCancel(pa), perCancel(na))
	if reco.Naive != nil {
		reco.atMost("plugin", "<= 0.05 and <= naive", min(0.05, *reco.Naive))
	}
	reco.Extra["plugin_new_connections"], reco.Extra["naive_new_connections"] = pa.conns, na.conns
	reco.Extra["plugin_cancelled"], reco.Extra["naive_cancelled"] = pa.cancels, na.cancels
	fail.set(float64(pa.failedReq)/float64(pa.requests), float64(na.failedReq)/float64(na.requests))
	fail.Extra["plugin_failed_requests"], fail.Extra["naive_failed_requests"] = pa.failedReq, na.failedReq
	if fs := b.failed[phase]; fs != nil {
		fail.Extra["failed_queries"] = fs
	}
	return figs
}
