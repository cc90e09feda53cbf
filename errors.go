package gormbatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinel errors, for errors.Is. Misuse and configuration errors wrap one
// of the first five; a query's Result.Err wraps its own error (SQL, driver),
// a context error, or ErrSkipped, ErrFailFast, ErrPanicked, ErrWriteInBatch
// or ErrTxBroken.
var (
	// ErrNotRegistered: From was given a *gorm.DB without the plugin
	// (register it with db.Use(gormbatch.New(...))).
	ErrNotRegistered = errors.New("gormbatch: plugin not registered on this *gorm.DB")
	// ErrInvalidConfig: a Config or batch setting is out of range (a negative
	// or zero timeout, a Concurrency below 1, an unknown ServerCancel, ...).
	ErrInvalidConfig = errors.New("gormbatch: invalid configuration")
	// ErrInvalidDest: a destination is nil, not a pointer, or used by two
	// queries of the same batch.
	ErrInvalidDest = errors.New("gormbatch: invalid destination")
	// ErrWaited: Wait was already called on this batch; a batch runs once and
	// takes no queries after Wait.
	ErrWaited = errors.New("gormbatch: batch already waited")
	// ErrUnsupported: the Config asks for server-side cancel where it cannot
	// work (ServerCancelRequire on, say, SQLite).
	ErrUnsupported = errors.New("gormbatch: unsupported by this dialect")
	// ErrSkipped is wrapped by the Err of a query that never started.
	ErrSkipped = errors.New("gormbatch: query skipped")
	// ErrFailFast is the cancel cause of queries stopped because another
	// required query failed in a FailFast batch.
	ErrFailFast = errors.New("gormbatch: canceled by fail-fast")
	// ErrPanicked is wrapped by the Err of a query that panicked. When the
	// panic value is an error, Err wraps it too.
	ErrPanicked = errors.New("gormbatch: query panicked")
	// ErrWriteInBatch: a query tried a statement that is not a read (Create,
	// Update, Delete, or an INSERT, UPDATE, ... through Raw, Exec or a
	// closure). It was refused before it was sent: a write cut by the
	// deadline could be half applied.
	ErrWriteInBatch = errors.New("gormbatch: writes are not allowed in a batch")
	// ErrTxBroken: inside a transaction, a cancelled statement did not
	// stop cleanly within KillGrace, so its connection (the transaction's)
	// was closed or may still receive the stop. Roll the transaction back.
	ErrTxBroken = errors.New("gormbatch: the transaction is no longer usable; roll it back")
)

// Error is returned by Wait when a required query did not end Done. It lists
// those queries; errors.Is and errors.As look through each query's Err.
type Error struct {
	Failed []Result // the required queries that are not Done, in batch order
}

// Error names every failed query once, with its status and error:
//
//	gormbatch: 2 required queries not done: orders (skipped: batch deadline 300ms: context deadline exceeded); users (failed: no such table: users)
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "gormbatch: %d required %s not done: ", len(e.Failed), plural(len(e.Failed), "query", "queries"))
	for i, r := range e.Failed {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s (%s: %s)", r.Name, r.Status, detail(r))
	}
	return b.String()
}

// Unwrap returns the Err of every failed query.
func (e *Error) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, r := range e.Failed {
		errs[i] = r.Err
	}
	return errs
}

// detail is a query's error without what its status already says.
func detail(r Result) string {
	if r.Err == nil {
		return ""
	}
	s := r.Err.Error()
	for _, prefix := range []string{ErrSkipped.Error() + ": ", ErrPanicked.Error() + ": ", "gormbatch: "} {
		s = strings.TrimPrefix(s, prefix)
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// timeoutError is the cause of a batch or query deadline set by Timeout or
// WithTimeout: "batch deadline 300ms: context deadline exceeded", which is
// context.DeadlineExceeded for errors.Is. It is formatted only when read.
type timeoutError struct {
	what string
	d    time.Duration
}

func (e timeoutError) Error() string {
	return e.what + " " + e.d.String() + ": " + context.DeadlineExceeded.Error()
}

func (e timeoutError) Unwrap() error { return context.DeadlineExceeded }
