package main

import (
	"math"
	"slices"
	"time"
)

// Figure is one headline entry of results.json: the plugin's value beside
// the naive baseline's, measured in the same run. Plugin and Naive are null
// when the figure could not be measured (its server unreachable or skipped).
type Figure struct {
	Name    string   `json:"name"`
	Backend string   `json:"backend"`
	Unit    string   `json:"unit"` // of Plugin and Naive
	Plugin  *float64 `json:"plugin"`
	Naive   *float64 `json:"naive"`
	// Ratio is plugin / naive. Where the modes ran in paired rounds it is
	// the median of the per-round ratios (Spread["ratio"]), not the ratio
	// of the two medians.
	Ratio *float64 `json:"ratio,omitempty"`
	// Spread holds the per-round distribution behind a value: "plugin",
	// "naive", "ratio" (per-round plugin/naive) or "diff" (per-round
	// plugin - naive).
	Spread map[string]*Spread `json:"spread,omitempty"`
	Goal   *Goal              `json:"goal,omitempty"`
	// Meets is whether the plugin meets Goal; null when not measured or
	// without a goal.
	Meets *bool          `json:"plugin_meets_goal"`
	Note  string         `json:"note,omitempty"`
	Extra map[string]any `json:"extra,omitempty"`

	phase string // the key its batches' own failures are counted under (bench.check)
}

// Goal is the plugin's target for a figure. Bounds relative to the naive
// baseline are resolved with this run's naive value.
type Goal struct {
	Text string   `json:"text"` // as written: "<= naive p50 + 1 ms"
	On   string   `json:"on"`   // "plugin" or "ratio": the value compared
	Max  *float64 `json:"max,omitempty"`
	Min  *float64 `json:"min,omitempty"`
}

// Spread summarises the per-round values of one quantity.
type Spread struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P25    float64 `json:"p25"`
	P75    float64 `json:"p75"`
	// Notch is median ± 1.58·IQR/√n (McGill, Tukey and Larsen's box-plot
	// notch): roughly a 95% interval of the median. Two back-to-back runs
	// should give medians within each other's notch.
	Notch [2]float64 `json:"notch"`
	// FirstHalf and SecondHalf are the medians of the first and the second
	// half of the rounds: their gap is the drift within this run.
	FirstHalf  float64 `json:"first_half"`
	SecondHalf float64 `json:"second_half"`
}

// newFigure returns an empty figure of the phase (a name shared by the
// figures measured on the same batches; see bench.check).
func newFigure(phase, name, backend, unit string) *Figure {
	return &Figure{Name: name, Backend: backend, Unit: unit, Extra: map[string]any{}, phase: phase + "/" + backend}
}

// set stores the plugin and naive values (NaN: not measured).
func (f *Figure) set(plugin, naive float64) {
	f.Plugin, f.Naive = finite(round3(plugin)), finite(round3(naive))
}

// setRatio stores the median of the per-round ratios and their spread.
func (f *Figure) setRatio(perRound []float64) {
	s := spreadOf(perRound)
	if s == nil {
		return
	}
	f.Ratio = finite(s.Median)
	f.spread("ratio", perRound)
}

func (f *Figure) spread(key string, xs []float64) {
	if s := spreadOf(xs); s != nil {
		if f.Spread == nil {
			f.Spread = map[string]*Spread{}
		}
		f.Spread[key] = s
	}
}

// atMost sets the goal "on <= max"; atLeast "on >= min".
func (f *Figure) atMost(on, text string, max float64) {
	f.Goal = &Goal{Text: text, On: on, Max: finite(round3(max))}
}

func (f *Figure) atLeast(on, text string, min float64) {
	f.Goal = &Goal{Text: text, On: on, Min: finite(round3(min))}
}

// judge sets Meets from the goal and the measured value.
func (f *Figure) judge() {
	f.Meets = nil
	g := f.Goal
	if g == nil {
		return
	}
	v := f.Plugin
	if g.On == "ratio" {
		v = f.Ratio
	}
	if v == nil || (g.Max == nil && g.Min == nil) {
		return
	}
	ok := (g.Max == nil || *v <= *g.Max) && (g.Min == nil || *v >= *g.Min)
	f.Meets = &ok
}

// spreadOf summarises xs in the order they were measured; nil if empty.
func spreadOf(xs []float64) *Spread {
	xs = slices.DeleteFunc(slices.Clone(xs), func(x float64) bool { return math.IsNaN(x) || math.IsInf(x, 0) })
	if len(xs) == 0 {
		return nil
	}
	s := &Spread{N: len(xs), Median: percentile(xs, 50), P25: percentile(xs, 25), P75: percentile(xs, 75)}
	h := 1.58 * (s.P75 - s.P25) / math.Sqrt(float64(len(xs)))
	s.Notch = [2]float64{round3(s.Median - h), round3(s.Median + h)}
	half := max(1, len(xs)/2)
	s.FirstHalf, s.SecondHalf = round3(percentile(xs[:half], 50)), round3(percentile(xs[len(xs)-half:], 50))
	s.Median, s.P25, s.P75 = round3(s.Median), round3(s.P25), round3(s.P75)
	return s
}

// percentile is the linearly interpolated percentile of xs (p in 0..100);
// NaN for no values.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	r := p / 100 * float64(len(s)-1)
	i := int(r)
	if i >= len(s)-1 {
		return s[len(s)-1]
	}
	return s[i] + (r-float64(i))*(s[i+1]-s[i])
}

// ratios returns a[i]/b[i].
func ratios(a, b []float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = a[i] / b[i]
	}
	return out
}

// diffs returns a[i]-b[i].
func diffs(a, b []float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = a[i] - b[i]
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// finite returns &x, or nil for NaN and infinities (JSON has no NaN).
func finite(x float64) *float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	return &x
}

func round3(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return x
	}
	return math.Round(x*1000) / 1000
}

func round1(x float64) float64 { return math.Round(x*10) / 10 }
