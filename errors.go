package gormbatch

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors, for errors.Is. Misuse and configuration errors wrap one
// of the first five; a query's Result.Err wraps its own error (SQL, driver),
// a context error, or ErrSkipped, ErrFailFast, ErrPanicked or
// ErrWriteInBatch.
var (
	// ErrNotRegistered: From was given a *gorm.DB without the plugin
	// (register it with db.Use(gormbatch.New(...))).
	ErrNotRegistered = errors.New("gormbatch: plugin not registered on this *gorm.DB")
	// ErrInvalidConfig: a Config or batch setting is out of range (a negative
	// or zero timeout, a Limit below 1, ...).
	ErrInvalidConfig = errors.New("gormbatch: invalid configuration")
	// ErrInvalidDest: a destination is nil, not a pointer, or used by two
	// queries of the same batch.
	ErrInvalidDest = errors.New("gormbatch: invalid destination")
	// ErrWaited: Wait was already called on this batch; a batch runs once and
	// takes no queries after Wait.
	ErrWaited = errors.New("gormbatch: batch already waited")
	// ErrUnsupported: the Config asks for server-side cancel on a dialect
	// that has none (ServerCancelRequire on, say, SQLite).
	ErrUnsupported = errors.New("gormbatch: unsupported by this dialect")
	// ErrSkipped is wrapped by the Err of a query that never started.
	ErrSkipped = errors.New("gormbatch: query skipped")
	// ErrFailFast is the cancel cause of queries stopped because another
	// required query failed in a FailFast batch.
	ErrFailFast = errors.New("gormbatch: canceled by fail-fast")
	// ErrPanicked is wrapped by the Err of a query that panicked.
	ErrPanicked = errors.New("gormbatch: query panicked")
	// ErrWriteInBatch: a query tried Create, Update or Delete. A batch runs
	// reads: a write cut by the deadline could be half applied.
	ErrWriteInBatch = errors.New("gormbatch: writes are not allowed in a batch")
)

// Error is returned by Wait when a required query did not end Done. It lists
// those queries; errors.Is and errors.As look through each query's Err.
type Error struct {
	Failed []Result // the required queries that are not Done, in batch order
}

// Error names every failed query with its status and error.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "gormbatch: %d required quer", len(e.Failed))
	if len(e.Failed) == 1 {
		b.WriteString("y")
	} else {
		b.WriteString("ies")
	}
	b.WriteString(" not done: ")
	for i, r := range e.Failed {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s %s: %v", r.Name, r.Status, r.Err)
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
