//! `nn-data plot`: learning curves from the JSON Lines that `nn-train --metrics` writes, as
//! a PNG with two panels: loss, and accuracy (when the file has any), each with a training
//! and a validation line.
//!
//! Drawn with plotters on an in-memory RGB buffer and encoded with the png crate. Text uses
//! a subset of DejaVu Sans compiled into the binary (assets/fonts/), so no system fonts are
//! needed.

use crate::io::output_file::PendingFile;
use crate::{Error, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
/// Colour of the training curves (matplotlib's tab:blue).
pub const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
/// Colour of the validation curves (matplotlib's tab:red).
pub const VAL_COLOUR: RGBColor = RGBColor(214, 39, 40);
/// Smallest and largest image side accepted, in pixels.
const MIN_SIDE: u32 = 200;
const MAX_SIDE: u32 = 10_000;

/// One epoch's numbers; None where the file has null or nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Epoch {
    /// 1-based epoch.
    pub epoch: f64,
    /// Training loss, when the line has it.
    pub loss: Option<f64>,
    /// Training accuracy, when the line has it.
    pub accuracy: Option<f64>,
    /// Validation loss, when the line has it.
    pub val_loss: Option<f64>,
    /// Validation accuracy, when the line has it.
    pub val_accuracy: Option<f64>,
}

/// Reads a metrics file: one JSON object per non-blank line, with a number `epoch` and a
/// `loss` (a number, or null for a non-finite loss); `accuracy`, `val_loss` and
/// `val_accuracy` are numbers, null or absent. Other fields are ignored.
pub fn read_metrics(path: &Path) -> Result<Vec<Epoch>> {
    if path.is_dir() {
        return Err(Error::data(path, "is a directory, not a metrics file"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::data(
            path,
            if e.kind() == std::io::ErrorKind::NotFound {
                "no such file".to_string()
            } else {
                format!("cannot read: {e}")
            },
        )
    })?;
    let mut epochs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| Error::line(path, n, format!("not valid JSON ({e})")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::line(path, n, "not a JSON object (nn-train --metrics writes one object per line)"))?;
        let field = |name: &str, required: bool| -> Result<Option<f64>> {
            match obj.get(name) {
                None if required => Err(Error::line(path, n, format!("no field '{name}'"))),
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(v)) => Ok(v.as_f64()),
                Some(other) => {
                    Err(Error::line(path, n, format!("field '{name}' is {other}, expected a number or null")))
                }
            }
        };
        let epoch = field("epoch", true)?.ok_or_else(|| Error::line(path, n, "field 'epoch' is null"))?;
        epochs.push(Epoch {
            epoch,
            loss: field("loss", true)?,
            accuracy: field("accuracy", false)?,
            val_loss: field("val_loss", false)?,
            val_accuracy: field("val_accuracy", false)?,
        });
    }
    if epochs.is_empty() {
        return Err(Error::data(path, "no epochs in the file (it is empty)"));
    }
    Ok(epochs)
}

/// Reads `metrics` and writes the curves to `out` as a `width` x `height` PNG.
pub fn plot(metrics: &Path, out: &Path, width: u32, height: u32) -> Result<Vec<Epoch>> {
    for (flag, v) in [("width", width), ("height", height)] {
        if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
            return Err(Error::flag(flag, format!("must be {MIN_SIDE}..{MAX_SIDE} pixels, got {v}")));
        }
    }
    let epochs = read_metrics(metrics)?;
    let file = PendingFile::new(out)?;
    let title = metrics.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let rgb = render(&epochs, &title, width, height).map_err(|e| Error::output(out, format!("cannot draw: {e}")))?;
    write_png(&file.tmp, &rgb, width, height).map_err(|e| Error::output(out, format!("cannot write PNG: {e}")))?;
    file.commit()?;
    Ok(epochs)
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            // The font is ours and checked by the tests; failure here is a build problem.
            let _ = plotters::style::register_font(family, FontStyle::Normal, FONT);
        }
    });
}

