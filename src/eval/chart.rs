//! The `--chart OUT.svg` figure: mean KL divergence per language (an
//! embedding model's: `1 − mean cosine`, [`super::embed::EmbedReport::render_svg`]),
//! one bar per file, languages grouped by script (Latin, then Arabic, Cyrillic, CJK,
//! Devanagari, ...; see [`super::script`]), drawn with the `plotters` crate's
//! SVG backend.

use super::report::EvalReport;
use super::{script, EvalError};
use plotters::prelude::*;
use std::path::Path;

fn plot_err(e: impl std::fmt::Display) -> EvalError {
    EvalError::Option {
        flag: "chart",
        what: format!("cannot draw the chart: {e}"),
    }
}

/// An axis tick: [`super::report::num`] without trailing zeros.
fn axis_number(y: f64) -> String {
    let s = super::report::num(y);
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// What the chart calls the model: the hub id `org/name` for a snapshot of the
/// Hugging Face cache (`models--org--name/snapshots/<rev>`, whose own folder
/// name is a commit hash), else the folder's name.
pub(crate) fn model_title(model: &str) -> String {
    let p = Path::new(model);
    let name = |q: &Path| q.file_name().map(|s| s.to_string_lossy().into_owned());
    let hub = p
        .parent()
        .filter(|s| name(s).as_deref() == Some("snapshots"))
        .and_then(|s| s.parent())
        .and_then(name)
        .and_then(|r| {
            r.strip_prefix("models--")
                .map(|id| id.replacen("--", "/", 1))
        });
    hub.or_else(|| name(p)).unwrap_or_else(|| model.to_string())
}

/// A bar chart of one value per language and file, languages grouped by script.
pub(crate) struct Bars<'a> {
    /// The caption.
    pub(crate) title: String,
    /// The y axis's name.
    pub(crate) y_desc: &'a str,
    /// Languages grouped by script ([`script::grouped`]).
    pub(crate) groups: Vec<(&'static str, Vec<&'a str>)>,
    /// Per file: its legend and one value per language, in the groups' order.
    pub(crate) series: Vec<(String, Vec<f64>)>,
}

/// The chart as an SVG document.
pub fn render_svg(report: &EvalReport) -> Result<String, EvalError> {
    let groups = script::grouped(report.reference.iter().map(|r| r.lang.as_str()));
    let langs = script::in_order(&groups);
    let series = report
        .files
        .iter()
        .map(|f| {
            let v = langs
                .iter()
                .map(|l| f.languages.get(*l).map(|x| x.kld_mean).unwrap_or(0.0))
                .collect();
            (format!("{} ({:.2} bpw)", f.label(), f.bpw), v)
        })
        .collect();
    bars_svg(&Bars {
        title: format!(
            "Mean KL divergence from the reference, per language (ctx {}, {})",
            report.ctx,
            model_title(&report.model)
        ),
        y_desc: "mean KLD (nats)",
        groups,
        series,
    })
}

