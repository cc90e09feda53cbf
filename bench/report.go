package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"
	"text/tabwriter"
)

// Stability is results.json's "stability": for every figure measured in
// paired rounds, the interval two back-to-back runs must agree within.
type Stability struct {
	Note    string           `json:"note"`
	Figures []StabilityEntry `json:"figures"`
}

// StabilityEntry is one figure's per-round statistic and how far it moves.
type StabilityEntry struct {
	Name    string     `json:"name"`
	Backend string     `json:"backend"`
	Of      string     `json:"of"` // "ratio" (per-round plugin/naive) or "diff" (plugin - naive)
	Median  float64    `json:"median"`
	Notch   [2]float64 `json:"notch"`
	// AgreeWithin is the notch's width. Two runs of the same code on the
	// same machine agree when their notches overlap: their medians differ
	// by at most the mean of their two widths (-compare checks it).
	AgreeWithin float64 `json:"agree_within"`
	FirstHalf   float64 `json:"first_half"`
	SecondHalf  float64 `json:"second_half"`
	// HalvesAgree: this run's two halves differ by less than √2 ×
	// AgreeWithin (a half has half the rounds).
	HalvesAgree bool `json:"halves_agree"`
}

const stabilityNote = "For each figure measured in paired rounds, median ± 1.58·IQR/√n of the per-round values (the box-plot notch, " +
	"about a 95% interval of the median). Two back-to-back runs agree when their notches overlap (medians closer than the " +
	"mean of their agree_within; -compare old/results.json checks it); a larger gap is a change, or a machine that changed under the run. first_half and second_half " +
	"are the medians of this run's first and second half of rounds: their gap is the run's own drift. Tail figures (p99, " +
	"max, orphans, reconnects, neighbour, overload) come from few samples and are not listed: compare them on -long runs."

func stability(figs []*Figure) Stability {
	st := Stability{Note: stabilityNote, Figures: []StabilityEntry{}}
	for _, f := range figs {
		for _, of := range []string{"ratio", "diff"} {
			s := f.Spread[of]
			if s == nil {
				continue
			}
			w := round3(s.Notch[1] - s.Notch[0])
			st.Figures = append(st.Figures, StabilityEntry{Name: f.Name, Backend: f.Backend, Of: of,
				Median: s.Median, Notch: s.Notch, AgreeWithin: w, FirstHalf: s.FirstHalf, SecondHalf: s.SecondHalf,
				HalvesAgree: math.Abs(s.FirstHalf-s.SecondHalf) <= math.Sqrt2*w+1e-9})
		}
	}
	return st
}

func fmtVal(x *float64) string {
	if x == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", *x)
}

// fmtRatio shows the ratio with its per-round p25–p75.
func fmtRatio(f *Figure) string {
	if f.Ratio == nil {
		return ""
	}
	if s := f.Spread["ratio"]; s != nil {
		return fmt.Sprintf("%.3f [%.3f–%.3f]", *f.Ratio, s.P25, s.P75)
	}
	return fmt.Sprintf("%.3f", *f.Ratio)
}

func fmtGoal(f *Figure) string {
	g := f.Goal
	if g == nil {
		return ""
	}
	s := g.Text
	if g.On == "ratio" {
		s = "ratio " + s
	}
	if strings.Contains(g.Text, "naive") && g.Max != nil && f.Naive != nil {
		s += fmt.Sprintf(" (%.3g)", *g.Max)
	}
	return s
}

func meets(f *Figure) string {
	switch {
	case f.Meets == nil:
		return "n/a"
	case *f.Meets:
		return "yes"
	}
	return "NO"
}

