//! What `laquant calibrate` shows: a per-language summary (chunks, tokens,
//! balance weight, mean activation energy per layer) as text and JSON.

use super::{CalibError, Importance};
use serde_json::json;

/// Per language: the share of the summed mean x² (over all tapped weights) that
/// falls in each layer, a quick view of where each language's activations are large.
fn layer_energy(imp: &Importance) -> Vec<(String, Vec<f64>)> {
    imp.langs
        .iter()
        .map(|l| {
            let n = l.taps.tokens.max(1) as f64;
            let per_layer: Vec<f64> = (0..l.taps.n_layers)
                .map(|layer| l.taps.layer(layer).iter().flatten().sum::<f64>() / n)
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
        "unrouted_experts": imp.unrouted_experts().iter().map(|(layer, experts)| json!({
            "layer": layer,
            "experts": experts,
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
    s += &unrouted_text(imp);
    s
}

/// The experts of a mixture no language routed a token to: their statistics
/// are empty (count 0), and llama-quantize weighs their columns 1.
pub fn unrouted_text(imp: &Importance) -> String {
    let idle = imp.unrouted_experts();
    if idle.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "experts no language routed a token to (no statistics: quantized with importance 1, \
         as llama-quantize does):\n",
    );
    for (layer, experts) in idle {
        let list: Vec<String> = experts.iter().map(|e| e.to_string()).collect();
        s += &format!("  blk.{layer}: {}\n", list.join(", "));
    }
    s
}

/// Where each language's quantization error falls: for every language, the share
/// of its importance-weighted Q4_K error in the token embeddings and in each layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// Type used per weight width (Q4_K, or llama.cpp's fallback when 256 does not divide the width).
    pub types: Vec<(String, String)>,
    /// The model's layer count.
    pub n_layers: usize,
    /// Per language: `[embeddings, layer 0, ..., layer n-1]` shares (sum 1), and (output) when collected.
    pub shares: Vec<(String, Vec<f64>)>,
    /// Whether the output matrix's share was collected.
    pub with_output: bool,
}

/// Per column Σ_rows (w − deq(q(w)))² of `data` (rows of `width`) under `ty`
/// quantized with `importance` as llama-quantize would, and the per-row sums.
fn quant_error(
    ty: crate::gguf::GgmlType,
    data: &[f32],
    width: usize,
    importance: Option<&[f32]>,
) -> Result<(Vec<f64>, Vec<f64>), CalibError> {
    let q = |source| CalibError::Quantize {
        ty: ty.name(),
        source,
    };
    let packed = crate::quant::quantize_tensor(ty, data, width, importance).map_err(q)?;
    let rb = packed.len() / (data.len() / width).max(1);
    let mut cols = vec![0f64; width];
    let mut rows = Vec::with_capacity(data.len() / width);
    let mut deq = vec![0f32; width];
    for (w, p) in data.chunks_exact(width).zip(packed.chunks_exact(rb)) {
        crate::quant::dequantize(ty, p, &mut deq).map_err(q)?;
        let mut r = 0f64;
        for ((c, &a), &b) in cols.iter_mut().zip(w).zip(&deq) {
            let d = ((a - b) as f64).powi(2);
            *c += d;
            r += d;
        }
        rows.push(r);
    }
    Ok((cols, rows))
}

/// Quantizes every calibrated weight of `ckpt` (and the token embeddings) to Q4_K
/// with the balanced importance and splits each language's weighted error by layer:
/// a weight's error for language l is `Σ_j I_l[j] Σ_rows err²`, the embeddings'
/// is `Σ_rows f_l[row] Σ_j err²` with `f_l` the language's token frequencies.
/// Both are the expected squared perturbation per token of what the weight
/// produces; the embeddings' share comes out tiny (polyglot-25m: ~0.004%) because
/// a token reads one embedding row while a matmul's error sums over all its rows.
pub fn layer_report(
    ckpt: &crate::hf::Checkpoint,
    imp: &Importance,
) -> Result<LayerReport, CalibError> {
    use crate::arch::{map_name, Role};
    use crate::gguf::GgmlType;
    use crate::policy::presets::fallback;
    let balanced = imp.balanced();
    let means: Vec<_> = imp.langs.iter().map(|l| l.mean()).collect();
    let n_layers = ckpt.config.num_hidden_layers;
    let with_output = imp.langs.first().is_some_and(|l| l.taps.with_output);
    let slots = n_layers + 1 + usize::from(with_output);
    let mut err = vec![vec![0f64; slots]; imp.langs.len()];
    let mut types = std::collections::BTreeMap::new();
    for name in ckpt.tensor_names() {
        let Some(m) =
            map_name(&ckpt.config, &name).map_err(|e| CalibError::Weights(e.to_string()))?
        else {
            continue;
        };
        if m.is_bias || !(m.role.is_matmul() || m.role == Role::TokenEmbd) {
            continue;
        }
        let slot = match (m.role, m.layer) {
            (Role::TokenEmbd, _) => 0,
            (Role::Output, _) if with_output => n_layers + 1,
            (_, Some(l)) => l + 1,
            _ => continue,
        };
        let shape = ckpt
            .tensor_shape(&name)
            .map_err(|e| CalibError::Weights(e.to_string()))?;
        let width = *shape.last().unwrap_or(&1);
        // A mixture's expert: its own row of the stacked statistics.
        let cols_of = |v: &[f64]| -> Vec<f64> {
            match m.expert {
                Some(e) => v.get(e * width..(e + 1) * width).unwrap_or(&[]).to_vec(),
                None => v.to_vec(),
            }
        };
        let imp_cols: Option<Vec<f32>> = balanced
            .get(&m.gguf_name)
            .map(|v| cols_of(v).iter().map(|&x| x as f32).collect());
        if m.role != Role::TokenEmbd && imp_cols.is_none() {
            continue;
        }
        let data = ckpt
            .tensor_f32(&name)
            .map_err(|e| CalibError::Weights(e.to_string()))?;
        let (ty, _) = fallback(GgmlType::Q4K, width as u64);
        types.insert(width, ty.name().to_string());
        let (cols, rows) = quant_error(ty, &data, width, imp_cols.as_deref())?;
        for (li, l) in imp.langs.iter().enumerate() {
            err[li][slot] += if m.role == Role::TokenEmbd {
                let n = l.taps.tokens.max(1) as f64;
                l.token_counts
                    .iter()
                    .map(|(&t, &c)| rows.get(t as usize).copied().unwrap_or(0.0) * c as f64 / n)
                    .sum()
            } else {
                // An expert's error reaches the share of the language's
                // tokens routed to it.
                let share = match (m.expert, m.layer.and_then(|y| l.taps.routed(y))) {
                    (Some(e), Some(r)) => r[e] / l.taps.tokens.max(1) as f64,
                    _ => 1.0,
                };
                share
                    * cols_of(&means[li][&m.gguf_name])
                        .iter()
                        .zip(&cols)
                        .map(|(i, e)| i * e)
                        .sum::<f64>()
            };
        }
    }
    let shares = imp
        .langs
        .iter()
        .zip(err)
        .map(|(l, e)| {
            let total: f64 = e.iter().sum::<f64>().max(f64::MIN_POSITIVE);
            (l.lang.clone(), e.iter().map(|v| v / total).collect())
        })
        .collect();
    let types = types
        .into_iter()
        .map(|(w, t)| (format!("width {w}"), t))
        .collect();
    Ok(LayerReport {
        types,
        n_layers,
        shares,
        with_output,
    })
}

impl LayerReport {
    fn columns(&self) -> Vec<String> {
        let mut c = vec!["embd".to_string()];
        c.extend((0..self.n_layers).map(|l| format!("blk.{l}")));
        if self.with_output {
            c.push("output".into());
        }
        c
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "quant_types": self.types.iter().map(|(w, t)| json!({"weights": w, "type": t})).collect::<Vec<_>>(),
            "columns": self.columns(),
            "error_share": self.shares.iter().map(|(l, s)| json!({"lang": l, "shares": s})).collect::<Vec<_>>(),
        })
    }

    /// A table of percentages, one row per language.
    pub fn to_text(&self) -> String {
        let cols = self.columns();
        let mut s = String::from("share of importance-weighted Q4_K error (%) per layer");
        for (w, t) in &self.types {
            s += &format!("; {w}: {t}");
        }
        s += &format!("\n{:<5}", "lang");
        for c in &cols {
            s += &format!(" {c:>6}");
        }
        s.push('\n');
        for (l, sh) in &self.shares {
            s += &format!("{l:<5}");
            for v in sh {
                s += &format!(" {:>6.1}", 100.0 * v);
            }
            s.push('\n');
        }
        s
    }
}

/// How a mixture's routers spread each language's tokens over the experts: the
/// per-expert token counts the calibration keeps for the per-expert imatrix
/// (`TapSums::routed`), per layer and language. Shares are of a language's routing
/// slots (`tokens × top_k` per layer: every token reaches `top_k` experts), so a
/// language's shares of one layer sum to 1 and an even spread gives each expert
/// `1 / n_expert`.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// Experts per layer.
    pub n_expert: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// The languages, in calibration order, and their token counts.
    pub langs: Vec<(String, u64)>,
    /// `counts[layer][lang][expert]`: the language's tokens routed to the expert.
    pub counts: Vec<Vec<Vec<f64>>>,
}

