//! Charts as hand-written SVG: a latency percentile plot and a line chart over time.
//!
//! No plotting library: a chart is a few hundred bytes of paths, axes and labels, which any
//! browser (and GitHub) renders. Both functions return the whole document as a string.

use std::fmt::Write as _;

/// One line on a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend label.
    pub name: String,
    /// `[x, y]` points in data units.
    pub points: Vec<[f64; 2]>,
    /// Draw dashed (a secondary metric of the same target).
    pub dashed: bool,
    /// Palette index; series of one target share a colour (default: the series' position).
    pub color: Option<usize>,
}

impl Series {
    /// A solid series.
    pub fn new(name: impl Into<String>, points: Vec<[f64; 2]>) -> Series {
        Series {
            name: name.into(),
            points,
            dashed: false,
            color: None,
        }
    }
}

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 44.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 64.0;
const COLORS: [&str; 6] = [
    "#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#57606a",
];

/// Largest tail shown on the percentile axis: 99.999 %.
const MAX_NINES: f64 = 5.0;

/// A latency percentile chart: x is the percentile on a `1/(1-p)` log axis (0 % … 99.999 %),
/// y the latency in milliseconds on a log axis. Points are `[percentile, ms]`.
pub fn percentile_chart(title: &str, series: &[Series]) -> String {
    let nines = |pct: f64| -> f64 {
        let tail = (1.0 - pct / 100.0).max(10f64.powf(-MAX_NINES));
        (-tail.log10()).clamp(0.0, MAX_NINES)
    };
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p[1]))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = min_max(values).unwrap_or((0.1, 1.0));
    let y_lo = 10f64.powf(lo.max(1e-3).log10().floor());
    let y_hi = 10f64.powf(hi.max(y_lo * 10.0).log10().ceil());
    let plot = Plot {
        x0: 0.0,
        x1: MAX_NINES,
        y0: y_lo.log10(),
        y1: y_hi.log10(),
    };
    let mut out = header(title);
    // Grid and ticks.
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = plot.px(i as f64);
        vline(&mut out, x);
        tick_label(&mut out, x, HEIGHT - BOTTOM + 18.0, "middle", label);
    }
    let mut decade = y_lo;
    while decade <= y_hi * 1.0001 {
        let y = plot.py(decade.log10());
        hline(&mut out, y);
        tick_label(&mut out, LEFT - 8.0, y + 4.0, "end", &format_ms(decade));
        decade *= 10.0;
    }
    axes(&mut out, "percentile", "latency (ms)");
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p[1].is_finite() && p[1] > 0.0)
            .map(|p| {
                (
                    plot.px(nines(p[0])),
                    plot.py(p[1].clamp(y_lo, y_hi).log10()),
                )
            })
            .collect();
        polyline(&mut out, &pts, color(s, i), s.dashed);
    }
    legend(&mut out, series);
    out.push_str("</svg>\n");
    out
}

/// A line chart with linear axes starting at zero, e.g. deliveries per second over time.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p[0]));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p[1]));
    let (_, x_hi) = min_max(xs.filter(|v| v.is_finite())).unwrap_or((0.0, 1.0));
    let (_, y_hi) = min_max(ys.filter(|v| v.is_finite())).unwrap_or((0.0, 1.0));
    let x_step = nice_step(x_hi.max(1e-9) / 8.0);
    let y_step = nice_step(y_hi.max(1e-9) / 6.0);
    let plot = Plot {
        x0: 0.0,
        x1: (x_hi / x_step).ceil().max(1.0) * x_step,
        y0: 0.0,
        y1: (y_hi / y_step).ceil().max(1.0) * y_step,
    };
    let mut out = header(title);
    let mut x = 0.0;
    while x <= plot.x1 + x_step * 1e-6 {
        let px = plot.px(x);
        vline(&mut out, px);
        tick_label(
            &mut out,
            px,
            HEIGHT - BOTTOM + 18.0,
            "middle",
            &format_num(x),
        );
        x += x_step;
    }
    let mut y = 0.0;
    while y <= plot.y1 + y_step * 1e-6 {
        let py = plot.py(y);
        hline(&mut out, py);
        tick_label(&mut out, LEFT - 8.0, py + 4.0, "end", &format_num(y));
        y += y_step;
    }
    axes(&mut out, x_label, y_label);
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p[0].is_finite() && p[1].is_finite())
            .map(|p| (plot.px(p[0]), plot.py(p[1])))
            .collect();
        polyline(&mut out, &pts, color(s, i), s.dashed);
    }
    legend(&mut out, series);
    out.push_str("</svg>\n");
    out
}