func printTables(res *Results) {
	m := res.Meta
	fmt.Printf("\n%s, %d cores, %s, MariaDB %v, PostgreSQL %v\n\n", m["cpu_model"], m["nproc"], m["go_version"],
		orNA(m["mariadb_version"]), orNA(m["postgres_version"]))
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "figure\tbackend\tplugin\tnaive\tratio [p25–p75]\tgoal\tmeets\tunit")
	prev := ""
	for _, f := range res.Figures {
		if prev != "" && prev != f.Name {
			fmt.Fprintln(w, "\t\t\t\t\t\t\t")
		}
		prev = f.Name
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Name, f.Backend, fmtVal(f.Plugin), fmtVal(f.Naive),
			fmtRatio(f), fmtGoal(f), meets(f), f.Unit)
	}
	w.Flush()
	for _, f := range res.Figures {
		if f.Name == "overload_wait_p99_ms" && f.Extra["plugin_stats"] != nil {
			fmt.Printf("overload, %s: plugin Stats over its segments %v\n", f.Backend, f.Extra["plugin_stats"])
		}
	}

	for _, name := range []string{"mariadb", "postgres"} {
		st := res.StopTime[name]
		if st == nil {
			continue
		}
		fmt.Printf("\nstop time, %s: ms past the %g ms deadline (KillGrace %g ms); at = when, step = since the previous step\n",
			name, st.DeadlineMS, st.KillGraceMS)
		w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(w, "mode\tstep\tn\tat p50\tat p99\tstep p50\tstep p99\t")
		for _, x := range []struct {
			mode  string
			steps []StopStep
		}{{"plugin", st.Plugin}, {"naive", st.Naive}} {
			for _, s := range x.steps {
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t\n", x.mode, s.Step, s.N,
					fmtVal(s.AtP50), fmtVal(s.AtP99), fmtVal(s.IncP50), fmtVal(s.IncP99))
			}
		}
		w.Flush()
		fmt.Printf("plugin: %d handed off, %d kill failures, %d stopped by the server limit, %d not killed; stats %v\n",
			st.Handoffs, st.KillFailures, st.ServerLimitStops, st.NotKilled, st.PluginStats)
	}

	if len(res.Growth) > 0 {
		fmt.Println("\ngrowth: batches of N PK reads, per query")
		w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(w, "backend\tN\tbatches\tplugin µs\tnaive µs\tratio\tplugin B\tnaive B\tplugin allocs\tnaive allocs\t")
		for _, g := range res.Growth {
			fmt.Fprintf(w, "%s\t%d\t%d\t%.1f\t%.1f\t%.3f\t%.0f\t%.0f\t%.1f\t%.1f\t\n", g.Backend, g.Size, g.Batches,
				g.PluginUsPerQuery, g.NaiveUsPerQuery, g.TimeRatio, g.PluginBytesPerQuery, g.NaiveBytesPerQuery,
				g.PluginAllocsPerQ, g.NaiveAllocsPerQ)
		}
		w.Flush()
	}

	if len(res.Stability.Figures) > 0 {
		fmt.Println("\nstability: two back-to-back runs agree when their notches overlap (-compare old/results.json checks it)")
		w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(w, "figure\tbackend\tof\tmedian\tnotch\tagree within\t1st half\t2nd half\thalves agree\t")
		for _, s := range res.Stability.Figures {
			fmt.Fprintf(w, "%s\t%s\t%s\t%.3f\t%.3f–%.3f\t%.3f\t%.3f\t%.3f\t%v\t\n", s.Name, s.Backend, s.Of, s.Median,
				s.Notch[0], s.Notch[1], s.AgreeWithin, s.FirstHalf, s.SecondHalf, s.HalvesAgree)
		}
		w.Flush()
	}
}

func orNA(v any) any {
	if v == nil || v == "" {
		return "n/a"
	}
	return v
}

// compareRuns prints, for every stability figure of this run and the run
// in path (a results.json), whether the two notches overlap.
func compareRuns(path string, now Stability) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var old Results
	if err := json.Unmarshal(data, &old); err != nil {
		return err
	}
	prev := map[[3]string]StabilityEntry{}
	for _, s := range old.Stability.Figures {
		prev[[3]string{s.Name, s.Backend, s.Of}] = s
	}
	fmt.Printf("\ncompared with %s: the runs agree where the notches overlap\n", path)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "figure\tbackend\tof\tearlier\tnotch\tthis run\tnotch\tagree\t")
	agree, n := 0, 0
	for _, s := range now.Figures {
		o, ok := prev[[3]string{s.Name, s.Backend, s.Of}]
		if !ok {
			continue
		}
		ok = s.Notch[0] <= o.Notch[1] && o.Notch[0] <= s.Notch[1]
		n++
		if ok {
			agree++
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%.3f\t%.3f–%.3f\t%.3f\t%.3f–%.3f\t%v\t\n", s.Name, s.Backend, s.Of,
			o.Median, o.Notch[0], o.Notch[1], s.Median, s.Notch[0], s.Notch[1], ok)
	}
	w.Flush()
	fmt.Printf("%d of %d figures agree\n", agree, n)
	return nil
}