/// The two panels as RGB bytes, (height, width, 3).
fn render(epochs: &[Epoch], title: &str, width: u32, height: u32) -> std::result::Result<Vec<u8>, String> {
    register_font();
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let caption = format!("{title}: {} epoch{}", epochs.len(), if epochs.len() == 1 { "" } else { "s" });
        let body = root.titled(&caption, ("sans-serif", 20)).map_err(|e| e.to_string())?;
        let has_accuracy = epochs.iter().any(|e| e.accuracy.is_some() || e.val_accuracy.is_some());
        let panels = if has_accuracy { body.split_evenly((1, 2)) } else { vec![body] };
        let pick = |f: fn(&Epoch) -> Option<f64>| -> Vec<(f64, Option<f64>)> {
            epochs.iter().map(|e| (e.epoch, f(e))).collect()
        };
        panel(&panels[0], "loss", &pick(|e| e.loss), &pick(|e| e.val_loss), false)?;
        if has_accuracy {
            panel(&panels[1], "accuracy", &pick(|e| e.accuracy), &pick(|e| e.val_accuracy), true)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(rgb)
}

/// One panel: a training and a validation line over epochs. A line breaks where a value is
/// missing. Accuracy's axis ends at 1 and starts a little below its lowest value; loss's
/// axis starts at 0 (or below, for a negative loss).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    name: &str,
    train: &[(f64, Option<f64>)],
    val: &[(f64, Option<f64>)],
    accuracy: bool,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let xs = train.iter().map(|p| p.0);
    let (x_lo, x_hi) = xs.clone().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (x_lo, x_hi) = if x_hi > x_lo { (x_lo, x_hi) } else { (x_lo - 0.5, x_hi + 0.5) };
    let ys: Vec<f64> = train.iter().chain(val).filter_map(|p| p.1).filter(|v| v.is_finite()).collect();
    let (y_min, y_max) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &y| (lo.min(y), hi.max(y)));
    let (y_lo, y_hi) = if ys.is_empty() {
        (0.0, 1.0)
    } else if accuracy {
        (((y_min - 0.02) * 20.0).floor().clamp(0.0, 19.0) / 20.0, y_max.max(1.0))
    } else {
        let hi = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
        (y_min.min(0.0), hi)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(name, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(name)
        .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.1}") })
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    // Markers show single epochs and gaps; past a few dozen epochs they only clutter.
    let markers = train.len() <= 40;
    for (points, colour, label) in [(train, TRAIN_COLOUR, "train"), (val, VAL_COLOUR, "validation")] {
        if points.iter().all(|p| p.1.is_none()) {
            continue;
        }
        let style = ShapeStyle { color: colour.to_rgba(), filled: false, stroke_width: 2 };
        let mut first = true;
        for segment in segments(points) {
            let series = chart.draw_series(LineSeries::new(segment.iter().copied(), style)).map_err(err)?;
            if first {
                series.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                first = false;
            }
            if markers || segment.len() == 1 {
                chart.draw_series(segment.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(err)?;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(if accuracy { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Runs of consecutive finite values.
fn segments(points: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for &(x, y) in points {
        match y.filter(|v| v.is_finite()) {
            Some(y) => current.push((x, y)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> std::result::Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_break_at_missing_values() {
        let pts = [
            (1.0, Some(1.0)),
            (2.0, None),
            (3.0, Some(3.0)),
            (4.0, Some(f64::NAN)),
            (5.0, Some(5.0)),
            (6.0, Some(6.0)),
        ];
        assert_eq!(segments(&pts), vec![vec![(1.0, 1.0)], vec![(3.0, 3.0)], vec![(5.0, 5.0), (6.0, 6.0)]]);
        assert!(segments(&[(1.0, None)]).is_empty());
    }

    #[test]
    fn the_bundled_font_draws_text() {
        let e = [Epoch { epoch: 1.0, loss: Some(0.5), accuracy: Some(0.9), val_loss: None, val_accuracy: None }];
        let a = render(&e, "a", 400, 300).unwrap();
        let b = render(&e, "WWWWWW", 400, 300).unwrap();
        // Something other than white was drawn, and the title's text made a difference.
        assert!(a.iter().any(|&v| v < 128));
        assert_ne!(a, b);
    }
}
