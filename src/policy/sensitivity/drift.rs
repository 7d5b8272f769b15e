//! Embedding drift: the measured sensitivity of an encoder (the BERT family:
//! `BertModel`, `XLMRobertaModel`), which has no next token to score.
//!
//! - Sample: per language, the first non-empty lines of its calibration text,
//!   each framed as llama.cpp frames an embedding prompt
//!   ([`TextTokenizer::encode_framed`]) and run as its own sequence, as
//!   `laquant eval` cuts its windows, until the language's `tokens` are spent
//!   (the last window cut to what is left, keeping its closing frame; none
//!   longer than the model's positions).
//! - Reference: [`Encoder`] on the checkpoint's weights, pooled as the model
//!   declares. A group: the same pass with the group's tensors replaced by
//!   their base type's values (quantized with their importance, or read back
//!   from the spill) and their matmul inputs rounded as ggml rounds them for
//!   that type: what llama.cpp computes on a file where only the group is
//!   quantized.
//! - Drift: per language, the mean over its windows of
//!   `1 − cos(pooled reference, pooled group)` (every token row's for a model
//!   that does not pool), languages weighted as the importance is (equally
//!   unless `--lang-weights`). It is 1 minus the per-window cosine that
//!   `laquant eval` reports per language, averaged as its mean is. A
//!   reranker's rank pooling (one score, no direction) is refused.
//! - Cost: every group runs the whole encoder on the sample (a bidirectional
//!   layer sees every position, so no prefix of the pass is shared with the
//!   reference as the decoders' layered passes share it): `1 + groups`
//!   encoder passes over `tokens` tokens per language, sized by the same
//!   budget as the decoders' ([`super::fit_budget`]), multiply-adds counted
//!   per pass as `layers · len · (4h² + 2h·ff + 2·len·h)`.

use super::{
    fit_budget, group_band, groups_of, probe_values, CalibrationSize, Measurement, Packed, Probe,
    Quantity, SampleSpec, Sizing,
};
use crate::calib::actquant::ActQuant;
use crate::calib::forward::rows_of;
use crate::calib::{
    self, CalibError, Encoder, ForwardConfig, Matmul, Pooling, TextTokenizer, WeightSource,
};
use crate::eval::embed::metrics::cosine;
use crate::hf::Checkpoint;
use std::collections::HashMap;

/// Multiply-adds of one encoder pass over a sequence of `len` tokens: Q, K,
/// V and output (`4h²`), up and down (`2h·ff`) per token, the attention's
/// scores and weighted sums (`2·len·h`), in every layer.
fn pass_macs(cfg: &ForwardConfig, len: usize) -> f64 {
    let (h, ff, len) = (cfg.hidden as f64, cfg.intermediate as f64, len as f64);
    cfg.n_layers as f64 * len * (4.0 * h * h + 2.0 * h * ff + 2.0 * len * h)
}

/// One language's framed lines (ids, closing frame tokens) and weight.
struct Lines {
    lang: String,
    lines: Vec<(Vec<u32>, usize)>,
    weight: f64,
}

/// Per language, its first framed lines, at least `most` tokens of them when
/// the text has them.
fn lines(ck: &Checkpoint, spec: &SampleSpec, most: usize) -> Result<Vec<Lines>, CalibError> {
    let tok = TextTokenizer::from_dir(&ck.dir)?;
    let corpus = spec.corpus.load()?;
    let langs: Vec<&str> = corpus.docs.iter().map(|d| d.lang.as_str()).collect();
    let weights = calib::normalized_weights(&langs, &spec.lang_weights)?;
    let mut out = Vec::with_capacity(corpus.docs.len());
    for (d, weight) in corpus.docs.iter().zip(weights) {
        let mut lines = Vec::new();
        let mut tokens = 0;
        for l in d.text.lines().filter(|l| !l.trim().is_empty()) {
            let (ids, closing) = tok.encode_framed(l.trim_end())?;
            tokens += ids.len();
            lines.push((ids, closing));
            if tokens >= most {
                break;
            }
        }
        if tokens < 2 {
            return Err(CalibError::ShortSample {
                lang: d.lang.clone(),
                source_name: d.source.to_string(),
            });
        }
        out.push(Lines {
            lang: d.lang.clone(),
            lines,
            weight,
        });
    }
    Ok(out)
}