/// Maps data coordinates to pixels.
struct Plot {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Plot {
    fn px(&self, x: f64) -> f64 {
        let span = (self.x1 - self.x0).max(1e-12);
        LEFT + (x - self.x0) / span * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        let span = (self.y1 - self.y0).max(1e-12);
        HEIGHT - BOTTOM - (y - self.y0) / span * (HEIGHT - TOP - BOTTOM)
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The 1, 2 or 5 times a power of ten nearest above `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn header(title: &str) -> String {
    let mut out = String::with_capacity(8 << 10);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    out
}

fn vline(out: &mut String, x: f64) {
    let _ = writeln!(
        out,
        "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#e6e6e6\"/>",
        HEIGHT - BOTTOM
    );
}

fn hline(out: &mut String, y: f64) {
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#e6e6e6\"/>",
        WIDTH - RIGHT
    );
}

fn tick_label(out: &mut String, x: f64, y: f64, anchor: &str, text: &str) {
    let _ = writeln!(
        out,
        "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" fill=\"#333\">{}</text>",
        escape(text)
    );
}

fn axes(out: &mut String, x_label: &str, y_label: &str) {
    let _ = writeln!(
        out,
        "<path d=\"M{LEFT},{TOP} V{} H{}\" fill=\"none\" stroke=\"#333\"/>",
        HEIGHT - BOTTOM,
        WIDTH - RIGHT
    );
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 18.0,
        escape(x_label)
    );
    let cy = TOP + (HEIGHT - TOP - BOTTOM) / 2.0;
    let _ = writeln!(
        out,
        "<text x=\"18\" y=\"{cy:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {cy:.1})\">{}</text>",
        escape(y_label)
    );
}

fn polyline(out: &mut String, pts: &[(f64, f64)], color: &str, dashed: bool) {
    if pts.is_empty() {
        return;
    }
    let mut d = String::with_capacity(pts.len() * 16);
    for (i, (x, y)) in pts.iter().enumerate() {
        let _ = write!(d, "{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" });
    }
    let dash = if dashed {
        " stroke-dasharray=\"6 4\""
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "<path d=\"{d}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>"
    );
}

fn legend(out: &mut String, series: &[Series]) {
    for (i, s) in series.iter().enumerate() {
        let y = TOP + 14.0 + 18.0 * i as f64;
        let x = LEFT + 14.0;
        let color = color(s, i);
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            x + 24.0,
            x + 30.0,
            y + 4.0,
            escape(&s.name)
        );
    }
}

fn color(s: &Series, position: usize) -> &'static str {
    COLORS[s.color.unwrap_or(position) % COLORS.len()]
}

/// Escapes text for an SVG text node or attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn format_ms(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        // 0.1, 0.01, 0.001 without float noise.
        let digits = (-ms.log10()).round().max(0.0) as usize;
        format!("{ms:.digits$}")
    }
}

fn format_num(v: f64) -> String {
    let abs = v.abs();
    if abs >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if abs >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn assert_well_formed(svg: &str) {
        let doc = roxmltree::Document::parse(svg).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert!(doc.descendants().any(|n| n.has_tag_name("path")));
    }

    #[test]
    fn percentile_chart_is_well_formed() {
        let a = Series::new(
            "plume <fanout> & co",
            vec![
                [0.0, 0.2],
                [90.0, 0.5],
                [99.0, 2.0],
                [99.9, 9.0],
                [100.0, 40.0],
            ],
        );
        let mut b = Series::new("socket.io", vec![[0.0, 1.0], [99.0, 30.0], [100.0, 300.0]]);
        b.dashed = true;
        let svg = percentile_chart("fanout latency", &[a, b]);
        assert_well_formed(&svg);
        assert!(svg.contains("plume &lt;fanout&gt; &amp; co"));
        assert!(svg.contains("99.999%"));
        assert!(svg.contains("stroke-dasharray"));
        // Two series lines plus the axes path.
        assert_eq!(svg.matches("<path").count(), 3);
    }

    #[test]
    fn line_chart_is_well_formed() {
        let s = Series::new(
            "deliveries/s",
            (0..50)
                .map(|i| [f64::from(i) * 0.1, 1e6 + f64::from(i)])
                .collect(),
        );
        let svg = line_chart("throughput", "seconds", "deliveries/s", &[s]);
        assert_well_formed(&svg);
        assert!(svg.contains("1M"));
    }

    #[test]
    fn empty_and_degenerate_input_still_renders() {
        assert_well_formed_no_path(&percentile_chart("empty", &[]));
        assert_well_formed_no_path(&line_chart("empty", "x", "y", &[]));
        let flat = Series::new("flat", vec![[0.0, 0.0], [0.0, 0.0]]);
        let svg = line_chart("flat", "x", "y", &[flat]);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_well_formed(&svg);
    }

    fn assert_well_formed_no_path(svg: &str) {
        let doc = roxmltree::Document::parse(svg).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
    }

    #[test]
    fn helpers() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.5), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1300.0), 2000.0);
        assert_eq!(format_ms(0.01), "0.01");
        assert_eq!(format_ms(100.0), "100");
        assert_eq!(format_num(1_500_000.0), "1.5M");
        assert_eq!(format_num(2_000.0), "2k");
        assert_eq!(format_num(0.5), "0.5");
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