/// Experts listed per language and layer as the ones it depends on most.
const TOP_EXPERTS: usize = 3;

impl Routing {
    /// The routing of a mixture of experts calibrated in `imp` with `top_k`
    /// experts per token; `None` for a dense model.
    pub fn new(imp: &Importance, top_k: usize) -> Option<Routing> {
        let first = imp.langs.first()?;
        let n_expert = first.taps.n_expert;
        if n_expert == 0 || top_k == 0 {
            return None;
        }
        let counts = (0..first.taps.n_layers)
            .map(|layer| {
                imp.langs
                    .iter()
                    .map(|l| l.taps.routed(layer).unwrap_or(&[]).to_vec())
                    .collect()
            })
            .collect();
        Some(Routing {
            n_expert,
            top_k,
            langs: imp
                .langs
                .iter()
                .map(|l| (l.lang.clone(), l.taps.tokens))
                .collect(),
            counts,
        })
    }

    /// Language `lang`'s share of its routing slots per expert in `layer`.
    pub fn shares(&self, layer: usize, lang: usize) -> Vec<f64> {
        let slots = (self.langs[lang].1 as f64 * self.top_k as f64).max(1.0);
        self.counts[layer][lang].iter().map(|c| c / slots).collect()
    }

    /// The experts of `layer` language `lang` depends on most: the
    /// `TOP_EXPERTS` of highest share, best first, with their shares.
    pub fn top(&self, layer: usize, lang: usize) -> Vec<(usize, f64)> {
        let mut s: Vec<(usize, f64)> = self.shares(layer, lang).into_iter().enumerate().collect();
        s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        s.truncate(TOP_EXPERTS);
        s.retain(|&(_, v)| v > 0.0);
        s
    }

