// Package gormbatch runs a batch of GORM read queries concurrently under one
// deadline, with asyncio.wait(timeout) semantics: queries that finish by the
// deadline keep their results, the rest are cancelled, and Wait reports a
// status for every query.
//
// Four promises hold on every path (deadline, parent cancel, FailFast,
// panic, driver error, stalled network, overload, transaction):
//
//  1. Bounded latency: Wait returns by the batch deadline plus at most
//     Config.KillGrace, with a Status per query.
//  2. Connections come back: when Wait returns, no goroutine of the batch
//     runs your code and every connection it took is back in the pool,
//     except connections of stopped statements, which the plugin holds,
//     writing no destination, until the server has stopped the statement
//     (at most Config.ReclaimTimeout), then returns them.
//  3. Cancelled means stopped on the server: MariaDB/MySQL by KILL QUERY,
//     PostgreSQL by the protocol's cancel request; the connection stays
//     open. SQLite's driver interrupts the statement.
//  4. Nothing half-written: a destination changes only if its query ends
//     Done, and Done means every statement of the query answered, without
//     error, before the query's deadline or cancel.
//
// Register the plugin once, keep it to close it, then build batches with
// From:
//
//	plugin := gormbatch.New(gormbatch.Config{})
//	if err := db.Use(plugin); err != nil { // once, at start-up
//		log.Fatal(err)
//	}
//	defer plugin.Close() // when closing the database
//
//	var users []User
//	var orders int64
//	var names []string
//	report := -1.0
//	rep, err := gormbatch.From(db.WithContext(ctx)).
//		Timeout(300*time.Millisecond). // the earlier of this and ctx's deadline
//		Find(&users, "active = ?", true).
//		Count(&orders, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&Order{}) })).
//		Pluck("name", &names, gormbatch.Scopes(func(tx *gorm.DB) *gorm.DB { return tx.Model(&Product{}).Order("id") })).
//		Raw(&report, slowReportSQL, gormbatch.As("slow report")).
//		Wait()
//
// The README (github.com/gormbatch/gormbatch) explains what happens on each
// server, and what does not hold.
package gormbatch