/// The windows of `tokens` tokens at most (at least one window, cut to its
/// frame and one token if need be), none longer than `n_pos`.
fn windows(lines: &[(Vec<u32>, usize)], tokens: usize, n_pos: usize) -> Vec<Vec<u32>> {
    let mut left = tokens;
    let mut out = Vec::new();
    for (ids, closing) in lines {
        let least = if out.is_empty() { closing + 2 } else { 0 };
        let cap = left.max(least).min(n_pos);
        if ids.len() <= cap {
            out.push(ids.clone());
            left = left.saturating_sub(ids.len());
        } else if cap > closing + 1 {
            let mut w = ids[..cap - closing].to_vec();
            w.extend_from_slice(&ids[ids.len() - closing..]);
            out.push(w);
            left = 0;
        }
        if left == 0 || out.is_empty() {
            break;
        }
    }
    out
}

/// The pooling drift is measured through: the model's, unless it has none to
/// measure (rank).
fn pooling(ck: &Checkpoint) -> Result<Pooling, CalibError> {
    match Pooling::from_type(ck.config.pooling_type)? {
        Pooling::Rank => Err(CalibError::NoEmbedding {
            model: ck.dir.display().to_string(),
            pooling: "rank".into(),
        }),
        p => Ok(p),
    }
}

/// The positions the encoder has rows for.
fn positions(ck: &Checkpoint, cfg: &ForwardConfig) -> Result<usize, CalibError> {
    let name = (cfg.arch.tensors)
        .global_name(crate::arch::Role::PosEmbd)
        .ok_or_else(|| {
            CalibError::Unsupported(format!("the {} spec names no PosEmbd", cfg.arch.gguf_arch))
        })?;
    let shape = ck
        .tensor_shape(&name)
        .map_err(|e| CalibError::Weights(format!("{name}: {e}")))?;
    Ok(shape.first().copied().unwrap_or(0).max(1))
}

/// Sizes the drift measurement of `probes` as [`super::prepare`] sizes the KLD's.
pub(super) fn prepare(
    ck: &Checkpoint,
    probes: &[Probe],
    spec: &SampleSpec,
    calibration: Option<CalibrationSize>,
) -> Result<Measurement, CalibError> {
    let cfg = ForwardConfig::from_hf(&ck.config)?;
    pooling(ck)?;
    let n_pos = positions(ck, &cfg)?;
    let langs = lines(ck, spec, spec.tokens.max(2))?;
    let sample = |tokens: usize| -> Vec<(String, Vec<u32>, f64)> {
        let mut out = Vec::new();
        for l in &langs {
            let ws = windows(&l.lines, tokens, n_pos);
            let w = l.weight / ws.len().max(1) as f64;
            out.extend(ws.into_iter().map(|ids| (l.lang.clone(), ids, w)));
        }
        out
    };
    let calibration_macs = calibration
        .filter(|c| c.tokens > 0 && c.ctx > 0)
        .map(|c| c.tokens as f64 / c.ctx as f64 * pass_macs(&cfg, c.ctx));
    let cost = |band: usize, tokens: usize| -> Result<f64, CalibError> {
        let groups = group_band(probes, band).1.len();
        let pass: f64 = sample(tokens)
            .iter()
            .map(|t| pass_macs(&cfg, t.1.len()))
            .sum();
        Ok((1 + groups) as f64 * pass)
    };
    let budget = spec.budget.zip(calibration_macs).map(|(f, c)| f * c);
    let (band, tokens) = fit_budget(probes, spec, budget, &cost)?;
    let (group_of, labels) = group_band(probes, band);
    let texts = sample(tokens);
    Ok(Measurement {
        // The encoder's products are f32 ([`Encoder`]).
        matmul: Matmul::F32,
        quantity: Quantity::EmbeddingDrift,
        sizing: Sizing {
            measure: Quantity::EmbeddingDrift,
            tokens_per_language: tokens,
            band,
            groups: labels.len(),
            scored_tokens: texts.iter().map(|t| t.1.len()).sum(),
            macs: cost(band, tokens)?,
            calibration_macs,
            budget_macs: budget,
        },
        texts,
        group_of,
        labels,
    })
}