/// Draws `b` as an SVG document.
pub(crate) fn bars_svg(b: &Bars) -> Result<String, EvalError> {
    let groups = &b.groups;
    let langs: Vec<&str> = groups
        .iter()
        .flat_map(|(_, ls)| ls.iter().copied())
        .collect();
    let n = langs.len();
    let nf = b.series.len();
    if n == 0 || nf == 0 {
        return Err(plot_err("nothing to draw (no language or no file)"));
    }
    let vals: Vec<&Vec<f64>> = b.series.iter().map(|s| &s.1).collect();
    // Headroom above the tallest bar for the script names and the legend.
    let headroom = 1.2 + 0.06 * nf as f64;
    let ymax = vals
        .iter()
        .flat_map(|v| v.iter())
        .cloned()
        .fold(0.0, f64::max)
        .max(1e-9)
        * headroom;
    let width = (140 + n * (10 * nf + 12)).max(800) as u32;
    let height = 520u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&b.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
            .map_err(plot_err)?;
        let lang_at = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                langs[i as usize].to_string()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(n)
            .x_label_formatter(&lang_at)
            .y_desc(b.y_desc)
            .y_label_formatter(&|y| axis_number(*y))
            .draw()
            .map_err(plot_err)?;
        let bar = 0.84 / nf as f64;
        for (fi, (legend, _)) in b.series.iter().enumerate() {
            let color = Palette99::pick(fi).mix(0.9);
            let style = color.filled();
            chart
                .draw_series(vals[fi].iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 - 0.42 + fi as f64 * bar;
                    Rectangle::new([(x0, 0.0), (x0 + bar * 0.9, v)], style)
                }))
                .map_err(plot_err)?
                .label(legend.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], style));
        }
        // Script groups: a separator before each group and its name on top.
        let mut start = 0usize;
        for (gi, (name, ls)) in groups.iter().enumerate() {
            let end = start + ls.len();
            if start > 0 {
                let x = start as f64 - 0.5;
                chart
                    .draw_series(LineSeries::new(
                        [(x, 0.0), (x, ymax)],
                        BLACK.mix(0.4).stroke_width(1),
                    ))
                    .map_err(plot_err)?;
            }
            let mid = (start + end) as f64 / 2.0 - 0.5;
            chart
                .draw_series(std::iter::once(Text::new(
                    name.to_string(),
                    // Staggered so that the names of one-language groups do not overlap.
                    (mid, ymax * if gi % 2 == 0 { 0.985 } else { 0.95 }),
                    ("sans-serif", 13).into_font().color(&BLACK.mix(0.7)).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Top,
                        ),
                    ),
                )))
                .map_err(plot_err)?;
            start = end;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .margin(44)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Writes the chart to `path`.
/// Only a regular file is replaced, and only with `force`.
pub fn write_svg(report: &EvalReport, path: &Path, force: bool) -> Result<(), EvalError> {
    write_svg_text(&render_svg(report)?, path, force)
}

/// Writes a rendered chart to `path` (only a regular file is replaced, and only with `force`).
pub fn write_svg_text(svg: &str, path: &Path, force: bool) -> Result<(), EvalError> {
    crate::outputs::write(path, svg.as_bytes(), force).map_err(|e| EvalError::File {
        path: path.to_path_buf(),
        what: format!("cannot write the chart: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::report::{FileReport, LangReport, RefLang};

    #[test]
    fn title_gives_the_hub_id_and_the_legend_bits_per_weight() {
        let lang = LangReport {
            script: "Latin",
            tokens: 10,
            ppl: 2.0,
            ppl_ref: 1.9,
            kld_mean: 0.01,
            kld_p99: 0.1,
            kld_max: 0.2,
            top1: 0.9,
            routing: None,
        };
        let report = EvalReport {
            model: "/root/.cache/huggingface/hub/models--org--Tiny-Chat/snapshots/0123abcd".into(),
            text: "embedded".into(),
            ctx: 64,
            chunks: None,
            reference: vec![RefLang {
                lang: "en".into(),
                script: "Latin",
                chunks: 1,
                tokens: 10,
                ppl: 1.9,
            }],
            files: vec![FileReport {
                file: "out/Tiny-Chat-Q4_K_M.gguf".into(),
                bytes: 100,
                bpw: 4.8912,
                languages: [("en".to_string(), lang)].into_iter().collect(),
                kld_mean: 0.01,
                worst_language: "en".into(),
                worst_kld: 0.01,
                best_language: "en".into(),
                best_kld: 0.01,
                kld_disparity: Some(1.0),
                non_en_over_en: None,
                top1_mean: 0.9,
                routing_same_mean: None,
            }],
            seconds: 1.0,
        };
        let svg = render_svg(&report).unwrap();
        assert!(svg.contains("org/Tiny-Chat"), "title lacks the hub id");
        assert!(!svg.contains("0123abcd"), "title shows the snapshot hash");
        assert!(
            svg.contains("Tiny-Chat-Q4_K_M (4.89 bpw)"),
            "legend lacks the bpw"
        );
        assert_eq!(model_title("/data/models/llama-bpe"), "llama-bpe");
    }
}
