package gormbatch

import "time"

// Test hooks.

// IDLookups returns how many times p asked a server for a connection id.
func IDLookups(p *Plugin) (n int64) {
	p.servers.Range(func(_, v any) bool { n += v.(*server).lookups.Load(); return true })
	return n
}

// Consumed returns how many late kills p consumed with DO SLEEP(0).
func Consumed(p *Plugin) (n int64) {
	p.servers.Range(func(_, v any) bool { n += v.(*server).consumed.Load(); return true })
	return n
}

// Rewrite returns query with the server-side deadline as p would send it
// to a MariaDB (mariadb) or MySQL server.
func Rewrite(mariadb bool, query string, remainingMS int) string {
	t := &target{s: &server{mariadb: mariadb, limits: true}}
	return t.withDeadline(query, time.Duration(remainingMS)*time.Millisecond)
}
