package gormbatch_test

import (
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// faultProxy is a loopback TCP proxy between the client and a MySQL or
// PostgreSQL server that injects network faults. It reads both directions
// at all times (so it sees a client hang up even while it holds its
// traffic) and forwards what it read unless the connection is stalled: a
// stalled connection accepts bytes and forwards nothing until it is resumed
// or closed.
//
// It also decodes the client's messages, so it records every statement
// sent through it (MySQL COM_QUERY and COM_STMT_PREPARE text; PostgreSQL
// Query and Parse text, and "CancelRequest" for a cancel request) and can
// act when a statement contains a given string: stall or cut the
// connection, before or after forwarding that statement.
type faultProxy struct {
	t      testing.TB
	target string
	decode func(pc *pconn, pending []byte) (stmts []string, rest []byte)
	ln     net.Listener
	wg     sync.WaitGroup

	mu       sync.Mutex
	cond     *sync.Cond
	closed   bool
	stallAll bool
	stallNew bool
	conns    map[*pconn]bool
	rules    []*rule
	stmts    []string
	nextID   int
	timers   []*time.Timer
	accepted int
	cuts     int // connections cut by a rule or CutAll
}

// action is what a rule does to the connection whose statement matched.
type action int

const (
	stallBefore   action = iota // hold the statement and all later traffic
	stallAfter                  // forward the statement, then hold all traffic
	cutBefore                   // close the connection instead of forwarding
	cutAfter                    // forward the statement, close after rule.delay
	observe                     // forward the statement, only notify
	stallAllAfter               // forward the statement, then hold every connection
)

type rule struct {
	substr string
	act    action
	delay  time.Duration
	times  int         // firings left; negative: unlimited
	fired  chan *pconn // gets the connection each time the rule fires
}

// pconn is one proxied connection.
type pconn struct {
	id             int
	client, server net.Conn
	stalled        bool // guarded by faultProxy.mu
	closed         bool
	lastSent       time.Time     // when the client last sent a statement
	started        bool          // PostgreSQL: the startup message was read
	hungUp         chan struct{} // closed when the client closes its side (it discarded the connection)
	c2s, s2c       pipe
}

type item struct {
	data  []byte
	after *rule // post-forward action
}

type pipe struct {
	q   []item
	eof bool
}

// newFaultProxy starts a proxy on 127.0.0.1 to target, a server speaking
// protocol ("mysql" or "postgres"); the test's cleanup closes it and waits
// for all its goroutines.
func newFaultProxy(t testing.TB, protocol, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, target: target, ln: ln, conns: map[*pconn]bool{}, decode: decodeMySQL}
	if protocol == "postgres" {
		p.decode = decodePostgres
	}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		p.nextID++
		p.accepted++
		pc := &pconn{id: p.nextID, client: c, server: s, stalled: p.stallNew, hungUp: make(chan struct{})}
		p.conns[pc] = true
		p.mu.Unlock()
		p.wg.Add(4)
		go p.readClient(pc)
		go p.readServer(pc)
		go p.writer(pc, &pc.c2s, s)
		go p.writer(pc, &pc.s2c, c)
	}
}

// readClient reads the client's bytes, records its statements and applies
// the rules they match.
func (p *faultProxy) readClient(pc *pconn) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	var pending []byte
	for {
		n, err := pc.client.Read(buf)
		if n > 0 {
			chunk := append([]byte(nil), buf[:n]...)
			var stmts []string
			p.mu.Lock()
			stmts, pending = p.decode(pc, append(pending, chunk...))
			p.stmts = append(p.stmts, stmts...)
			if len(stmts) > 0 {
				pc.lastSent = time.Now()
			}
			r := p.match(stmts)
			if r != nil && r.fired != nil {
				select {
				case r.fired <- pc:
				default:
				}
			}
			var after *rule
			if r != nil {
				switch r.act {
				case cutBefore:
					p.cuts++
					p.mu.Unlock()
					p.closeConn(pc)
					return
				case stallBefore:
					pc.stalled = true
				default:
					after = r
				}
			}
			pc.c2s.q = append(pc.c2s.q, item{data: chunk, after: after})
			p.cond.Broadcast()
			p.mu.Unlock()
		}
		if err != nil {
			p.mu.Lock()
			if !pc.closed {
				close(pc.hungUp)
			}
			pc.c2s.eof = true
			p.cond.Broadcast()
			p.mu.Unlock()
			return
		}
	}
}

