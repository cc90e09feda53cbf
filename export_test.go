package gormbatch

import (
	"bytes"
	"sync"
	"time"
)

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
	return s.limit(query, classify(query), time.Now().Add(time.Duration(remainingMS)*time.Millisecond))
}

// IsRead reports whether the plugin treats query as a read.
func IsRead(query string) bool { return classify(query).read }

// StmtCache is the plugin's cache of what statement texts are.
type StmtCache = stmtCache

// IsRead reports whether the plugin treats query as a read, through c.
func (c *stmtCache) IsRead(query string) bool { return c.classify(query).read }

// Len returns how many texts c holds.
func (c *stmtCache) Len() (n int) {
	c.m.Range(func(_, _ any) bool { n++; return true })
	return n
}

// StmtCacheMax and StmtCacheLen are its bounds.
const StmtCacheMax, StmtCacheLen = stmtCacheMax, stmtCacheLen

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

// SyncBuffer is a log sink for tests: a bytes.Buffer that loggers on
// several goroutines may write to while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
