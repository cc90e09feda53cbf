package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	pluginColor = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	pluginLight = color.RGBA{R: 140, G: 190, B: 225, A: 255}
	naiveColor  = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	goalColor   = color.RGBA{R: 200, G: 30, B: 30, A: 255}
	grey        = color.RGBA{R: 110, G: 110, B: 110, A: 255}
	// stepColors colour the stop-time steps, in pluginSteps order.
	stepColors = map[string]color.Color{
		"kill sent":          color.RGBA{R: 148, G: 103, B: 189, A: 255},
		"kill answered":      color.RGBA{R: 214, G: 39, B: 40, A: 255},
		"statement returned": color.RGBA{R: 44, G: 160, B: 44, A: 255},
		"connection back":    color.RGBA{R: 23, G: 190, B: 207, A: 255},
		"Wait returned":      color.RGBA{R: 127, G: 127, B: 127, A: 255},
	}
)

// drawChart writes a PNG: one panel per figure (backends side by side,
// plugin beside naive, the goal as a dashed red line where it is one
// number), the stop-time breakdown as stacked bars, and two growth panels.
func drawChart(res *Results, path string) error {
	byName := map[string][]*Figure{}
	for _, f := range res.Figures {
		byName[f.Name] = append(byName[f.Name], f)
	}
	var panels []*plot.Plot
	add := func(p *plot.Plot, err error) error {
		if err == nil {
			panels = append(panels, p)
		}
		return err
	}
	if err := add(overheadPanel(byName["overhead_ratio"], byName["overhead_cpu_ratio"])); err != nil {
		return err
	}
	if err := add(overshootPanel(byName["overshoot_p50_ms"], byName["overshoot_p99_ms"])); err != nil {
		return err
	}
	if err := add(stopTimePanel(res.StopTime)); err != nil {
		return err
	}
	for _, name := range []string{"alloc_bytes_per_query", "orphans_after_wait", "reconnects_per_cancel",
		"neighbour_p99_ratio", "overload_wait_p99_ms", "overload_reconnects_per_cancel", "overload_failed_fraction",
		"concurrent_batches_per_s", "concurrent_wait_p99_ms", "speedup_8x50ms"} {
		if err := add(figurePanel(name, byName[name])); err != nil {
			return err
		}
	}
	for _, g := range []struct {
		title, unit   string
		plugin, naive func(GrowthRow) float64
	}{
		{"growth: time per query", "µs per query",
			func(r GrowthRow) float64 { return r.PluginUsPerQuery }, func(r GrowthRow) float64 { return r.NaiveUsPerQuery }},
		{"growth: bytes allocated per query", "bytes per query",
			func(r GrowthRow) float64 { return r.PluginBytesPerQuery }, func(r GrowthRow) float64 { return r.NaiveBytesPerQuery }},
	} {
		if err := add(growthPlot(res.Growth, g.title, g.unit, g.plugin, g.naive)); err != nil {
			return err
		}
	}

	const cols = 3
	var tiles [][]*plot.Plot
	for i := 0; i < len(panels); i += cols {
		row := make([]*plot.Plot, cols)
		copy(row, panels[i:min(i+cols, len(panels))])
		tiles = append(tiles, row)
	}
	width, height := 16*vg.Inch, vg.Length(len(tiles))*4.6*vg.Inch+0.7*vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(100))
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())

	hdr := text.Style{Color: color.Black, Font: font.From(plot.DefaultFont, 15), XAlign: draw.XCenter, YAlign: draw.YTop, Handler: plot.DefaultTextHandler}
	sub := hdr
	sub.Font = font.From(plot.DefaultFont, 10)
	sub.Color = grey
	m := res.Meta
	dc.FillText(hdr, vg.Point{X: width / 2, Y: height - 10}, "gormbatch: plugin vs naive errgroup baseline, same run")
	dc.FillText(sub, vg.Point{X: width / 2, Y: height - 32}, fmt.Sprintf("%v · %v cores · %v · MariaDB %v · PostgreSQL %v · %v · dashed red line = goal",
		m["cpu_model"], m["nproc"], m["go_version"], orNA(m["mariadb_version"]), orNA(m["postgres_version"]), m["date"]))
	body := draw.Crop(dc, 0, 0, 0, -50)
	t := draw.Tiles{Rows: len(tiles), Cols: cols, PadX: vg.Millimeter * 12, PadY: vg.Millimeter * 12,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 4, PadLeft: vg.Millimeter * 4, PadRight: vg.Millimeter * 6}
	canvases := plot.Align(tiles, t, body)
	for j := range tiles {
		for i, p := range tiles[j] {
			if p != nil {
				p.Draw(canvases[j][i])
			}
		}
	}
	w, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(w); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// series is one colour of bars across the groups of a panel.
