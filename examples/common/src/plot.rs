//! SVG line charts for the examples (plotters' SVG backend; no system fonts needed).
//!
//! One function, [`line_chart`], draws several named series on common axes. A logarithmic axis
//! is drawn by plotting `log10` of the values and saying so in the axis label, which keeps the
//! helper free of plotters' per-scale types.

use std::path::Path;

use plotters::prelude::*;

/// One named curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)` points in drawing order.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from a label and points.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points,
        }
    }
}

/// Titles and scales of a chart.
#[derive(Debug, Clone, Default)]
pub struct ChartSpec {
    /// Caption above the plot.
    pub title: String,
    /// Horizontal axis label.
    pub x_label: String,
    /// Vertical axis label.
    pub y_label: String,
    /// Plot `log10(x)` (points with `x ≤ 0` are dropped).
    pub log_x: bool,
    /// Plot `log10(y)` (points with `y ≤ 0` are dropped).
    pub log_y: bool,
}

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No series holds a finite point.
    #[error("nothing to plot: no finite points")]
    Empty,
    /// plotters failed (for example the file could not be written).
    #[error("plotting failed: {0}")]
    Draw(String),
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Series with at most this many points are drawn with a marker on each point.
const MARKED: usize = 30;

/// Writes `series` as an 800×500 SVG line chart to `path`.
pub fn line_chart(path: &Path, spec: &ChartSpec, series: &[Series]) -> Result<(), PlotError> {
    let transform = |v: f64, log: bool| {
        if log {
            (v > 0.0).then(|| v.log10())
        } else {
            Some(v)
        }
    };
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let pts = s
                .points
                .iter()
                .filter_map(|&(x, y)| Some((transform(x, spec.log_x)?, transform(y, spec.log_y)?)))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            (s.label.as_str(), pts)
        })
        .collect();
    let all = curves.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(PlotError::Empty);
    }
    let pad = |lo: f64, hi: f64| {
        let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
        (lo - 0.05 * span, hi + 0.05 * span)
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let axis = |label: &str, log: bool| {
        if log {
            format!("log10 {label}")
        } else {
            label.to_string()
        }
    };
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&spec.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(axis(&spec.x_label, spec.log_x))
            .y_desc(axis(&spec.y_label, spec.log_y))
            .draw()?;
        for (i, (label, pts)) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(*label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            // Sparse series (a few measured points, or one) get a marker on each point.
            if pts.len() <= MARKED {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| PlotError::Draw(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_legend_entry() {
        let dir = std::env::temp_dir().join(format!("kindling-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        let spec = ChartSpec {
            title: "losses".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            log_y: true,
            ..Default::default()
        };
        let series = [
            Series::new("adam", vec![(0.0, 1.0), (1.0, 0.1), (2.0, 0.01)]),
            Series::new("sgd", vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.0)]),
        ];
        line_chart(&path, &spec, &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("adam") && svg.contains("sgd"));
        assert!(svg.contains("log10 loss"));
        assert!(matches!(
            line_chart(&path, &spec, &[]),
            Err(PlotError::Empty)
        ));
    }
}
