//! Curves (loss, accuracy, sharpness over steps) drawn with plotters, written as PNG and SVG.
//!
//! Text needs a TrueType/OpenType font, read once at run time: the file named by the
//! `IRE_PLOT_FONT` environment variable, else DejaVu Sans or Liberation Sans from the usual system
//! folders (Debian's `fonts-dejavu-core`). Without any, the plots are still written, with axes,
//! grid and curves but no text.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::atomic;
use super::error::{ArtifactError, Result};

/// Width and height of the written images, in pixels.
const SIZE: (u32, u32) = (1000, 620);

/// One curve: a legend label and its `(x, y)` points, drawn in the given order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// The legend entry (no entry when empty).
    pub label: String,
    /// The points; non-finite ones (and, on a log axis, those with `y <= 0`) break the line.
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` on one chart and writes `dir/stem.png` and `dir/stem.svg` (atomically), creating
/// `dir` when missing. Returns the written paths, PNG first.
///
/// Non-finite points are skipped (the curve breaks there); empty series and an empty `series`
/// give an empty chart. With `log_y` the y axis is logarithmic and points with `y <= 0` are
/// skipped too.
pub fn plot_curves(
    dir: &Path,
    stem: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<Vec<PathBuf>> {
    let png_path = dir.join(format!("{stem}.png"));
    let svg_path = dir.join(format!("{stem}.svg"));
    if stem.is_empty() || stem.contains(['/', '\\']) {
        return Err(ArtifactError::invalid(
            &png_path,
            "the file stem must be a plain name",
        ));
    }
    let chart = Chart::new(title, x_label, y_label, series, log_y);
    let text = font_available();

    // A font that loads but fails on some text must not cost the plot: retry without text.
    let png = render_png(&chart, text)
        .or_else(|e| {
            if text {
                render_png(&chart, false)
            } else {
                Err(e)
            }
        })
        .map_err(|detail| ArtifactError::Plot {
            path: png_path.clone(),
            detail,
        })?;
    atomic::write_bytes(&png_path, &png)?;

    let svg = render_svg(&chart, text)
        .or_else(|e| {
            if text {
                render_svg(&chart, false)
            } else {
                Err(e)
            }
        })
        .map_err(|detail| ArtifactError::Plot {
            path: svg_path.clone(),
            detail,
        })?;
    atomic::write_bytes(&svg_path, svg.as_bytes())?;
    Ok(vec![png_path, svg_path])
}

/// Whether a font could be registered with plotters (tried once per process).
pub fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let from_env = std::env::var_os("IRE_PLOT_FONT").map(PathBuf::from);
        from_env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
            .any(|p| {
                let Ok(bytes) = std::fs::read(&p) else {
                    return false;
                };
                // plotters keeps fonts for the whole process and wants `'static` bytes: the one font
                // file is leaked once on purpose.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    })
}

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Ten distinguishable colours (the "tab10" palette).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type Runs = Vec<Vec<(f64, f64)>>;