type series struct {
	name   string
	color  color.Color
	vals   []*float64
	lo, hi []float64 // whiskers (absolute), nil for none
}

// barsPanel draws groups of bars, one bar per series in each group.
func barsPanel(title, unit string, groups []string, ss []series, goal, ref *float64) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(12)
	p.Y.Label.Text = unit
	p.NominalX(groups...)
	p.X.Min, p.X.Max = -0.6, float64(len(groups))-0.4
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(10)
	top := 0.0
	if goal != nil {
		top = *goal
	}
	var pts plotter.XYs
	var lbls []string
	step := 0.7 / float64(len(ss))
	for s, se := range ss {
		vals := make(plotter.Values, len(groups))
		off := (float64(s) - float64(len(ss)-1)/2) * step
		var errPts plotter.XYs
		var errs plotter.YErrors
		for g, v := range se.vals {
			x := float64(g) + off
			if v == nil {
				if len(groups) > 0 {
					pts, lbls = append(pts, plotter.XY{X: x, Y: 0}), append(lbls, "n/a")
				}
				continue
			}
			vals[g] = math.Max(*v, 0)
			top = math.Max(top, *v)
			at := math.Max(*v, 0)
			if se.lo != nil && !math.IsNaN(se.lo[g]) {
				errPts = append(errPts, plotter.XY{X: x, Y: *v})
				errs = append(errs, struct{ Low, High float64 }{*v - se.lo[g], se.hi[g] - *v})
				top = math.Max(top, se.hi[g])
				at = math.Max(at, se.hi[g])
			}
			pts, lbls = append(pts, plotter.XY{X: x, Y: at}), append(lbls, label(*v))
		}
		bar, err := plotter.NewBarChart(vals, vg.Points(math.Min(36, 200/float64(len(ss)*max(1, len(groups))))))
		if err != nil {
			return nil, err
		}
		bar.XMin = off
		bar.Color = se.color
		bar.LineStyle.Width = 0
		p.Add(bar)
		p.Legend.Add(se.name, bar)
		if len(errPts) > 0 {
			eb, err := plotter.NewYErrorBars(struct {
				plotter.XYs
				plotter.YErrors
			}{errPts, errs})
			if err != nil {
				return nil, err
			}
			eb.LineStyle.Width = vg.Points(1.2)
			p.Add(eb)
		}
	}
	if top <= 0 {
		top = 1
	}
	p.Y.Min, p.Y.Max = 0, top*1.25
	for _, l := range []struct {
		y   *float64
		col color.Color
	}{{goal, goalColor}, {ref, grey}} {
		if l.y == nil {
			continue
		}
		line, err := plotter.NewLine(plotter.XYs{{X: p.X.Min, Y: *l.y}, {X: p.X.Max, Y: *l.y}})
		if err != nil {
			return nil, err
		}
		line.Color = l.col
		line.Width = vg.Points(1.5)
		line.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
		p.Add(line)
	}
	if len(pts) > 0 {
		l, err := plotter.NewLabels(plotter.XYLabels{XYs: pts, Labels: lbls})
		if err != nil {
			return nil, err
		}
		for i := range l.TextStyle {
			l.TextStyle[i].XAlign = draw.XCenter
			l.TextStyle[i].Font.Size = vg.Points(9)
		}
		l.Offset = vg.Point{Y: vg.Points(3)}
		p.Add(l)
	}
	return p, nil
}

// groupLabel is a backend's label, with whether the plugin meets the goal.
func groupLabel(f *Figure, what string) string {
	s := f.Backend
	if what != "" {
		s += " " + what
	}
	switch {
	case f.Meets == nil:
	case *f.Meets:
		s += "\ngoal: yes"
	default:
		s += "\ngoal: NO"
	}
	return s
}

