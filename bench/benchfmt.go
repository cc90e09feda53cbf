package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
)

// benchLines collects results in the Go benchmark format (what
// `go test -bench` prints), written to bench.txt so that benchstat can
// compare two runs (`benchstat old.txt new.txt`) or the two modes of one
// (`benchstat -col /mode bench.txt`). Each line is one sample; names carry
// key=value parts (db, mode, size).
type benchLines struct {
	lines []string
}

// metric is one value of a line and its unit.
type metric struct {
	v    float64
	unit string
}

// customUnits are the units that are not Go's own, with what benchstat
// needs to know about them.
var customUnits = map[string]string{
	"cpu-ns/op":        "better=lower",
	"ms-past-deadline": "better=lower",
}

// add records one sample of Benchmark<name> over n iterations.
func (l *benchLines) add(name string, n int, ms ...metric) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "Benchmark%s-%d\t%8d", name, runtime.GOMAXPROCS(0), n)
	for _, m := range ms {
		fmt.Fprintf(&sb, "\t%s %s", pretty(m.v), m.unit)
	}
	l.lines = append(l.lines, sb.String())
}

// pretty formats like the testing package: fewer decimals for larger values.
func pretty(x float64) string {
	switch a := max(x, -x); {
	case a == 0 || a >= 100:
		return fmt.Sprintf("%.0f", x)
	case a >= 10:
		return fmt.Sprintf("%.1f", x)
	case a >= 1:
		return fmt.Sprintf("%.2f", x)
	default:
		return fmt.Sprintf("%.4g", x)
	}
}

// write writes the header (goos, goarch, pkg, cpu: keys that stay the same
// between runs on one machine, so benchstat puts two runs in one table),
// the unit declarations and the lines.
func (l *benchLines) write(path, cpu string) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "goos: %s\ngoarch: %s\npkg: github.com/gormbatch/gormbatch/bench\ncpu: %s\n",
		runtime.GOOS, runtime.GOARCH, cpu)
	for _, u := range []string{"cpu-ns/op", "ms-past-deadline"} {
		fmt.Fprintf(&sb, "Unit %s %s\n", u, customUnits[u])
	}
	for _, s := range l.lines {
		sb.WriteString(s)
		sb.WriteByte('\n')
	}
	return os.WriteFile(path, []byte(sb.String()), 0o644)
}
