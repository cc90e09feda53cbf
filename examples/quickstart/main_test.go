package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// The quickstart runs as the README shows: four reads done, the slow
// report timed out and untouched, and Wait back near its deadline.
func TestQuickstart(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	t.Log("\n" + s)
	for _, want := range []string{
		"batch: 5 queries in ",
		"active users ", "recent orders ", "Count orders ", "top spender ",
		"33 active users, 500 orders, 5 recent",
		"slow report 0 (untouched)",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if n := strings.Count(s, " done "); n != 4 {
		t.Errorf("%d queries done, want 4", n)
	}
	if !regexp.MustCompile(`slow report +timed out `).MatchString(s) {
		t.Errorf("the slow report did not time out")
	}
}