// figurePanel draws one figure: plugin and naive bars per backend.
func figurePanel(name string, figs []*Figure) (*plot.Plot, error) {
	var groups []string
	pl := series{name: "plugin", color: pluginColor}
	nv := series{name: "naive", color: naiveColor}
	var goal *float64
	title, unit := name, ""
	for _, f := range figs {
		groups = append(groups, groupLabel(f, ""))
		pl.vals, nv.vals = append(pl.vals, f.Plugin), append(nv.vals, f.Naive)
		unit = f.Unit
		if f.Goal != nil && !strings.Contains(f.Goal.Text, "naive") {
			goal = f.Goal.Max
			if goal == nil {
				goal = f.Goal.Min
			}
			title = fmt.Sprintf("%s (goal %s)", name, f.Goal.Text)
		} else if f.Goal != nil {
			title = fmt.Sprintf("%s (goal %s)", name, f.Goal.Text)
		}
	}
	return barsPanel(title, unit, groups, []series{pl, nv}, goal, nil)
}

// overheadPanel draws the median per-round ratios plugin/naive of wall and
// CPU time per backend, with their p25–p75 as whiskers.
func overheadPanel(wall, cpu []*Figure) (*plot.Plot, error) {
	var groups []string
	ws := series{name: "wall time", color: pluginColor}
	cs := series{name: "process CPU", color: pluginLight}
	for i, f := range wall {
		groups = append(groups, groupLabel(f, ""))
		for _, x := range []struct {
			s *series
			f *Figure
		}{{&ws, f}, {&cs, cpu[i]}} {
			x.s.vals = append(x.s.vals, x.f.Ratio)
			lo, hi := math.NaN(), math.NaN()
			if sp := x.f.Spread["ratio"]; sp != nil {
				lo, hi = sp.P25, sp.P75
			}
			x.s.lo, x.s.hi = append(x.s.lo, lo), append(x.s.hi, hi)
		}
	}
	goal, one := 1.05, 1.0
	return barsPanel("overhead: plugin / naive per query, batch of 8 PK reads\n(median of per-round ratios, whiskers p25–p75; goal wall ≤ 1.05)",
		"ratio", groups, []series{ws, cs}, &goal, &one)
}

// overshootPanel draws overshoot p50 and p99, plugin and naive, per server.
func overshootPanel(p50, p99 []*Figure) (*plot.Plot, error) {
	var groups []string
	pl := series{name: "plugin", color: pluginColor}
	nv := series{name: "naive", color: naiveColor}
	for i, f := range p50 {
		for _, g := range []*Figure{f, p99[i]} {
			what := "p50"
			if g == p99[i] {
				what = "p99"
			}
			groups = append(groups, groupLabel(g, what))
			pl.vals, nv.vals = append(pl.vals, g.Plugin), append(nv.vals, g.Naive)
		}
	}
	return barsPanel("overshoot: Wait past a 200 ms deadline, 2 heavy + 2 PK reads\n(goals: p50 ≤ naive + 1 ms; p99 see results.json)",
		"ms past deadline", groups, []series{pl, nv}, nil, nil)
}

