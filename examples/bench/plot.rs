//! The paper's two figures for this library: decode latency and memory vs position, and prefill
//! memory and speed vs prompt length per mode.

use std::path::{Path, PathBuf};

use falcon_mamba::Prefill;
use plotters::prelude::*;

use crate::report::{DecodeRow, PrefillRow};

/// The font family name the labels use once [`font`] registered one.
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1200, 480);

/// Registers `path`, or the first common sans font installed, for the labels. `None`: no font.
pub fn font(path: Option<&Path>) -> Option<&'static str> {
    let candidates: Vec<PathBuf> = match path {
        Some(p) => vec![p.to_path_buf()],
        None => [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/Library/Fonts/Arial.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    };
    let bytes = candidates.iter().find_map(|p| std::fs::read(p).ok())?;
    // plotters keeps registered fonts for the whole process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).ok()?;
    Some(FAMILY)
}

type Chart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A chart whose x axis is log2 of token counts from `x_min` to `x_max` (labelled at the powers
/// of two) and whose y axis runs from 0 to above `y_max`.
fn chart<'a>(
    area: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    family: &str,
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    (x_min, x_max): (f64, f64),
    y_max: f64,
) -> Result<Chart<'a>, String> {
    let (lo, hi) = (x_min.log2(), x_max.log2());
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (family, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(lo - 0.4..hi + 0.4, 0.0..(y_max * 1.15).max(1e-9))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((family, 14))
        .x_labels((hi - lo) as usize + 2)
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-6 {
                tokens(v.round().exp2())
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(plot_error)?;
    Ok(chart)
}

fn plot_error(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// 256, 4k, 64k.
fn tokens(x: f64) -> String {
    if x >= 1024.0 {
        format!("{:.0}k", x / 1024.0)
    } else {
        format!("{x:.0}")
    }
}

/// A line with markers; x values are token counts.
fn series<'a>(
    chart: &mut Chart<'a>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: &str,
) -> Result<(), String> {
    let points: Vec<(f64, f64)> = points.into_iter().map(|(x, y)| (x.log2(), y)).collect();
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        .map_err(plot_error)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )
        .map_err(plot_error)?;
    Ok(())
}

fn legend(chart: &mut Chart<'_>, family: &str) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((family, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

/// Latency and resident memory vs position.
pub fn decode(rows: &[DecodeRow], path: &Path, family: &str) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let xs = (
        rows[0].position as f64,
        rows[rows.len() - 1].position as f64,
    );
    let latency: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.position as f64, r.latency * 1e3))
        .collect();
    let y_max = latency.iter().map(|p| p.1).fold(0.0, f64::max);
    let mut c = chart(
        &left,
        family,
        "Decode: time per token",
        ("position (tokens in context)", "ms/token (median)"),
        xs,
        y_max,
    )?;
    series(&mut c, latency, BLUE, "per-token latency")?;
    legend(&mut c, family)?;
    let resident: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            r.resident
                .map(|b| (r.position as f64, b as f64 / (1 << 20) as f64))
        })
        .collect();
    let y_max = resident.iter().map(|p| p.1).fold(0.0, f64::max);
    let mut c = chart(
        &right,
        family,
        "Decode: process memory",
        ("position (tokens in context)", "resident MiB"),
        xs,
        y_max,
    )?;
    series(&mut c, resident, RED, "resident memory")?;
    legend(&mut c, family)?;
    root.present().map_err(plot_error)
}

/// Peak memory and tokens/s vs prompt length, one line per mode.
pub fn prefill(rows: &[PrefillRow], path: &Path, family: &str) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let x_min = rows.iter().map(|r| r.len).min().unwrap_or(1) as f64;
    let x_max = rows.iter().map(|r| r.len).max().unwrap_or(1) as f64;
    let mut modes: Vec<Prefill> = Vec::new();
    for r in rows {
        if !modes.contains(&r.mode) {
            modes.push(r.mode);
        }
    }
    let colors = [BLUE, RED, GREEN, MAGENTA];
    let by_mode = |f: &dyn Fn(&PrefillRow) -> Option<f64>| -> Vec<(Prefill, Vec<(f64, f64)>)> {
        modes
            .iter()
            .map(|m| {
                let points = rows
                    .iter()
                    .filter(|r| r.mode == *m)
                    .filter_map(|r| f(r).map(|y| (r.len as f64, y)))
                    .collect();
                (*m, points)
            })
            .collect()
    };
    let peaks = by_mode(&|r| r.peak.map(|b| b as f64 / (1 << 20) as f64));
    let speeds = by_mode(&|r| Some(r.len as f64 / r.seconds));
    for (area, title, y_desc, lines) in [
        (
            &left,
            "Prefill: peak process memory",
            "peak resident MiB",
            peaks,
        ),
        (&right, "Prefill: speed", "tokens/s", speeds),
    ] {
        let y_max = lines
            .iter()
            .flat_map(|(_, p)| p.iter().map(|p| p.1))
            .fold(0.0, f64::max);
        let mut c = chart(
            area,
            family,
            title,
            ("prompt length (tokens)", y_desc),
            (x_min, x_max),
            y_max,
        )?;
        for ((mode, points), color) in lines.into_iter().zip(colors.iter().cycle()) {
            series(&mut c, points, *color, &mode.to_string())?;
        }
        legend(&mut c, family)?;
    }
    root.present().map_err(plot_error)
}