func (p *faultProxy) readServer(pc *pconn) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := pc.server.Read(buf)
		p.mu.Lock()
		if n > 0 {
			pc.s2c.q = append(pc.s2c.q, item{data: append([]byte(nil), buf[:n]...)})
		}
		if err != nil {
			pc.s2c.eof = true
		}
		p.cond.Broadcast()
		p.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// writer forwards a direction's bytes while the connection flows. At the
// end of the stream it flushes what is queued (if flowing) and closes the
// connection. On a stalled connection the server's hang-up is held like its
// bytes, while the client's hang-up (it discarded the connection) closes
// the connection at once.
func (p *faultProxy) writer(pc *pconn, d *pipe, dst net.Conn) {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		for !pc.closed && !(len(d.q) > 0 && p.flowing(pc)) && !d.eof {
			p.cond.Wait()
		}
		if pc.closed {
			p.mu.Unlock()
			return
		}
		if len(d.q) > 0 && p.flowing(pc) {
			it := d.q[0]
			d.q = d.q[1:]
			// Stall before the statement leaves, so a fast answer cannot
			// slip through between the write and the stall.
			if r := it.after; r != nil && r.act == stallAfter {
				pc.stalled = true
			} else if r != nil && r.act == stallAllAfter {
				p.stallAll = true
			}
			p.mu.Unlock()
			if _, err := dst.Write(it.data); err != nil {
				p.closeConn(pc)
				return
			}
			if r := it.after; r != nil {
				p.mu.Lock()
				switch r.act {
				case cutAfter:
					if p.closed {
						break
					}
					p.cuts++
					p.timers = append(p.timers, time.AfterFunc(r.delay, func() { p.closeConn(pc) }))
				}
				p.cond.Broadcast()
				p.mu.Unlock()
			}
			continue
		}
		if d == &pc.s2c && !p.flowing(pc) {
			// The server hung up while the connection is stalled: a
			// stalled network does not deliver that either. Hold it.
			p.cond.Wait()
			p.mu.Unlock()
			continue
		}
		p.mu.Unlock() // end of stream, nothing (more) to forward
		p.closeConn(pc)
		return
	}
}

func (p *faultProxy) flowing(pc *pconn) bool { return !p.stallAll && !pc.stalled }

// decodeMySQL returns the statements of the complete command packets in
// pending (COM_QUERY, COM_STMT_PREPARE) and what is left.
func decodeMySQL(_ *pconn, pending []byte) (stmts []string, rest []byte) {
	for len(pending) >= 4 {
		size := int(pending[0]) | int(pending[1])<<8 | int(pending[2])<<16
		if len(pending) < 4+size {
			break
		}
		seq, payload := pending[3], pending[4:4+size]
		if seq == 0 && size > 0 && (payload[0] == 0x03 || payload[0] == 0x16) {
			stmts = append(stmts, string(payload[1:]))
		}
		pending = pending[4+size:]
	}
	return stmts, pending
}

// decodePostgres returns the statements of the complete frontend messages
// in pending (Query and Parse text; "CancelRequest" for a cancel request)
// and what is left. Messages before the startup message have no type byte.
func decodePostgres(pc *pconn, pending []byte) (stmts []string, rest []byte) {
	be32 := func(b []byte) int { return int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3]) }
	for {
		if !pc.started {
			if len(pending) < 8 || len(pending) < be32(pending) {
				return stmts, pending
			}
			switch code := be32(pending[4:]); code {
			case 80877102:
				stmts = append(stmts, "CancelRequest")
			case 80877103, 80877104: // SSL or GSS encryption request: the startup follows
			default:
				pc.started = true
			}
			pending = pending[be32(pending):]
			continue
		}
		if len(pending) < 5 || len(pending) < 1+be32(pending[1:]) {
			return stmts, pending
		}
		typ, payload := pending[0], pending[5:1+be32(pending[1:])]
		switch typ {
		case 'Q':
			stmts = append(stmts, strings.TrimRight(string(payload), "\x00"))
		case 'P':
			if i := strings.IndexByte(string(payload), 0); i >= 0 {
				q := string(payload[i+1:])
				if j := strings.IndexByte(q, 0); j >= 0 {
					stmts = append(stmts, q[:j])
				}
			}
		}
		pending = pending[1+be32(pending[1:]):]
	}
}