/// The checkpoint with some tensors replaced by their quantized values (and
/// matmul inputs rounded for their type).
struct Probed<'a> {
    base: &'a Checkpoint,
    values: HashMap<&'a str, (Vec<f32>, &'a Probe)>,
}

impl WeightSource for Probed<'_> {
    fn weight(&self, hf_name: &str) -> Result<Vec<f32>, CalibError> {
        match self.values.get(hf_name) {
            Some((v, _)) => Ok(v.clone()),
            None => self.base.weight(hf_name),
        }
    }
    fn has_weight(&self, hf_name: &str) -> bool {
        self.values.contains_key(hf_name) || self.base.has_weight(hf_name)
    }
    fn rows(&self, hf_name: &str, width: usize, rows: &[usize]) -> Result<Vec<f32>, CalibError> {
        match self.values.get(hf_name) {
            Some((v, _)) => rows_of(v, hf_name, width, rows),
            None => self.base.rows(hf_name, width, rows),
        }
    }
    fn activation(&self, hf_name: &str) -> ActQuant {
        match self.values.get(hf_name) {
            Some((_, p)) => ActQuant::for_weight(p.base),
            None => self.base.activation(hf_name),
        }
    }
    fn block_minima(&self, hf_name: &str) -> Result<Option<Vec<f32>>, CalibError> {
        let Some((_, p)) = self.values.get(hf_name) else {
            return self.base.block_minima(hf_name);
        };
        if crate::quant::min_offset(p.base).is_none() {
            return Ok(None);
        }
        // A Q4_1/Q5_1 base: the minima of its blocks, as ggml's dot product reads them.
        let w = self.base.weight(hf_name)?;
        let packed = crate::quant::quantize_tensor(p.base, &w, p.width, p.importance.as_deref())
            .map_err(|e| CalibError::Weights(format!("{}: {e}", p.gguf_name)))?;
        Ok(crate::quant::block_minima(p.base, &packed))
    }
}

/// The pooled embedding of every sample window.
fn embed_all(
    enc: &Encoder,
    src: &dyn WeightSource,
    texts: &[(String, Vec<u32>, f64)],
) -> Result<Vec<Vec<f32>>, CalibError> {
    texts.iter().map(|t| enc.embed(src, &t.1, None)).collect()
}

/// Languages weighted, each the mean over its windows of `1 − cos` (row by
/// row of `h` values: one row when pooled, every token's otherwise).
fn drift(texts: &[(String, Vec<u32>, f64)], r: &[Vec<f32>], q: &[Vec<f32>], h: usize) -> f64 {
    let total: f64 = texts.iter().map(|t| t.2).sum();
    let gap = |a: &[f32], b: &[f32]| {
        let rows = (a.len() / h.max(1)).max(1);
        let s: f64 = (a.chunks(h.max(1)).zip(b.chunks(h.max(1))))
            .map(|(x, y)| 1.0 - cosine(x, y))
            .sum();
        s / rows as f64
    };
    let s: f64 = (texts.iter().zip(r).zip(q))
        .map(|((t, a), b)| t.2 * gap(a, b))
        .sum();
    if total > 0.0 {
        s / total
    } else {
        0.0
    }
}

