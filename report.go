package gormbatch

import (
	"fmt"
	"strings"
	"time"
)

// Status is how a query of a batch ended. Every query ends in exactly one.
type Status int

const (
	// Done: every statement of the query returned without error before its
	// context ended (the batch deadline, its own timeout, the parent's
	// deadline or cancel, FailFast); its destination holds the result. An
	// answer that came later, or that the server gave because a kill or its
	// own time limit interrupted the statement, is never Done, whatever
	// value it carries.
	Done Status = iota + 1
	// Failed: the query returned an error of its own before its context
	// ended (SQL error, driver error, a kill that was not the plugin's, a
	// refused write).
	Failed
	// TimedOut: a deadline ended the query (the batch's, its own timeout,
	// the parent context's, or the server-side statement limit).
	TimedOut
	// Canceled: the parent context was cancelled, or FailFast stopped it.
	Canceled
	// Skipped: the query never started (the batch ended while it waited for a
	// slot).
	Skipped
	// Panicked: the query panicked (in a closure or a GORM hook); Result.Stack
	// holds the stack.
	Panicked
)

var statusNames = [...]string{"", "done", "failed", "timed out", "canceled", "skipped", "panicked"}

// String returns the status in words: "done", "timed out", ...
func (s Status) String() string {
	if s < Done || s > Panicked {
		return fmt.Sprintf("Status(%d)", int(s))
	}
	return statusNames[s]
}

// Result is the outcome of one query of a batch.
type Result struct {
	Name     string
	Status   Status
	Err      error // nil iff Done; wraps context errors or package sentinels
	Optional bool  // its failure does not fail the batch
	Waited   time.Duration
	Ran      time.Duration
	Rows     int64  // rows read by its top-level statements
	Killed   bool   // the plugin asked the server to stop one of its statements (not set when Done)
	Stack    []byte // set when Panicked
}

// Report lists every query of a batch in the order it was added.
type Report struct {
	Results []Result
	Elapsed time.Duration // from Wait's start to its return
}

// Done returns the results of the queries that ended Done.
func (r *Report) Done() []Result { return r.filter(true) }

// Pending returns the results of the queries that did not end Done, like the
// pending set of asyncio.wait (gormbatch has already cancelled them).
func (r *Report) Pending() []Result { return r.filter(false) }

func (r *Report) filter(done bool) []Result {
	var out []Result
	for _, res := range r.Results {
		if (res.Status == Done) == done {
			out = append(out, res)
		}
	}
	return out
}

// Get returns the first result with the given name.
func (r *Report) Get(name string) (Result, bool) {
	for _, res := range r.Results {
		if res.Name == name {
			return res, true
		}
	}
	return Result{}, false
}

// String formats the report as a table, one query a line, columns aligned:
//
//	batch: 2 queries in 301ms
//	  active users  done       waited 0s   ran 1ms    rows 33
//	  slow report   timed out  waited 0s   ran 301ms  rows 0  killed  (batch deadline 300ms: context deadline exceeded)
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "batch: %d %s in %v\n", len(r.Results), plural(len(r.Results), "query", "queries"), r.Elapsed.Round(time.Millisecond))
	rows := make([][5]string, len(r.Results))
	var width [5]int
	for i, res := range r.Results {
		rows[i] = [5]string{res.Name, res.Status.String(), "waited " + res.Waited.Round(time.Millisecond).String(),
			"ran " + res.Ran.Round(time.Millisecond).String(), fmt.Sprintf("rows %d", res.Rows)}
		for j, s := range rows[i] {
			width[j] = max(width[j], len(s))
		}
	}
	for i, res := range r.Results {
		line := " "
		for j, s := range rows[i] {
			line += fmt.Sprintf(" %-*s", width[j]+1, s)
		}
		if res.Killed {
			line += " killed"
		}
		if res.Err != nil {
			line += fmt.Sprintf("  (%s)", detail(res))
		}
		b.WriteString(strings.TrimRight(line, " "))
		b.WriteByte('\n')
	}
	return b.String()
}
