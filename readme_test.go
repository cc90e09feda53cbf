package gormbatch_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every Go block of the README is the code of a compiled Example or test
// of the repository, verbatim (line by line, leading whitespace aside), so
// the README's code cannot drift from code that compiles and runs. Output
// blocks that follow "prints" are an Example's // Output, or the
// quickstart's (checked by examples/quickstart's test).
func TestReadmeCodeBlocks(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var sources []string // the lines of every _test.go file of the repository, trimmed
	filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, "_test.go") {
			b, _ := os.ReadFile(path)
			sources = append(sources, normalize(string(b)))
		}
		return nil
	})
	blocks := regexp.MustCompile("(?s)```(\\w*)\\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	// The package doc's code block (tab-indented comment lines) too.
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range regexp.MustCompile(`(?m)(?:^//\t.*\n(?://\n)?)+`).FindAllString(string(doc), -1) {
		var lines []string
		for _, l := range strings.Split(b, "\n") {
			lines = append(lines, strings.TrimPrefix(strings.TrimPrefix(l, "//"), "\t"))
		}
		blocks = append(blocks, []string{"", "go", strings.Join(lines, "\n")})
	}
	goBlocks := 0
	for _, b := range blocks {
		lang, code := b[1], normalize(b[2])
		found := false
		for _, src := range sources {
			switch {
			case lang == "go":
				found = found || strings.Contains(src, code)
			case lang == "":
				// An Example's output appears after "// Output:" as
				// comment lines.
				found = found || strings.Contains(src, normalize(commented(b[2]))) || strings.HasPrefix(code, "Wait returned after")
			default: // shell
				found = true
			}
		}
		if lang == "go" {
			goBlocks++
		}
		if !found {
			t.Errorf("README %s block is no Example's or test's code:\n%s", lang, b[2])
		}
	}
	if goBlocks < 5 {
		t.Fatalf("found %d Go blocks in the README: the check would be vacuous", goBlocks)
	}
}

// normalize trims every line and drops empty ones.
func normalize(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// commented turns output lines into the "// " lines an Example's Output
// comment has.
func commented(s string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		out = append(out, "// "+l)
	}
	return strings.Join(out, "\n")
}
