//! Small charts drawn by the node as SVG geometry (the templates emit the shapes;
//! no script, no external library), each with a text alternative.

/// One bar of a bar chart, in viewBox units.
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub label: String,
    pub value: u64,
    pub refused: bool,
}

/// A bar chart of counts per bucket (two series side by side: allowed and refused).
pub struct Bars {
    pub width: f64,
    pub height: f64,
    pub bars: Vec<Bar>,
    pub max: u64,
    /// Every few buckets' label under the axis: (x, text).
    pub ticks: Vec<(f64, String)>,
}

pub const W: f64 = 600.0;
pub const H: f64 = 200.0;
const BOTTOM: f64 = 20.0;

/// `series[i] = (label, allowed, refused)`.
pub fn bars(series: &[(String, u64, u64)]) -> Bars {
    let max = series
        .iter()
        .map(|(_, a, r)| (*a).max(*r))
        .max()
        .unwrap_or(0)
        .max(1);
    let n = series.len().max(1) as f64;
    let slot = W / n;
    let bw = (slot / 2.0 - 1.0).max(1.0);
    let scale = (H - BOTTOM - 10.0) / max as f64;
    let mut out = Vec::new();
    let mut ticks = Vec::new();
    let every = (series.len() / 6).max(1);
    for (i, (label, a, r)) in series.iter().enumerate() {
        let x0 = i as f64 * slot;
        for (k, (v, refused)) in [(*a, false), (*r, true)].into_iter().enumerate() {
            let h = v as f64 * scale;
            out.push(Bar {
                x: x0 + k as f64 * (bw + 1.0),
                y: H - BOTTOM - h,
                w: bw,
                h,
                label: label.clone(),
                value: v,
                refused,
            });
        }
        if i % every == 0 {
            ticks.push((x0, label.clone()));
        }
    }
    Bars {
        width: W,
        height: H,
        bars: out,
        max,
        ticks,
    }
}

/// A line through dated values (a vital sign over time).
pub struct Line {
    pub width: f64,
    pub height: f64,
    /// `points` attribute of the polyline.
    pub points: String,
    pub dots: Vec<(f64, f64, String)>,
    pub min: f64,
    pub max: f64,
}

/// `values` = (time in ms, value, text), oldest first.
pub fn line(values: &[(u64, f64, String)]) -> Line {
    let (t0, t1) = (
        values.iter().map(|v| v.0).min().unwrap_or(0),
        values.iter().map(|v| v.0).max().unwrap_or(1),
    );
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| {
        (lo.min(v.1), hi.max(v.1))
    });
    let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi) };
    let span_t = (t1.saturating_sub(t0)).max(1) as f64;
    let span_v = if hi > lo { hi - lo } else { 1.0 };
    let dots: Vec<(f64, f64, String)> = values
        .iter()
        .map(|(t, v, text)| {
            let x = 10.0 + (t - t0) as f64 / span_t * (W - 20.0);
            // One value (or all equal) is drawn across the middle.
            let frac = if hi > lo { (v - lo) / span_v } else { 0.5 };
            let y = 10.0 + (1.0 - frac) * (H - BOTTOM - 20.0);
            (x, y, text.clone())
        })
        .collect();
    Line {
        width: W,
        height: H,
        points: dots
            .iter()
            .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
            .collect::<Vec<_>>()
            .join(" "),
        dots,
        min: lo,
        max: hi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fit_the_box() {
        let b = bars(&[("a".into(), 3, 0), ("b".into(), 6, 2)]);
        assert_eq!(b.max, 6);
        assert_eq!(b.bars.len(), 4);
        for bar in &b.bars {
            assert!(bar.y >= 0.0 && bar.y + bar.h <= H - BOTTOM + 1e-9);
            assert!(bar.x + bar.w <= W);
        }
        assert!(b.bars[2].h > b.bars[0].h);
    }

    #[test]
    fn a_line_spans_the_width() {
        let l = line(&[(0, 1.0, "a".into()), (10, 3.0, "b".into())]);
        assert_eq!(l.dots.len(), 2);
        assert!((l.dots[0].0 - 10.0).abs() < 1e-9 && (l.dots[1].0 - (W - 10.0)).abs() < 1e-9);
        assert!(l.dots[1].1 < l.dots[0].1, "higher values are drawn higher");
    }
}
