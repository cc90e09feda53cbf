// Package gormbatchotel traces gormbatch batches and records their
// metrics with OpenTelemetry. It is a separate module, so the core
// gormbatch module has no OpenTelemetry dependency:
//
//	go get github.com/gormbatch/gormbatch/otel
//
// Register the hook NewHook returns in gormbatch.Config.Hooks:
//
//	db.Use(gormbatch.New(gormbatch.Config{Hooks: []gormbatch.Hook{gormbatchotel.NewHook()}}))
//
// # Traces
//
// Each batch is a span named "gormbatch.batch", or "gormbatch.batch NAME"
// when named with Batch.Name, a child of the span in the context of the
// *gorm.DB given to gormbatch.From. Its attributes: gormbatch.batch.name,
// gormbatch.batch.queries, and, when the batch has a deadline,
// gormbatch.batch.deadline (RFC 3339) and gormbatch.batch.overshoot
// (seconds Wait returned past it, 0 if before); at its end
// gormbatch.batch.done (queries that ended Done). When Wait returns an
// error, the span's status is Error.
//
// Each query is a child span of its batch's, named "gormbatch.query NAME"
// (the query's name as the Report shows it). Its context is the one GORM
// runs the query's statements under, so the statement spans of GORM's
// tracing plugin, gorm.io/plugin/opentelemetry/tracing, are its children.
// Its attributes: gormbatch.query.name, gormbatch.query.index,
// gormbatch.query.optional, code.file.path, code.line.number and
// code.function.name (the application's call that added the query), and
// at its end gormbatch.query.status ("done", "timed out", ...),
// gormbatch.query.waited and gormbatch.query.ran (seconds),
// gormbatch.query.rows and gormbatch.query.killed. A query that did not
// end Done has status Error and its error recorded. A skipped query, which
// never started, has a span covering its wait.
//
// The plugin's events become span events of the query's span:
// gormbatch.kill_sent, gormbatch.kill_answered, gormbatch.kill_failed,
// gormbatch.cut, gormbatch.handoff, gormbatch.reclaimed,
// gormbatch.server_limit and gormbatch.setup_failed, with db.system.name,
// gormbatch.event.server, gormbatch.event.elapsed (seconds),
// gormbatch.event.late and gormbatch.event.error where they apply. Events
// after the query ended (those of a handed-off connection) are only
// counted in the metrics.
//
// # Metrics
//
//	gormbatch.queries             counter    {query}       queries ended, by gormbatch.query.status
//	gormbatch.kills               counter    {kill}        server-side stops, by gormbatch.kill.result:
//	                                                       sent, answered, late (answered after
//	                                                       KillGrace), failed
//	gormbatch.cuts                counter    {connection}  sockets the plugin closed
//	gormbatch.handoffs            counter    {connection}  connections handed off at the end of KillGrace
//	gormbatch.server_limit_stops  counter    {statement}   statements stopped by the server-side limit
//	gormbatch.kill.duration       histogram  s             the server's answer time to a stop
//	gormbatch.wait.overshoot      histogram  s             time Wait returned past the batch deadline
//	                                                       (0 if before), for batches with a deadline
//
// All but gormbatch.queries and gormbatch.wait.overshoot carry
// db.system.name ("mysql", "mariadb", "postgresql", ...). Unlike
// gormbatch.Stats, where KillsAnswered includes KillsLate, the kill
// results are disjoint: answered + late counts every answer.
//
// # Contract
//
// The plugin calls the hook synchronously, from the goroutine of the batch
// or of a query; the hook only starts and ends spans and adds to
// instruments, holds no lock across calls and keeps the state of each
// batch and query in their contexts, so it is safe for concurrent use and
// one hook may serve several plugins.
package gormbatchotel
