package gormbatch

import "time"

// Test hooks.

// IDLookups returns how many times p asked a MySQL server for a
// connection's thread id.
func IDLookups(p *Plugin) (n int64) {
	p.servers.Range(func(_, v any) bool {
		if s, ok := v.(*serverSlot).srv.Load().(*mysqlServer); ok {
			n += s.lookups.Load()
		}
		return true
	})
	return n
}

// Rewrite returns query with the server-side deadline as p would send it
// to a MariaDB (mariadb) or MySQL server.
func Rewrite(mariadb bool, query string, remainingMS int) string {
	s := &mysqlServer{mariadb: mariadb, limits: true}
	return s.limit(query, classify(query), time.Duration(remainingMS)*time.Millisecond)
}

// IsRead reports whether the plugin treats query as a read.
func IsRead(query string) bool { return classify(query).read }

// KillPoolWait returns how often, and how long in all, MySQL kills waited
// for one of the plugin's reserved kill connections.
func KillPoolWait(p *Plugin) (n int64, d time.Duration) {
	p.servers.Range(func(_, v any) bool {
		if s, ok := v.(*serverSlot).srv.Load().(*mysqlServer); ok {
			st := s.admin.Stats()
			n, d = n+st.WaitCount, d+st.WaitDuration
		}
		return true
	})
	return n, d
}
