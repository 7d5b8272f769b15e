//! What `laquant calibrate` shows: a progress bar (language, tokens/s, ETA) and
//! a per-language summary (chunks, tokens, balance weight, mean activation
//! energy per layer) as text and JSON.

use super::{Importance, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

/// A token-counting bar on stderr, hidden when `quiet`.
pub fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "calibrating {msg} [{bar:30}] {pos}/{len} tokens {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// Updates `pb` from a progress report.
pub fn show_progress(pb: &ProgressBar, p: &Progress) {
    pb.set_length(p.tokens_total);
    pb.set_position(p.tokens_done);
    pb.set_message(format!(
        "{} ({}/{}) chunk {}/{}",
        p.lang,
        p.lang_index + 1,
        p.n_langs,
        p.chunks_done,
        p.chunks_total
    ));
}

/// Per language: the share of the summed mean x² (over all tapped weights) that
/// falls in each layer, a quick view of where each language's activations are large.
fn layer_energy(imp: &Importance) -> Vec<(String, Vec<f64>)> {
    imp.langs
        .iter()
        .map(|l| {
            let n = l.taps.tokens.max(1) as f64;
            let per_layer: Vec<f64> = (0..l.taps.n_layers)
                .map(|layer| {
                    l.taps.sums[layer * 4..layer * 4 + 4]
                        .iter()
                        .flatten()
                        .sum::<f64>()
                        / n
                })
                .collect();
            let total: f64 = per_layer.iter().sum::<f64>().max(f64::MIN_POSITIVE);
            (
                l.lang.clone(),
                per_layer.iter().map(|v| v / total).collect(),
            )
        })
        .collect()
}

/// Languages with chunks, tokens and weights, as JSON.
pub fn summary_json(imp: &Importance) -> serde_json::Value {
    let energy = layer_energy(imp);
    json!({
        "ctx": imp.ctx,
        "tokens": imp.tokens(),
        "datasets": imp.datasets,
        "languages": imp.langs.iter().zip(&imp.weights).zip(&energy).map(|((l, w), (_, e))| json!({
            "lang": l.lang,
            "chunks": l.chunks,
            "tokens": l.taps.tokens,
            "weight": w,
            "layer_activation_share": e,
        })).collect::<Vec<_>>(),
    })
}

/// The same as a terminal table.
pub fn summary_text(imp: &Importance) -> String {
    let mut s = format!(
        "{:<5} {:>7} {:>8} {:>7}\n",
        "lang", "chunks", "tokens", "weight"
    );
    for (l, w) in imp.langs.iter().zip(&imp.weights) {
        s += &format!(
            "{:<5} {:>7} {:>8} {:>7.4}\n",
            l.lang, l.chunks, l.taps.tokens, w
        );
    }
    s += &format!(
        "total {:>7} {:>8}\n",
        imp.langs.iter().map(|l| l.chunks).sum::<usize>(),
        imp.tokens()
    );
    s
}
