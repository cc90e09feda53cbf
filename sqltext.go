package gormbatch

import (
	"strings"
	"sync"
	"sync/atomic"
)

// stmtInfo is what the plugin reads from a statement's text: whether it is
// a read, and where its first SELECT keyword ends (for MySQL's
// MAX_EXECUTION_TIME hint).
type stmtInfo struct {
	read      bool
	selectEnd int // offset just after the first SELECT keyword; -1 if none
	hintAt    int // offset of a /*+ ... */ comment right after that SELECT; -1 if none
}

// stmtCache remembers classify's answers: GORM sends the same few
// statement texts over and over, and a lookup costs a fraction of reading
// one. It keeps at most stmtCacheMax texts of at most stmtCacheLen bytes
// (then it reads new texts each time), so statements that inline their
// values cannot grow it without bound.
type stmtCache struct {
	m    sync.Map    // statement text -> stmtInfo
	full atomic.Bool // n reached stmtCacheMax
	mu   sync.Mutex  // guards n
	n    int         // entries in m
}

const (
	stmtCacheMax = 512
	stmtCacheLen = 1024
)

// classify returns classify(sql), from the cache when it can.
func (c *stmtCache) classify(sql string) stmtInfo {
	if v, ok := c.m.Load(sql); ok {
		return v.(stmtInfo)
	}
	info := classify(sql)
	if len(sql) <= stmtCacheLen && !c.full.Load() {
		c.mu.Lock()
		if c.n < stmtCacheMax {
			if _, loaded := c.m.LoadOrStore(sql, info); !loaded {
				c.n++
			}
		}
		c.full.Store(c.n >= stmtCacheMax)
		c.mu.Unlock()
	}
	return info
}

// kw is a keyword classify looks at.
type kw uint8

const (
	kwNone kw = iota
	kwSelect
	kwWith
	kwExplain
	kwInto
	kwOtherRead    // SHOW, DESCRIBE, DESC, VALUES, TABLE
	kwWrite        // INSERT, UPDATE, DELETE, MERGE, REPLACE, CALL, DO, HANDLER, LOAD, COPY
	kwExplainFlags // words after which EXPLAIN's statement starts
)

// keyword returns tok's keyword, case-insensitively, without allocating.
func keyword(tok string) kw {
	var b [11]byte
	if len(tok) > len(b) {
		return kwNone
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		b[i] = c
	}
	switch string(b[:len(tok)]) { // a switch, not a map: no hashing per word
	case "SELECT":
		return kwSelect
	case "WITH":
		return kwWith
	case "EXPLAIN":
		return kwExplain
	case "INTO":
		return kwInto
	case "SHOW", "DESCRIBE", "DESC", "VALUES", "TABLE":
		return kwOtherRead
	case "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "CALL", "DO", "HANDLER", "LOAD", "COPY":
		return kwWrite
	case "ANALYZE", "EXTENDED", "PARTITIONS", "VERBOSE", "FORMAT", "=", "JSON", "TRADITIONAL", "TREE":
		return kwExplainFlags
	}
	return kwNone
}

// classify reads a statement's text. A statement is a read when its first
// keyword (after whitespace, comments and opening parentheses) is SELECT,
// WITH, SHOW, EXPLAIN, DESCRIBE/DESC, VALUES or TABLE, and no write keyword
// (INSERT, UPDATE, DELETE, MERGE, REPLACE, CALL, DO, HANDLER, LOAD, COPY)
// stands where a statement can start: first inside parentheses (a
// data-modifying CTE) or, in a WITH or EXPLAIN, after the CTE list or the
// options - unless "(" follows, which makes it a function such as
// REPLACE(...). INTO at the top level (SELECT ... INTO a table, a file or
// variables) and a second statement after ";" also make it a write. Locking
// reads (FOR UPDATE, FOR SHARE) are reads. Quoted text and comments are
// skipped; MySQL's executable comments (/*! ... */) are read as code.
func classify(sql string) stmtInfo {
	info := stmtInfo{selectEnd: -1, hintAt: -1}
	lx := lexer{s: sql}
	first := kwNone
	depth, selectDepth := 0, -1
	atStart := true // a statement may start at the next word
	for {
		tok, end := lx.next()
		if tok == "" {
			break
		}
		switch tok {
		case "(":
			depth++
			atStart = true
			continue
		case ")":
			depth = max(0, depth-1)
			// After a CTE body or EXPLAIN's options, the statement itself.
			atStart = depth == 0 && (first == kwWith || first == kwExplain)
			continue
		case ";":
			if t, _ := lx.peek(); t != "" {
				return info // a second statement
			}
			continue
		}
		word := keyword(tok)
		if first == kwNone {
			if word != kwSelect && word != kwWith && word != kwExplain && word != kwOtherRead {
				return info
			}
			first = word
		}
		if word == kwSelect && (selectDepth < 0 || depth < selectDepth) {
			info.selectEnd, info.hintAt, selectDepth = end, lx.hintNext(), depth
		}
		if word == kwInto && depth == 0 {
			return info
		}
		if atStart && word == kwWrite {
			if next, _ := lx.peek(); next != "(" {
				return info
			}
		}
		atStart = first == kwExplain && depth == 0 && (word == kwExplain || word == kwExplainFlags)
	}
	info.read = first != kwNone
	return info
}

