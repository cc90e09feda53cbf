package gormbatch

import (
	"fmt"

	"gorm.io/gorm"
)

// Callback names, namespaced like gorm's own.
const (
	cbBeforeQuery = "gormbatch:before_query"
	cbAfterQuery  = "gormbatch:after_query"
	cbBeforeRow   = "gormbatch:before_row"
	cbAfterRow    = "gormbatch:after_row"
	cbBeforeRaw   = "gormbatch:before_raw"
	cbAfterRaw    = "gormbatch:after_raw"
	cbNoWrite     = "gormbatch:no_write"
)

// registerCallbacks installs the gormbatch:* callbacks. Each finds its batch
// query through Statement.Context and does nothing for other statements.
// The Before callbacks run after any resolver's Before("*") callback, so a
// connection is pinned from the pool the resolver chose; the After
// callbacks put back what the Before ones replaced.
func registerCallbacks(db *gorm.DB) error {
	cb := db.Callback()
	if cb.Query().Get(cbBeforeQuery) != nil {
		return nil // already registered on this db
	}
	table := []struct {
		name     string
		callback interface {
			Register(string, func(*gorm.DB)) error
		}
		fn func(*gorm.DB)
	}{
		{cbBeforeQuery, cb.Query().Before("gorm:query"), enter(true)},
		{cbAfterQuery, cb.Query().After("gorm:after_query"), leave(true)},
		{cbBeforeRow, cb.Row().Before("gorm:row"), enter(false)},
		{cbAfterRow, cb.Row().After("gorm:row"), leave(false)},
		{cbBeforeRaw, cb.Raw().Before("gorm:raw"), enter(false)},
		{cbAfterRaw, cb.Raw().After("gorm:raw"), leave(true)},
		{cbNoWrite, cb.Create().Before("gorm:begin_transaction"), noWrite},
		{cbNoWrite, cb.Update().Before("gorm:begin_transaction"), noWrite},
		{cbNoWrite, cb.Delete().Before("gorm:begin_transaction"), noWrite},
	}
	for _, c := range table {
		if err := c.callback.Register(c.name, c.fn); err != nil {
			return fmt.Errorf("gormbatch: register callback %s: %w", c.name, err)
		}
	}
	return nil
}

// enter pins the statement's connection and, for Query statements
// (swap), points it at a private destination.
func enter(swap bool) func(*gorm.DB) {
	return func(db *gorm.DB) {
		if q := fromContext(db.Statement.Context); q != nil {
			q.enter(db, swap)
		}
	}
}

// leave publishes a successful statement's destination and restores what
// enter replaced. over tells whether the statement has finished on the
// server when its callbacks end (not so for Row, whose rows are read later).
func leave(over bool) func(*gorm.DB) {
	return func(db *gorm.DB) {
		if q := fromContext(db.Statement.Context); q != nil {
			q.leave(db, over)
		}
	}
}

// noWrite refuses Create, Update and Delete in a batch before their hooks
// run; statements of other kinds are checked by begin (conn.go).
func noWrite(db *gorm.DB) {
	if fromContext(db.Statement.Context) != nil {
		db.AddError(ErrWriteInBatch)
	}
}
