//! Minimal SVG charts (line charts and histograms) with no dependencies.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 360.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;

/// One line of a line chart.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// CSS colour.
    pub color: &'a str,
    /// Points (x, y), x ascending.
    pub points: Vec<(f64, f64)>,
}

fn nice_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let f = if n < 1.5 {
        1.0
    } else if n < 3.5 {
        2.0
    } else if n < 7.5 {
        5.0
    } else {
        10.0
    };
    f * mag
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn frame(title: &str, xl: &str, yl: &str, x: (f64, f64), y: (f64, f64), out: &mut String) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        L + (W - L - R) / 2.0,
        H - 12.0,
        esc(xl)
    );
    let _ = write!(
        out,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        T + (H - T - B) / 2.0,
        T + (H - T - B) / 2.0,
        esc(yl)
    );
    for (axis, (lo, hi)) in [(0, x), (1, y)] {
        let step = nice_step(hi - lo, 6.0);
        let mut v = (lo / step).ceil() * step;
        while v <= hi + step * 1e-9 {
            if axis == 0 {
                let px = sx(v, x);
                let _ = write!(
                    out,
                    r##"<line x1="{px}" y1="{}" x2="{px}" y2="{}" stroke="#ddd"/>"##,
                    T,
                    H - B
                );
                let _ = write!(
                    out,
                    r#"<text x="{px}" y="{}" text-anchor="middle">{}</text>"#,
                    H - B + 16.0,
                    fmt_tick(v)
                );
            } else {
                let py = sy(v, y);
                let _ = write!(
                    out,
                    r##"<line x1="{L}" y1="{py}" x2="{}" y2="{py}" stroke="#ddd"/>"##,
                    W - R
                );
                let _ = write!(
                    out,
                    r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                    L - 6.0,
                    py + 4.0,
                    fmt_tick(v)
                );
            }
            v += step;
        }
    }
    let _ = write!(
        out,
        r#"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        W - L - R,
        H - T - B
    );
}

fn sx(v: f64, (lo, hi): (f64, f64)) -> f64 {
    L + (v - lo) / (hi - lo).max(f64::MIN_POSITIVE) * (W - L - R)
}

fn sy(v: f64, (lo, hi): (f64, f64)) -> f64 {
    H - B - (v - lo) / (hi - lo).max(f64::MIN_POSITIVE) * (H - T - B)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn bounds(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    (lo, hi)
}

/// A line chart; the y axis starts at 0.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let x = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (_, yh) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let y = (0.0, yh * 1.08);
    let mut out = String::new();
    frame(title, x_label, y_label, x, y, &mut out);
    for (k, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(a, b)| format!("{:.1},{:.1}", sx(a, x), sy(b, y)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        let ly = T + 16.0 + 16.0 * k as f64;
        let _ = write!(
            out,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/>"#,
            W - R - 150.0,
            W - R - 130.0,
            s.color
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            W - R - 125.0,
            ly + 4.0,
            esc(s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A histogram of `values` in `bins` equal bins, with vertical markers.
pub fn histogram(
    title: &str,
    x_label: &str,
    values: &[f64],
    bins: usize,
    color: &str,
    markers: &[(&str, f64)],
) -> String {
    let (lo, hi) = bounds(values.iter().copied());
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for &v in values {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let ymax = counts.iter().copied().max().unwrap_or(1) as f64 * 1.08;
    let x = (lo, hi);
    let y = (0.0, ymax.max(1.0));
    let mut out = String::new();
    frame(title, x_label, "count", x, y, &mut out);
    for (i, &c) in counts.iter().enumerate() {
        let x0 = sx(lo + width * i as f64, x);
        let x1 = sx(lo + width * (i + 1) as f64, x);
        let y0 = sy(c as f64, y);
        let _ = write!(
            out,
            r#"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="{color}" stroke="white" stroke-width="0.5"/>"#,
            (x1 - x0).max(0.5),
            (H - B - y0).max(0.0)
        );
    }
    for (k, &(name, v)) in markers.iter().enumerate() {
        let px = sx(v.clamp(lo, hi), x);
        let _ = write!(
            out,
            r##"<line x1="{px:.1}" y1="{T}" x2="{px:.1}" y2="{}" stroke="#c00" stroke-dasharray="4 3"/>"##,
            H - B
        );
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{}" fill="#c00">{}</text>"##,
            px + 4.0,
            T + 14.0 + 14.0 * k as f64,
            esc(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_and_scaled() {
        let s = line_chart(
            "t",
            "x",
            "y",
            &[Series {
                name: "a<b",
                color: "red",
                points: vec![(0.0, 0.0), (10.0, 5.0)],
            }],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("a&lt;b"));
        // The last point sits at the right edge of the plot area.
        assert!(s.contains(&format!("{:.1},", W - R)));
        let h = histogram("h", "ms", &[1.0, 2.0, 2.0, 3.0], 3, "blue", &[("p50", 2.0)]);
        assert_eq!(h.matches("<rect x=").count(), 3 + 1);
        assert!(h.contains("p50"));
        assert!(histogram("e", "x", &[], 4, "blue", &[]).ends_with("</svg>\n"));
    }
}