/// Every group's embedding drift, as `job` sized it. `progress(done, total)`
/// counts encoder passes over the sample.
pub(super) fn measure(
    ck: &Checkpoint,
    probes: &[Probe],
    job: &Measurement,
    packed: &dyn Packed,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<f64>, CalibError> {
    let threads = rayon::current_num_threads();
    let pooling = pooling(ck)?;
    let total = 1 + job.labels.len() as u64;
    let reference = Encoder::load(&ck.config, ck, Some(pooling), threads)?;
    let h = reference.cfg.hidden;
    let r = embed_all(&reference, ck, &job.texts)?;
    drop(reference);
    progress(1, total);
    let groups = groups_of(&job.group_of, job.labels.len());
    let mut out = Vec::with_capacity(groups.len());
    for (g, members) in groups.iter().enumerate() {
        let mut values = HashMap::new();
        for &i in members {
            let p = &probes[i];
            let v = probe_values(p, packed, None, &|| ck.weight(&p.hf_name))?;
            values.insert(p.hf_name.as_str(), (v, p));
        }
        let src = Probed { base: ck, values };
        let enc = Encoder::load(&ck.config, &src, Some(pooling), threads)?;
        let q = embed_all(&enc, &src, &job.texts)?;
        out.push(drift(&job.texts, &r, &q, h));
        progress(2 + g as u64, total);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Role;
    use crate::gguf::GgmlType;

    fn fixture(name: &str) -> Checkpoint {
        Checkpoint::open(&format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// Layer 0's `ffn_up` of `ck` as a probe of base type `ty`.
    fn ffn_up(ck: &Checkpoint, ty: GgmlType) -> Probe {
        let hf = (ck.config.arch.tensors).layer_name(0, Role::FfnUp).unwrap();
        let shape = ck.tensor_shape(&hf).unwrap();
        Probe {
            hf_name: hf,
            gguf_name: "blk.0.ffn_up.weight".into(),
            role: Role::FfnUp,
            layer: Some(0),
            base: ty,
            width: shape[1],
            rows: shape[0],
            importance: None,
            base_error: 1.0,
            energy: 1.0,
        }
    }

    fn spec(tokens: usize) -> SampleSpec {
        SampleSpec {
            tokens,
            budget: None,
            ..SampleSpec::default()
        }
    }

    /// The drift of one tensor orders its types as their precision: Q8_0 <
    /// Q4_K < Q2_K, every one above zero; the sample is one set of framed
    /// windows per language of at most the asked tokens.
    #[test]
    fn drift_orders_types_by_precision() {
        for name in ["bert", "xlmr"] {
            let ck = fixture(name);
            let types = [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q2K];
            let probes: Vec<Probe> = types.iter().map(|&t| ffn_up(&ck, t)).collect();
            // Each alone: three groups of one tensor (a band would join them).
            let job = Measurement {
                group_of: vec![0, 1, 2],
                labels: types.iter().map(|t| t.name().to_string()).collect(),
                ..prepare(&ck, &probes[..1], &spec(24), None).unwrap()
            };
            assert_eq!(job.sizing.measure, Quantity::EmbeddingDrift);
            let mut langs: HashMap<&str, usize> = HashMap::new();
            for (l, ids, _) in &job.texts {
                *langs.entry(l.as_str()).or_default() += ids.len();
            }
            assert_eq!(langs.len(), 29, "{name}");
            assert!(
                langs.values().all(|&n| (4..=24).contains(&n)),
                "{name}: {langs:?}"
            );
            let d = measure(&ck, &probes, &job, &(), &mut |_, _| {}).unwrap();
            eprintln!(
                "{name}: drift Q8_0 {:.3e}, Q4_K {:.3e}, Q2_K {:.3e}",
                d[0], d[1], d[2]
            );
            assert!(0.0 < d[0] && d[0] < d[1] && d[1] < d[2], "{name}: {d:?}");
        }
    }

    /// Windows fill the asked tokens in whole lines, the last cut with its
    /// closing frame; a first line longer than the tokens is cut likewise.
    #[test]
    fn windows_spend_the_tokens_and_keep_the_frame() {
        let lines = vec![(vec![0, 5, 6, 2], 1), (vec![0, 7, 8, 9, 10, 2], 1)];
        assert_eq!(
            windows(&lines, 7, 512),
            vec![vec![0, 5, 6, 2], vec![0, 7, 2]]
        );
        assert_eq!(windows(&lines, 4, 512), vec![vec![0, 5, 6, 2]]);
        assert_eq!(windows(&lines[1..], 3, 512), vec![vec![0, 7, 2]]);
        assert_eq!(windows(&lines[1..], 100, 4), vec![vec![0, 7, 8, 2]]);
    }

    /// A reranker's one score has no direction: refused by name.
    #[test]
    fn rank_pooling_is_refused() {
        let mut ck = fixture("xlmr-rerank");
        // As converted it does not pool (no modules.json); declared rank here.
        ck.config.pooling_type = Some(4);
        let e = prepare(&ck, &[ffn_up(&ck, GgmlType::Q4K)], &spec(8), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank") && e.contains("xlmr-rerank"), "{e}");
    }
}