// match returns the first armed rule one of stmts matches, counting the
// firing. Called with mu held.
func (p *faultProxy) match(stmts []string) *rule {
	for _, s := range stmts {
		for _, r := range p.rules {
			if r.times != 0 && strings.Contains(s, r.substr) {
				if r.times > 0 {
					r.times--
				}
				return r
			}
		}
	}
	return nil
}

// On arms a rule: the next `times` statements containing substr (negative:
// all of them) trigger act on their connection. The returned channel
// receives the connection each time the rule fires.
func (p *faultProxy) On(substr string, act action, times int, delay time.Duration) <-chan *pconn {
	r := &rule{substr: substr, act: act, times: times, delay: delay, fired: make(chan *pconn, 64)}
	p.mu.Lock()
	p.rules = append(p.rules, r)
	p.mu.Unlock()
	return r.fired
}

// ClearRules disarms every rule.
func (p *faultProxy) ClearRules() {
	p.mu.Lock()
	p.rules = nil
	p.mu.Unlock()
}

// StallAll holds (true) or releases (false) the traffic of every connection,
// existing and new; connections stalled by a rule stay stalled.
func (p *faultProxy) StallAll(on bool) {
	p.mu.Lock()
	p.stallAll = on
	p.cond.Broadcast()
	p.mu.Unlock()
}

// StallNew makes connections accepted from now on start stalled (true),
// or not.
func (p *faultProxy) StallNew(on bool) {
	p.mu.Lock()
	p.stallNew = on
	p.mu.Unlock()
}

// Resume releases every stalled connection and stops stalling new ones.
func (p *faultProxy) Resume() {
	p.mu.Lock()
	p.stallAll, p.stallNew = false, false
	for pc := range p.conns {
		pc.stalled = false
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// CutAll closes every open connection.
func (p *faultProxy) CutAll() {
	p.mu.Lock()
	var all []*pconn
	for pc := range p.conns {
		all = append(all, pc)
	}
	p.cuts += len(all)
	p.mu.Unlock()
	for _, pc := range all {
		p.closeConn(pc)
	}
}

// CutRandom closes one open connection chosen by pick (an index below the
// number of candidates), preferring connections that sent a statement in
// the last 50ms, and reports whether there was one.
func (p *faultProxy) CutRandom(pick func(n int) int) bool {
	p.mu.Lock()
	var all, busy []*pconn
	for pc := range p.conns {
		all = append(all, pc)
		if time.Since(pc.lastSent) < 50*time.Millisecond {
			busy = append(busy, pc)
		}
	}
	if len(busy) > 0 {
		all = busy
	}
	if len(all) == 0 {
		p.mu.Unlock()
		return false
	}
	slices.SortFunc(all, func(a, b *pconn) int { return a.id - b.id })
	pc := all[pick(len(all))]
	p.cuts++
	p.mu.Unlock()
	p.closeConn(pc)
	return true
}

func (p *faultProxy) closeConn(pc *pconn) {
	p.mu.Lock()
	if pc.closed {
		p.mu.Unlock()
		return
	}
	pc.closed = true
	delete(p.conns, pc)
	p.cond.Broadcast()
	p.mu.Unlock()
	pc.client.Close()
	pc.server.Close()
}

// HungUp waits up to d for the client to close pc and reports whether it did.
func (p *faultProxy) HungUp(pc *pconn, d time.Duration) bool {
	select {
	case <-pc.hungUp:
		return true
	case <-time.After(d):
		return false
	}
}

// Statements returns every statement recorded so far.
func (p *faultProxy) Statements() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.stmts...)
}

// Counts returns how many connections were accepted and cut.
func (p *faultProxy) Counts() (accepted, cuts int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted, p.cuts
}

// Close stops the proxy, closes every connection and waits for its
// goroutines.
func (p *faultProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	for _, tm := range p.timers {
		tm.Stop()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.CutAll()
	p.wg.Wait()
}
