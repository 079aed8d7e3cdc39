//! PNG charts: success by configuration (with Wilson intervals) and a live loop's learning
//! curve. Text is drawn with a bundled font (DejaVu Sans Mono, its licence beside it), so no
//! system font or fontconfig is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::Context as _;
use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font always parses; were it not to, text would be missing, not the chart.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// One bar: a configuration's successes out of its episodes, with its interval.
#[derive(Debug, Clone)]
pub struct Bar {
    pub name: String,
    pub successes: usize,
    pub episodes: usize,
    pub low: f64,
    pub high: f64,
}

impl Bar {
    /// A bar from a report row as `eval` and `sweep` write them (`successes`, `episodes`,
    /// `wilson95`).
    pub fn from_row(name: impl Into<String>, row: &serde_json::Value) -> Self {
        Self {
            name: name.into(),
            successes: row["successes"].as_u64().unwrap_or_default() as usize,
            episodes: row["episodes"].as_u64().unwrap_or_default() as usize,
            low: row["wilson95"][0].as_f64().unwrap_or_default(),
            high: row["wilson95"][1].as_f64().unwrap_or_default(),
        }
    }
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("chart: {e}")
}

/// Success rate by configuration, with 95% Wilson intervals.
pub fn success_chart(path: &Path, title: &str, bars: &[Bar]) -> anyhow::Result<()> {
    fonts();
    let n = bars.len().max(1);
    let root = BitMapBackend::new(path, (160 * n as u32 + 120, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 20))
        .margin(16)
        .x_label_area_size(16)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..n as f64, 0.0..1.12f64)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc("success rate")
        .y_label_style((FAMILY, 14))
        .draw()
        .map_err(plot_error)?;
    for (i, b) in bars.iter().enumerate() {
        let x = i as f64;
        let rate = b.successes as f64 / b.episodes.max(1) as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.2, 0.0), (x + 0.8, rate)],
                RGBColor(70, 110, 180).filled(),
            )))
            .map_err(plot_error)?;
        let mid = x + 0.5;
        chart
            .draw_series([
                PathElement::new(vec![(mid, b.low), (mid, b.high)], BLACK.stroke_width(2)),
                PathElement::new(vec![(mid - 0.08, b.low), (mid + 0.08, b.low)], BLACK),
                PathElement::new(vec![(mid - 0.08, b.high), (mid + 0.08, b.high)], BLACK),
            ])
            .map_err(plot_error)?;
        let label = format!("{} {}/{}", b.name, b.successes, b.episodes);
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (x + 0.1, (b.high + 0.06).min(1.1)),
                (FAMILY, 13),
            )))
            .map_err(plot_error)?;
    }
    root.present()
        .map_err(plot_error)
        .with_context(|| path.display().to_string())
}

/// A live loop's learning curve: success so far, and over the last `window` episodes, by
/// episode in the order they finished.
pub fn learning_curve(
    path: &Path,
    title: &str,
    successes: &[bool],
    window: usize,
) -> anyhow::Result<()> {
    fonts();
    let n = successes.len();
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(1.0..(n.max(2) as f64), 0.0..1.05f64)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("episodes, in the order they finished")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("success rate")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(plot_error)?;
    let mut so_far = Vec::with_capacity(n);
    let mut recent = Vec::with_capacity(n);
    let mut ok = 0usize;
    for (i, s) in successes.iter().enumerate() {
        ok += usize::from(*s);
        so_far.push(((i + 1) as f64, ok as f64 / (i + 1) as f64));
        let from = (i + 1).saturating_sub(window.max(1));
        let w = &successes[from..=i];
        recent.push((
            (i + 1) as f64,
            w.iter().filter(|s| **s).count() as f64 / w.len() as f64,
        ));
    }
    chart
        .draw_series(LineSeries::new(
            so_far,
            RGBColor(70, 110, 180).stroke_width(3),
        ))
        .map_err(plot_error)?
        .label("success so far")
        .legend(|(x, y)| {
            PathElement::new(
                vec![(x, y), (x + 20, y)],
                RGBColor(70, 110, 180).stroke_width(3),
            )
        });
    chart
        .draw_series(LineSeries::new(
            recent,
            RGBColor(220, 120, 40).stroke_width(2),
        ))
        .map_err(plot_error)?
        .label(format!("last {window} episodes"))
        .legend(|(x, y)| {
            PathElement::new(
                vec![(x, y), (x + 20, y)],
                RGBColor(220, 120, 40).stroke_width(2),
            )
        });
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(plot_error)?;
    root.present()
        .map_err(plot_error)
        .with_context(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (be(&bytes[16..20]), be(&bytes[20..24]))
    }

    #[test]
    fn charts_are_png_files_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let bars = [
            Bar {
                name: "expert".into(),
                successes: 8,
                episodes: 8,
                low: 0.68,
                high: 1.0,
            },
            Bar {
                name: "random".into(),
                successes: 1,
                episodes: 8,
                low: 0.02,
                high: 0.47,
            },
        ];
        let success = dir.path().join("success.png");
        success_chart(&success, "support", &bars).unwrap();
        assert_eq!(png_size(&success), (440, 480));
        let curve = dir.path().join("curve.png");
        learning_curve(&curve, "live", &[false, true, true, false, true], 3).unwrap();
        assert_eq!(png_size(&curve), (900, 480));
        // Text is drawn (the bundled font registered): the same chart without its words differs.
        let blank = dir.path().join("blank.png");
        let unnamed: Vec<Bar> = bars
            .iter()
            .map(|b| Bar {
                name: String::new(),
                ..b.clone()
            })
            .collect();
        success_chart(&blank, "", &unnamed).unwrap();
        assert_eq!(png_size(&blank), (440, 480));
        assert_ne!(
            std::fs::read(&blank).unwrap(),
            std::fs::read(&success).unwrap()
        );
    }
}