// lexer splits SQL into words, numbers and single punctuation characters,
// skipping whitespace, comments and quoted text.
type lexer struct {
	s string
	i int
}

// next returns the next token and the offset just after it ("" at the end).
func (l *lexer) next() (string, int) {
	l.skip()
	if l.i >= len(l.s) {
		return "", l.i
	}
	start := l.i
	c := l.s[l.i]
	switch {
	case isWordByte(c):
		for l.i < len(l.s) && isWordByte(l.s[l.i]) {
			l.i++
		}
	case c == '\'' || c == '"' || c == '`':
		l.quoted(c)
		return "q", l.i // a literal or quoted identifier: never a keyword
	case c == '$' && l.dollar():
		return "q", l.i
	default:
		l.i++
	}
	return l.s[start:l.i], l.i
}

// peek returns the next token without consuming it.
func (l *lexer) peek() (string, int) {
	save := l.i
	t, e := l.next()
	l.i = save
	return t, e
}

// hintNext returns the offset of an optimizer-hint comment (/*+ ... */)
// that follows at once, or -1.
func (l *lexer) hintNext() int {
	j := l.i
	for j < len(l.s) && isSpace(l.s[j]) {
		j++
	}
	if strings.HasPrefix(l.s[j:], "/*+") {
		return j
	}
	return -1
}

// skip passes whitespace and comments; the markers of MySQL's executable
// comments (/*!, /*!50000, /*M!) are skipped and their content read.
func (l *lexer) skip() {
	for l.i < len(l.s) {
		rest := l.s[l.i:]
		switch {
		case isSpace(rest[0]):
			l.i++
		case strings.HasPrefix(rest, "--") || rest[0] == '#':
			if j := strings.IndexByte(rest, '\n'); j >= 0 {
				l.i += j + 1
			} else {
				l.i = len(l.s)
			}
		case strings.HasPrefix(rest, "/*!") || strings.HasPrefix(rest, "/*M!"):
			l.i += strings.IndexByte(rest, '!') + 1
			for l.i < len(l.s) && l.s[l.i] >= '0' && l.s[l.i] <= '9' {
				l.i++
			}
		case strings.HasPrefix(rest, "*/"): // end of an executable comment
			l.i += 2
		case strings.HasPrefix(rest, "/*"):
			if j := strings.Index(rest[2:], "*/"); j >= 0 {
				l.i += j + 4
			} else {
				l.i = len(l.s)
			}
		default:
			return
		}
	}
}

// quoted passes a quoted string or identifier; a doubled quote or a
// backslash escapes the quote.
func (l *lexer) quoted(q byte) {
	l.i++
	for l.i < len(l.s) {
		c := l.s[l.i]
		switch {
		case c == '\\' && q != '`':
			l.i += 2
			continue
		case c == q && l.i+1 < len(l.s) && l.s[l.i+1] == q:
			l.i += 2
			continue
		case c == q:
			l.i++
			return
		}
		l.i++
	}
}

// dollar passes a PostgreSQL dollar-quoted string ($$...$$, $tag$...$tag$)
// and reports whether there was one.
func (l *lexer) dollar() bool {
	rest := l.s[l.i:]
	j := 1
	for j < len(rest) && (isWordByte(rest[j]) && !(rest[j] >= '0' && rest[j] <= '9' && j == 1)) {
		j++
	}
	if j >= len(rest) || rest[j] != '$' {
		return false
	}
	tag := rest[:j+1]
	if k := strings.Index(rest[j+1:], tag); k >= 0 {
		l.i += j + 1 + k + len(tag)
	} else {
		l.i = len(l.s)
	}
	return true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

func isWordByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}