/// The chart's content, cleaned up: each series cut into runs of drawable points.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    /// Each series' label and its runs of consecutive drawable points.
    curves: Vec<(&'a str, Runs)>,
    log_y: bool,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

impl<'a> Chart<'a> {
    fn new(
        title: &'a str,
        x_label: &'a str,
        y_label: &'a str,
        series: &'a [Series],
        log_y: bool,
    ) -> Self {
        let drawable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
        let mut curves = Vec::with_capacity(series.len());
        let (mut xs, mut ys) = (Bounds::default(), Bounds::default());
        for s in series {
            let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
            let mut run = Vec::new();
            for p in &s.points {
                if drawable(p) {
                    xs.add(p.0);
                    ys.add(p.1);
                    run.push(*p);
                } else if !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
            }
            if !run.is_empty() {
                runs.push(run);
            }
            curves.push((s.label.as_str(), runs));
        }
        let x_range = xs.padded_linear();
        let y_range = if log_y {
            ys.padded_log()
        } else {
            ys.padded_linear()
        };
        Self {
            title,
            x_label,
            y_label,
            curves,
            log_y,
            x_range,
            y_range,
        }
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        text: bool,
    ) -> Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (y0, y1) = self.y_range;
        if self.log_y {
            self.draw_axes(root, (y0..y1).log_scale(), text)?;
        } else {
            self.draw_axes(root, y0..y1, text)?;
        }
        root.present().map_err(|e| e.to_string())
    }

    fn draw_axes<DB, Y>(
        &self,
        root: &DrawingArea<DB, Shift>,
        y: Y,
        text: bool,
    ) -> Result<(), String>
    where
        DB: DrawingBackend,
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let mut builder = ChartBuilder::on(root);
        builder.margin(20);
        if text {
            if !self.title.is_empty() {
                builder.caption(self.title, ("sans-serif", 24));
            }
            builder.x_label_area_size(50).y_label_area_size(80);
        }
        let mut chart = builder
            .build_cartesian_2d(self.x_range.0..self.x_range.1, y)
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(10).y_labels(10);
        if text {
            mesh.x_desc(self.x_label)
                .y_desc(self.y_label)
                .label_style(("sans-serif", 15))
                .x_label_formatter(&tick_label)
                .y_label_formatter(&tick_label);
        }
        mesh.draw().map_err(err)?;
        if !text {
            // The axes live in the label areas, which are left out without a font: frame instead.
            let (x0, x1) = self.x_range;
            let (y0, y1) = self.y_range;
            let frame = Rectangle::new([(x0, y0), (x1, y1)], BLACK.stroke_width(1));
            chart.plotting_area().draw(&frame).map_err(err)?;
        }

        let mut any_label = false;
        for (i, (label, runs)) in self.curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let style = color.stroke_width(2);
            // The first (possibly empty) run carries the legend entry.
            let first = runs.first().cloned().unwrap_or_default();
            let drawn = chart
                .draw_series(LineSeries::new(first, style))
                .map_err(err)?;
            if text && !label.is_empty() {
                any_label = true;
                drawn.label(*label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
            }
            for run in runs.iter().skip(1) {
                chart
                    .draw_series(LineSeries::new(run.iter().copied(), style))
                    .map_err(err)?;
            }
            // A lone point draws no line; mark it.
            let lone = runs.iter().filter(|r| r.len() == 1).map(|r| r[0]);
            chart
                .draw_series(lone.map(|p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        if any_label {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .label_font(("sans-serif", 15))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}

/// A short tick label: at most four decimals, no trailing zeros, exponent form for very large or
/// very small magnitudes.
fn tick_label(v: &f64) -> String {
    let v = *v;
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Minimum and maximum of finite values.
#[derive(Default)]
struct Bounds(Option<(f64, f64)>);

impl Bounds {
    fn add(&mut self, v: f64) {
        self.0 = Some(match self.0 {
            None => (v, v),
            Some((lo, hi)) => (lo.min(v), hi.max(v)),
        });
    }

    /// A non-empty linear range around the values (`0..1` when there are none).
    fn padded_linear(&self) -> (f64, f64) {
        match self.0 {
            None => (0.0, 1.0),
            Some((lo, hi)) if hi > lo => {
                let pad = (hi - lo) * 0.04;
                (lo - pad, hi + pad)
            }
            Some((v, _)) => {
                let pad = if v == 0.0 { 1.0 } else { v.abs() * 0.1 };
                (v - pad, v + pad)
            }
        }
    }

    /// A non-empty positive range around the (positive) values (`0.1..10` when there are none).
    fn padded_log(&self) -> (f64, f64) {
        let (lo, hi) = match self.0 {
            None => (0.1, 10.0),
            Some((lo, hi)) if hi > lo => (lo / 1.25, hi * 1.25),
            Some((v, _)) => (v / 2.0, v * 2.0),
        };
        // At most LOG_DECADES decades, the lowest cut off: the axis code walks every decade
        // of the range, and a value near 1e-320 would make that hundreds of subnormal steps.
        (lo.max(hi / 10f64.powi(LOG_DECADES)), hi)
    }
}

/// Decades a logarithmic axis spans at most.
const LOG_DECADES: i32 = 40;

fn render_png(chart: &Chart<'_>, text: bool) -> Result<Vec<u8>, String> {
    let (w, h) = SIZE;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        chart.draw(&root, text)?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    Ok(png)
}

fn render_svg(chart: &Chart<'_>, text: bool) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        chart.draw(&root, text)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_without_a_font() {
        let series = [
            Series {
                label: "a".into(),
                points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5)],
            },
            Series {
                label: String::new(),
                points: vec![],
            },
        ];
        for log_y in [false, true] {
            let chart = Chart::new("t", "x", "y", &series, log_y);
            let png = render_png(&chart, false).unwrap();
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
            let svg = render_svg(&chart, false).unwrap();
            assert!(svg.contains("<svg"));
            assert!(!svg.contains("<text"));
        }
    }

    #[test]
    fn a_log_axis_spans_at_most_40_decades() {
        // The toy's v falls to 7e-321 (subnormal): the axis keeps the top 40 decades.
        let series = [Series {
            label: "v".into(),
            points: vec![(0.0, 1e-2), (50.0, 1e-100), (99.0, 7e-321)],
        }];
        let chart = Chart::new("t", "x", "y", &series, true);
        let (lo, hi) = chart.y_range;
        assert_eq!(hi, 1.25e-2);
        assert!((lo / (hi * 1e-40) - 1.0).abs() < 1e-12, "{lo}");
        assert!(render_png(&chart, false).is_ok());
    }

    #[test]
    fn tick_labels_are_short() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (20.0, "20"),
            (0.25, "0.25"),
            (1.0 / 3.0, "0.3333"),
            (-1.5, "-1.5"),
            (1e-5, "1.0e-5"),
            (2.5e7, "2.5e7"),
        ];
        for (v, want) in cases {
            assert_eq!(tick_label(&v), want, "{v}");
        }
    }
}
