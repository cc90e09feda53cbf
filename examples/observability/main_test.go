package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// lockedBuffer is a bytes.Buffer safe for the plugin's logger and the
// exporter to write to from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// span is the part of stdouttrace's JSON the test reads.
type span struct {
	Name        string
	SpanContext struct{ SpanID string }
	Parent      struct{ SpanID string }
	Status      struct{ Code, Description string }
	Attributes  []struct {
		Key   string
		Value struct{ Value any }
	}
	InstrumentationScope struct{ Name string }
}

func TestRun(t *testing.T) {
	var buf lockedBuffer
	if err := run(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.b.String()
	defer func() {
		if t.Failed() {
			t.Logf("output:\n%s", out)
		}
	}()
	sections := map[string][]string{}
	var header string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "== ") {
			header = strings.Fields(line)[1]
			continue
		}
		if line != "" {
			sections[header] = append(sections[header], line)
		}
	}

	// The log record of the timed-out query names the line of main.go
	// that added it.
	_, self, _, _ := runtime.Caller(0)
	mainGo := filepath.Join(filepath.Dir(self), "main.go")
	wantLine := lineOf(t, mainGo, `gormbatch.As("slow report")`)
	var found bool
	for _, line := range sections["slog"] {
		var rec struct {
			Msg, Query, Status string
			Source             struct {
				File string
				Line int
			}
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %v\n%s", err, line)
		}
		if rec.Status != "timed out" {
			continue
		}
		found = true
		if rec.Query != "slow report" || rec.Msg != "gormbatch: query timed out" {
			t.Errorf("timed-out record: %s", line)
		}
		if rec.Source.File != mainGo || rec.Source.Line != wantLine {
			t.Errorf("timed-out record's source %s:%d, want %s:%d", rec.Source.File, rec.Source.Line, mainGo, wantLine)
		}
	}
	if !found {
		t.Errorf("no JSON record with \"status\":\"timed out\" in %q", sections["slog"])
	}

	report := strings.Join(sections["report"], "\n")
	if !strings.Contains(report, "batch: 5 queries") || !strings.Contains(report, "timed out") {
		t.Errorf("report section:\n%s", report)
	}
	if s := sections["plugin"]; len(s) != 1 || !strings.HasPrefix(s[0], "{Batches:1 Done:4 ") || !strings.Contains(s[0], " TimedOut:1 ") {
		t.Errorf("stats section %q, want one line {Batches:1 Done:4 ... TimedOut:1 ...}", s)
	}

	// The trace: request > batch > 5 queries > their statements.
	spans := map[string]span{}
	byName := map[string]span{}
	for _, line := range sections["spans"] {
		var s span
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("span line is not JSON: %v\n%.200s", err, line)
		}
		spans[s.SpanContext.SpanID] = s
		byName[s.Name] = s
	}
	batch, ok := byName["gormbatch.batch dashboard"]
	if !ok {
		t.Fatalf("no batch span among %d spans", len(spans))
	}
	if p := spans[batch.Parent.SpanID]; p.Name != "GET /dashboard" {
		t.Errorf("batch span's parent is %q, want the request span", p.Name)
	}
	children := map[string]int{}
	for _, s := range spans {
		if s.InstrumentationScope.Name == "gorm.io/plugin/opentelemetry" {
			children[spans[s.Parent.SpanID].Name]++
		}
	}
	for _, name := range []string{"active users", "recent orders", "Count users", "top spender", "slow report"} {
		q, ok := byName["gormbatch.query "+name]
		if !ok {
			t.Errorf("no span for query %q", name)
			continue
		}
		if q.Parent.SpanID != batch.SpanContext.SpanID {
			t.Errorf("%s: parent %q, want the batch span", name, spans[q.Parent.SpanID].Name)
		}
		if children[q.Name] != 1 {
			t.Errorf("%s: %d statement spans under it, want 1", name, children[q.Name])
		}
		wantCode := "Unset"
		if name == "slow report" {
			wantCode = "Error"
		}
		if q.Status.Code != wantCode {
			t.Errorf("%s: status %+v, want %s", name, q.Status, wantCode)
		}
		for _, a := range q.Attributes {
			if a.Key == "code.file.path" && a.Value.Value != mainGo {
				t.Errorf("%s: code.file.path %v, want %s", name, a.Value.Value, mainGo)
			}
		}
	}
}

// lineOf returns the number of the one line of file containing s.
func lineOf(t *testing.T, file, s string) int {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, line := range strings.Split(string(src), "\n") {
		if strings.Contains(line, s) {
			if n != 0 {
				t.Fatalf("%q on lines %d and %d of %s", s, n, i+1, file)
			}
			n = i + 1
		}
	}
	if n == 0 {
		t.Fatalf("%q not in %s", s, file)
	}
	return n
}