// stopTimePanel stacks the stop-time steps: for each server and mode, a
// p50 and a p99 bar whose segments are the steps' cumulative percentiles'
// differences (clamped at 0), so a bar's top is the step "Wait returned".
func stopTimePanel(st map[string]*StopTime) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "stop time after the deadline, by step (stacked)\nplugin: kill sent → answered → statement returned → connection back → Wait"
	p.Title.TextStyle.Font.Size = vg.Points(12)
	p.Y.Label.Text = "ms past deadline"
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	type column struct {
		label string
		steps []StopStep
		p99   bool
	}
	var cols []column
	for _, name := range []string{"mariadb", "postgres"} {
		s := st[name]
		if s == nil {
			continue
		}
		for _, mode := range []string{"plugin", "naive"} {
			steps := s.Plugin
			if mode == "naive" {
				steps = s.Naive
			}
			cols = append(cols, column{name + "\n" + mode + "\np50", steps, false}, column{name + "\n" + mode + "\np99", steps, true})
		}
	}
	if len(cols) == 0 {
		p.NominalX("not measured")
		return p, nil
	}
	labels := make([]string, len(cols))
	for i, c := range cols {
		labels[i] = c.label
	}
	p.NominalX(labels...)
	p.X.Tick.Label.Font.Size = vg.Points(8)
	top := 0.0
	var below *plotter.BarChart
	for _, step := range pluginSteps {
		vals := make(plotter.Values, len(cols))
		for i, c := range cols {
			prev := 0.0
			for _, s := range c.steps {
				at := s.AtP50
				if c.p99 {
					at = s.AtP99
				}
				if at == nil {
					continue
				}
				if s.Step == step {
					vals[i] = math.Max(0, *at-prev)
					top = math.Max(top, *at)
				}
				prev = math.Max(prev, *at)
			}
		}
		bar, err := plotter.NewBarChart(vals, vg.Points(22))
		if err != nil {
			return nil, err
		}
		bar.Color = stepColors[step]
		bar.LineStyle.Width = 0
		if below != nil {
			bar.StackOn(below)
		}
		below = bar
		p.Add(bar)
		p.Legend.Add(step, bar)
	}
	p.Y.Min, p.Y.Max = 0, math.Max(top, 1)*1.7
	return p, nil
}

func label(x float64) string {
	switch {
	case x == 0:
		return "0"
	case math.Abs(x) >= 100:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case math.Abs(x) >= 10:
		return strconv.FormatFloat(x, 'f', 1, 64)
	case math.Abs(x) >= 1:
		return strconv.FormatFloat(x, 'f', 2, 64)
	default:
		return strconv.FormatFloat(x, 'g', 3, 64)
	}
}

// growthPlot draws per-query cost against batch size (log2 axis), one line
// per backend and mode.
func growthPlot(rows []GrowthRow, title, unit string, plugin, naive func(GrowthRow) float64) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(12)
	p.X.Label.Text = "batch size (PK reads)"
	p.Y.Label.Text = unit
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = powersOfTwo{}
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.XOffs, p.Legend.YOffs = -vg.Points(12), -vg.Points(4)
	p.Legend.TextStyle.Font.Size = vg.Points(10)
	byBackend := map[string][]GrowthRow{}
	var backends []string
	for _, r := range rows {
		if _, ok := byBackend[r.Backend]; !ok {
			backends = append(backends, r.Backend)
		}
		byBackend[r.Backend] = append(byBackend[r.Backend], r)
	}
	glyphs := []draw.GlyphDrawer{draw.CircleGlyph{}, draw.TriangleGlyph{}, draw.SquareGlyph{}}
	dashes := [][]vg.Length{nil, {vg.Points(5), vg.Points(3)}, {vg.Points(2), vg.Points(2)}}
	ymax := 0.0
	for bi, b := range backends {
		for _, m := range []struct {
			name string
			val  func(GrowthRow) float64
			col  color.Color
		}{{"plugin", plugin, pluginColor}, {"naive", naive, naiveColor}} {
			var xys plotter.XYs
			for _, r := range byBackend[b] {
				xys = append(xys, plotter.XY{X: float64(r.Size), Y: m.val(r)})
				ymax = math.Max(ymax, m.val(r))
			}
			if len(xys) == 0 {
				continue
			}
			line, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, err
			}
			line.Color, pts.Color = m.col, m.col
			line.Width = vg.Points(1.5)
			line.Dashes = dashes[bi%len(dashes)]
			pts.Shape = glyphs[bi%len(glyphs)]
			p.Add(line, pts)
			p.Legend.Add(m.name+" "+b, line, pts)
		}
	}
	if ymax > 0 {
		p.Y.Max = ymax * 1.1
	}
	return p, nil
}

// powersOfTwo ticks a log axis at 1, 2, 4, ...
type powersOfTwo struct{}

func (powersOfTwo) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for x := 1.0; x <= max*1.0001; x *= 2 {
		if x >= min*0.9999 {
			ts = append(ts, plot.Tick{Value: x, Label: strconv.Itoa(int(x))})
		}
	}
	return ts
}