    /// The languages that use expert `e` of `layer`: those giving it at least
    /// half an even share (`1 / (2 · n_expert)`) of their routing slots.
    pub fn users(&self, layer: usize, e: usize) -> Vec<usize> {
        let floor = 0.5 / self.n_expert as f64;
        (0..self.langs.len())
            .filter(|&l| self.shares(layer, l)[e] >= floor)
            .collect()
    }

    /// At most this many users make an expert one that only a few languages use:
    /// a quarter of the languages, at least one.
    pub fn few(&self) -> usize {
        (self.langs.len() / 4).max(1)
    }

    /// The experts of `layer` that one to [`Self::few`] languages use
    /// ([`Self::users`]), with those languages: the ones a per-language
    /// balance protects and a token-count balance would starve.
    pub fn few_language_experts(&self, layer: usize) -> Vec<(usize, Vec<usize>)> {
        (0..self.n_expert)
            .map(|e| (e, self.users(layer, e)))
            .filter(|(_, u)| !u.is_empty() && u.len() <= self.few())
            .collect()
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let name = |l: usize| self.langs[l].0.clone();
        json!({
            "n_expert": self.n_expert,
            "top_k": self.top_k,
            "share": "of the language's routing slots (tokens x top_k) per layer; an even spread is 1/n_expert",
            "user_floor": 0.5 / self.n_expert as f64,
            "few_languages": self.few(),
            "layers": (0..self.counts.len()).map(|layer| json!({
                "layer": layer,
                "languages": (0..self.langs.len()).map(|l| json!({
                    "lang": name(l),
                    "tokens": self.langs[l].1,
                    "counts": self.counts[layer][l],
                    "shares": self.shares(layer, l),
                    "top_experts": self.top(layer, l).iter()
                        .map(|&(e, s)| json!({"expert": e, "share": s})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "few_language_experts": self.few_language_experts(layer).iter()
                    .map(|(e, u)| json!({"expert": e, "languages": u.iter().map(|&l| name(l)).collect::<Vec<_>>()}))
                    .collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// A chart per layer (one row per language, one column per expert, a glyph
    /// for the share against an even one), each language's top experts beside
    /// it, then the experts only a few languages use.
    pub fn to_text(&self) -> String {
        const GLYPHS: [(f64, char); 7] = [
            (0.25, '.'),
            (0.5, ':'),
            (1.0, '-'),
            (1.5, '='),
            (2.0, '+'),
            (3.0, '*'),
            (f64::INFINITY, '#'),
        ];
        let even = 1.0 / self.n_expert as f64;
        let glyph = |s: f64| match s {
            0.0 => ' ',
            _ => GLYPHS
                .iter()
                .find(|(t, _)| s / even < *t)
                .map_or('#', |g| g.1),
        };
        let mut s = format!(
            "expert routing ({} experts, top {}): each language's share of its routed tokens per \
             expert, against an even 1/{}:\n  ' ' none  . <1/4  : <1/2  - <1  = <1.5  + <2  * <3  # >=3 times even\n",
            self.n_expert, self.top_k, self.n_expert
        );
        let w = self
            .langs
            .iter()
            .map(|(l, _)| l.len())
            .max()
            .unwrap_or(4)
            .max(6);
        for layer in 0..self.counts.len() {
            let head: String = (0..self.n_expert)
                .map(|e| char::from_digit((e % 10) as u32, 10).unwrap_or('?'))
                .collect();
            s += &format!(
                "{:<w$}  {head}  top experts (share)\n",
                format!("blk.{layer}")
            );
            for l in 0..self.langs.len() {
                let row: String = self.shares(layer, l).into_iter().map(glyph).collect();
                let top: Vec<String> = self
                    .top(layer, l)
                    .iter()
                    .map(|(e, v)| format!("{e} {:.0}%", 100.0 * v))
                    .collect();
                s += &format!("{:<w$}  {row}  {}\n", self.langs[l].0, top.join(", "));
            }
        }
        let few: Vec<String> = (0..self.counts.len())
            .flat_map(|layer| {
                self.few_language_experts(layer)
                    .into_iter()
                    .map(move |(e, u)| (layer, e, u))
            })
            .map(|(layer, e, u)| {
                let names: Vec<&str> = u.iter().map(|&l| self.langs[l].0.as_str()).collect();
                format!("  blk.{layer} expert {e}: {}\n", names.join(", "))
            })
            .collect();
        s += &format!(
            "experts only a few languages use (at most {} of {} give them half an even share or more):\n",
            self.few(),
            self.langs.len()
        );
        if few.is_empty() {
            s += "  none\n";
        }
        s += &few.concat();
        s
    }
}
