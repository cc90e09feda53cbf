package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"strconv"

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
	naiveColor  = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	goalColor   = color.RGBA{R: 200, G: 30, B: 30, A: 255}
	grey        = color.RGBA{R: 110, G: 110, B: 110, A: 255}
)

// drawChart writes a PNG with one bar chart per figure (plugin vs naive on
// the figure's own axis, with its goal as a dashed line) and two growth
// panels.
func drawChart(res *Results, path string) error {
	const cols, rows = 3, 3
	var tiles [][]*plot.Plot
	var cur []*plot.Plot
	add := func(p *plot.Plot) {
		cur = append(cur, p)
		if len(cur) == cols {
			tiles, cur = append(tiles, cur), nil
		}
	}
	for _, f := range res.Figures {
		p, err := figurePlot(f)
		if err != nil {
			return err
		}
		add(p)
	}
	for _, g := range []struct {
		title, unit string
		plugin      func(GrowthRow) float64
		naive       func(GrowthRow) float64
	}{
		{"growth: time per query", "µs per query", func(r GrowthRow) float64 { return r.PluginUsPerQuery },
			func(r GrowthRow) float64 { return r.NaiveUsPerQuery }},
		{"growth: bytes allocated per query", "bytes per query", func(r GrowthRow) float64 { return r.PluginBytesPerQuery },
			func(r GrowthRow) float64 { return r.NaiveBytesPerQuery }},
	} {
		p, err := growthPlot(res.Growth, g.title, g.unit, g.plugin, g.naive)
		if err != nil {
			return err
		}
		add(p)
	}
	for len(cur) > 0 && len(cur) < cols {
		cur = append(cur, nil)
	}
	if cur != nil {
		tiles = append(tiles, cur)
	}

	const width, height = 15 * vg.Inch, 14 * vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(110))
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())

	// Header: what was run where.
	hdr := text.Style{Color: color.Black, Font: font.From(plot.DefaultFont, 15), XAlign: draw.XCenter, YAlign: draw.YTop, Handler: plot.DefaultTextHandler}
	sub := hdr
	sub.Font = font.From(plot.DefaultFont, 10)
	sub.Color = grey
	dc.FillText(hdr, vg.Point{X: width / 2, Y: height - 10}, "gormbatch: plugin vs naive errgroup baseline")
	dc.FillText(sub, vg.Point{X: width / 2, Y: height - 32}, fmt.Sprintf("%v · %v cores · %v · MariaDB %v · %v · dashed red line = goal",
		res.Meta["cpu_model"], res.Meta["nproc"], res.Meta["go_version"], orNA(res.Meta["mariadb_version"]), res.Meta["date"]))
	body := draw.Crop(dc, 0, 0, 0, -50)

	t := draw.Tiles{Rows: len(tiles), Cols: cols, PadX: vg.Millimeter * 10, PadY: vg.Millimeter * 10,
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

// figurePlot is one figure: a plugin bar, a naive bar, the goal line, and
// the values written above the bars.
func figurePlot(f *Figure) (*plot.Plot, error) {
	p := plot.New()
	goal := "≤"
	if f.Better == "higher" {
		goal = "≥"
	}
	title := fmt.Sprintf("%s (goal %s %g)", f.Name, goal, f.Goal)
	if f.Backend != "" {
		title += " · " + f.Backend
	}
	switch {
	case f.Meets == nil:
		title += "\nnot measured"
	case *f.Meets:
		title += "\nplugin meets the goal"
	default:
		title += "\nplugin MISSES the goal"
	}
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(12)
	p.Y.Label.Text = f.Unit
	p.NominalX("plugin", "naive")
	p.X.Min, p.X.Max = -0.6, 1.6
	p.Add(plotter.NewGrid())

	top := f.Goal
	var pts plotter.XYs
	var lbls []string
	for i, v := range []*float64{f.Plugin, f.Naive} {
		if v == nil {
			continue
		}
		bar, err := plotter.NewBarChart(plotter.Values{*v}, vg.Points(60))
		if err != nil {
			return nil, err
		}
		bar.XMin = float64(i)
		bar.Color = []color.Color{pluginColor, naiveColor}[i]
		bar.LineStyle.Width = 0
		p.Add(bar)
		top = math.Max(top, *v)
		pts = append(pts, plotter.XY{X: float64(i), Y: math.Max(*v, 0)})
		lbls = append(lbls, label(*v))
	}
	if top <= 0 {
		top = 1
	}
	p.Y.Min, p.Y.Max = 0, top*1.18

	goalLine, err := plotter.NewLine(plotter.XYs{{X: -0.6, Y: f.Goal}, {X: 1.6, Y: f.Goal}})
	if err != nil {
		return nil, err
	}
	goalLine.Color = goalColor
	goalLine.Width = vg.Points(1.5)
	goalLine.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
	p.Add(goalLine)

	if f.Plugin == nil && f.Naive == nil {
		pts, lbls = plotter.XYs{{X: 0.5, Y: top * 0.55}}, []string{orNA(f.Note).(string)}
	}
	if len(pts) > 0 {
		l, err := plotter.NewLabels(plotter.XYLabels{XYs: pts, Labels: lbls})
		if err != nil {
			return nil, err
		}
		for i := range l.TextStyle {
			l.TextStyle[i].XAlign = draw.XCenter
			l.TextStyle[i].Font.Size = vg.Points(12)
		}
		l.Offset = vg.Point{Y: vg.Points(4)}
		p.Add(l)
	}
	return p, nil
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
	p.Legend.TextStyle.Font.Size = vg.Points(11)
	byBackend := map[string][]GrowthRow{}
	var backends []string
	for _, r := range rows {
		if _, ok := byBackend[r.Backend]; !ok {
			backends = append(backends, r.Backend)
		}
		byBackend[r.Backend] = append(byBackend[r.Backend], r)
	}
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
			line, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, err
			}
			line.Color, pts.Color = m.col, m.col
			line.Width = vg.Points(1.5)
			if bi == 1 {
				line.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
				pts.Shape = draw.TriangleGlyph{}
			} else {
				pts.Shape = draw.CircleGlyph{}
			}
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
