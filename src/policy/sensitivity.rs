//! Measured sensitivity: how much a tensor's quantization error costs at the
//! model's output, so that the calibrated policies can compare tensors.
//!
//! The proxy `E_t(type) = Σ_rows Σ_j I[j] (w − deq(q(w)))²` ([`super::lamix`])
//! ranks the types of one tensor well, but it is not comparable across
//! tensors: an error in the output head reaches the logits directly, one in an
//! early `ffn_gate` is damped or amplified by every later layer. So for every
//! tensor t (or, on large models, every group of tensors of one role in a band
//! of layers) we quantize t alone to its la-mix base type, run the forward pass
//! on a small sample of the calibration text (the same number of tokens in
//! every language, languages weighted as the importance is), and measure the
//! mean KL divergence of the next-token distribution from the unquantized
//! model's, `ΔKLD_t`. Then `α_t = ΔKLD_t / E_t(base)` and the policies use
//! `α_t · E_t(type)` for every type: an estimate of the KLD the tensor adds.
//!
//! Cost: one forward pass over the sample per group plus one for the
//! reference; memory: one extra f32 copy of the model while a group is
//! measured, and the reference log-probabilities of the sample
//! (`tokens × languages × vocab` f32). Everything is deterministic: the sample
//! is the start of each language's text, the kernels and the forward pass are.

use crate::arch::Role;
use crate::calib::actquant::ActQuant;
use crate::calib::{self, CalibError, CorpusSource, ForwardConfig, Model, WeightSource};
use crate::gguf::GgmlType;
use crate::hf::Checkpoint;
use crate::quant;
use std::collections::HashMap;

/// Where the sample comes from and how large it is.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSpec {
    pub corpus: CorpusSource,
    /// Relative language weights (as `--lang-weights`; others weigh 1).
    pub lang_weights: Vec<(String, f64)>,
    /// Tokens per language (the first ones of its text, BOS first); 0 = do not measure.
    pub tokens: usize,
    /// At most this many forward passes besides the reference: beyond it,
    /// tensors of one role in a band of adjacent layers are measured together.
    pub max_groups: usize,
}

/// Default tokens per language of the sample.
pub const DEFAULT_TOKENS: usize = 32;
/// Default most groups (forward passes) before tensors are grouped.
pub const DEFAULT_MAX_GROUPS: usize = 96;

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec {
            corpus: CorpusSource::Embedded,
            lang_weights: Vec::new(),
            tokens: DEFAULT_TOKENS,
            max_groups: DEFAULT_MAX_GROUPS,
        }
    }
}

/// One tensor to measure.
#[derive(Clone, Debug)]
pub struct Probe {
    pub hf_name: String,
    pub gguf_name: String,
    pub role: Role,
    pub layer: Option<usize>,
    /// The la-mix base type after the width fallback.
    pub base: GgmlType,
    /// Row width (the HF tensor's last dimension).
    pub width: usize,
    /// Column importance used to quantize it (as the pipeline will).
    pub importance: Option<Vec<f32>>,
    /// `E_t(base)`.
    pub base_error: f64,
}

/// The result for every probe, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Group of each probe (index into `groups`).
    pub group_of: Vec<usize>,
    /// Per group: a label (`blk.3.ffn_down`, `ffn_down of layers 0-3`) and its ΔKLD.
    pub groups: Vec<(String, f64)>,
    /// `α` of each probe: its group's ΔKLD over the group's summed base error.
    pub alpha: Vec<f64>,
    /// Tokens scored per pass (all languages).
    pub tokens: usize,
}

/// Groups probes: each alone when there are at most `max_groups`, otherwise
/// the tensors of one role in bands of `b` adjacent layers, `b` the smallest
/// band that gives at most `max_groups` groups (tensors outside layers alone).
/// Returns (group of each probe, group labels).
pub fn group(probes: &[Probe], max_groups: usize) -> (Vec<usize>, Vec<String>) {
    let n_layers = probes
        .iter()
        .filter_map(|p| p.layer)
        .max()
        .map_or(0, |l| l + 1);
    let mut band = 1;
    loop {
        let mut keys: Vec<(Role, Option<usize>)> = probes
            .iter()
            .map(|p| (p.role, p.layer.map(|l| l / band)))
            .collect();
        keys.sort_by_key(|k| (format!("{:?}", k.0), k.1));
        keys.dedup();
        if keys.len() <= max_groups.max(1) || band >= n_layers.max(1) {
            break;
        }
        band += 1;
    }
    let mut labels: Vec<String> = Vec::new();
    let mut index: HashMap<(Role, Option<usize>), usize> = HashMap::new();
    let group_of = probes
        .iter()
        .map(|p| {
            let key = (p.role, p.layer.map(|l| l / band));
            *index.entry(key).or_insert_with(|| {
                labels.push(match p.layer {
                    None => p.gguf_name.trim_end_matches(".weight").to_string(),
                    Some(_) if band == 1 => p.gguf_name.trim_end_matches(".weight").to_string(),
                    Some(l) => {
                        let lo = l / band * band;
                        let hi = (lo + band).min(n_layers) - 1;
                        format!("{} of layers {lo}-{hi}", p.role.gguf_stem())
                    }
                });
                labels.len() - 1
            })
        })
        .collect();
    (group_of, labels)
}

/// The checkpoint with some tensors replaced by their quantized-dequantized values.
struct Patched<'a> {
    ck: &'a Checkpoint,
    patched: HashMap<String, (Vec<f32>, ActQuant)>,
}

impl WeightSource for Patched<'_> {
    fn weight(&self, hf_name: &str) -> Result<Vec<f32>, CalibError> {
        match self.patched.get(hf_name) {
            Some((v, _)) => Ok(v.clone()),
            None => self.ck.weight(hf_name),
        }
    }
    fn has_weight(&self, hf_name: &str) -> bool {
        self.ck.has_weight(hf_name)
    }
    fn activation(&self, hf_name: &str) -> ActQuant {
        self.patched.get(hf_name).map_or(ActQuant::F32, |p| p.1)
    }
}

/// `deq(q(w))` of a whole tensor (rows of `width`, in the checkpoint's row
/// order: quantization is per row, so the converter's row permutation of Q/K
/// does not change the values).
pub fn round_trip(
    ty: GgmlType,
    w: &[f32],
    width: usize,
    importance: Option<&[f32]>,
) -> Result<Vec<f32>, quant::QuantError> {
    if matches!(ty, GgmlType::F32) {
        return Ok(w.to_vec());
    }
    let packed = quant::quantize_tensor(ty, w, width, importance)?;
    let rb = ty.row_bytes(width as u64).unwrap_or(0) as usize;
    let mut out = vec![0f32; w.len()];
    for (q, o) in packed.chunks_exact(rb).zip(out.chunks_exact_mut(width)) {
        quant::dequantize(ty, q, o)?;
    }
    Ok(out)
}

/// `log_softmax` of one row, in f64 sums.
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    row.iter().map(|&v| (v as f64 - lse) as f32).collect()
}

/// `Σ_i p_i (log p_i − log q_i)` from the reference log-probabilities and the logits of q.
pub fn kld_row(log_p: &[f32], q_logits: &[f32]) -> f64 {
    let log_q = log_softmax(q_logits);
    log_p
        .iter()
        .zip(&log_q)
        .map(|(&lp, &lq)| (lp as f64).exp() * (lp as f64 - lq as f64))
        .sum()
}

/// The sample: per language, its first `tokens` tokens (BOS first when the
/// model has one), and the language weights.
fn sample(ck: &Checkpoint, spec: &SampleSpec) -> Result<Vec<(String, Vec<u32>, f64)>, CalibError> {
    let tok = calib::TextTokenizer::from_dir(&ck.dir)?;
    let corpus = spec.corpus.load()?;
    let langs: Vec<&str> = corpus.docs.iter().map(|d| d.lang.as_str()).collect();
    let weights = calib::normalized_weights(&langs, &spec.lang_weights)?;
    let mut out = Vec::new();
    for (d, w) in corpus.docs.iter().zip(weights) {
        let mut ids = tok.encode(&d.text)?;
        if let Some(b) = tok.bos() {
            ids.insert(0, b);
        }
        ids.truncate(spec.tokens.max(2));
        if ids.len() < 2 {
            return Err(CalibError::Other(format!(
                "sensitivity sample: {} ({}) has fewer than 2 tokens",
                d.lang, d.source
            )));
        }
        out.push((d.lang.clone(), ids, w));
    }
    Ok(out)
}

/// Measures `ΔKLD` of every group of `probes` (see the module doc).
/// `progress(done, total)` is called after every pass.
pub fn measure(
    ck: &Checkpoint,
    probes: &[Probe],
    spec: &SampleSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Measured, CalibError> {
    let threads = rayon::current_num_threads();
    let cfg = ForwardConfig::from_hf(&ck.config)?;
    let vocab = cfg.vocab;
    let texts = sample(ck, spec)?;
    let (group_of, labels) = group(probes, spec.max_groups);
    let total = labels.len() + 1;
    // Reference log-probabilities of every scored position.
    let reference = Model::load(cfg.clone(), ck, threads)?;
    let mut ref_logp: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
    for (_, ids, _) in &texts {
        let logits = reference.forward_logits_from(&ids[..ids.len() - 1], 0)?;
        let lp: Vec<f32> = logits.chunks_exact(vocab).flat_map(log_softmax).collect();
        ref_logp.push(lp);
    }
    drop(reference);
    progress(1, total);
    let mut groups = Vec::with_capacity(labels.len());
    for (g, label) in labels.into_iter().enumerate() {
        let mut patched = HashMap::new();
        for (p, _) in probes.iter().zip(&group_of).filter(|(_, &pg)| pg == g) {
            let w = ck.weight(&p.hf_name)?;
            let deq = round_trip(p.base, &w, p.width, p.importance.as_deref())
                .map_err(|e| CalibError::Weights(format!("{}: {e}", p.gguf_name)))?;
            patched.insert(p.hf_name.clone(), (deq, ActQuant::for_weight(p.base)));
        }
        let src = Patched { ck, patched };
        let model = Model::load(cfg.clone(), &src, threads)?;
        let mut d = 0f64;
        for ((_, ids, w), lp) in texts.iter().zip(&ref_logp) {
            let logits = model.forward_logits_from(&ids[..ids.len() - 1], 0)?;
            use rayon::prelude::*;
            let sum: f64 = lp
                .par_chunks_exact(vocab)
                .zip(logits.par_chunks_exact(vocab))
                .map(|(p, q)| kld_row(p, q))
                .collect::<Vec<f64>>()
                .iter()
                .sum();
            d += w * sum / (ids.len() - 1) as f64;
        }
        groups.push((label, d.max(0.0)));
        progress(g + 2, total);
    }
    let mut group_err = vec![0f64; groups.len()];
    for (p, &g) in probes.iter().zip(&group_of) {
        group_err[g] += p.base_error;
    }
    let alpha = group_of
        .iter()
        .map(|&g| {
            if group_err[g] > 0.0 {
                groups[g].1 / group_err[g]
            } else {
                0.0
            }
        })
        .collect();
    Ok(Measured {
        group_of,
        groups,
        alpha,
        tokens: texts.iter().map(|t| t.1.len() - 1).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(role: Role, layer: Option<usize>) -> Probe {
        let name = match layer {
            Some(l) => format!("blk.{l}.{}.weight", role.gguf_stem()),
            None => format!("{}.weight", role.gguf_stem()),
        };
        Probe {
            hf_name: name.clone(),
            gguf_name: name,
            role,
            layer,
            base: GgmlType::Q4K,
            width: 256,
            importance: None,
            base_error: 1.0,
        }
    }

    fn model_probes(n_layers: usize) -> Vec<Probe> {
        let mut v = vec![probe(Role::TokenEmbd, None), probe(Role::Output, None)];
        for l in 0..n_layers {
            for r in [Role::AttnQ, Role::AttnV, Role::FfnDown] {
                v.push(probe(r, Some(l)));
            }
        }
        v
    }

    #[test]
    fn small_models_measure_every_tensor_alone() {
        let p = model_probes(4);
        let (g, labels) = group(&p, 100);
        assert_eq!(labels.len(), p.len());
        assert_eq!(g, (0..p.len()).collect::<Vec<_>>());
        assert_eq!(labels[2], "blk.0.attn_q");
    }

    #[test]
    fn large_models_group_one_role_over_a_band_of_layers() {
        let p = model_probes(32); // 2 + 96 tensors
        let (g, labels) = group(&p, 20);
        assert!(labels.len() <= 20, "{labels:?}");
        // Band of 6 layers: 2 + 3 roles x ceil(32/6) = 20 groups.
        assert_eq!(labels.len(), 20);
        for (i, a) in p.iter().enumerate() {
            for (j, b) in p.iter().enumerate() {
                let same = g[i] == g[j];
                let want = a.role == b.role && a.layer.map(|l| l / 6) == b.layer.map(|l| l / 6);
                assert_eq!(same, want, "{} {}", a.gguf_name, b.gguf_name);
            }
        }
        assert!(labels.contains(&"ffn_down of layers 30-31".to_string()));
        assert!(labels.contains(&"output".to_string()));
    }

    #[test]
    fn kld_is_zero_for_the_same_distribution_and_positive_otherwise() {
        let logits = [1.0f32, 2.0, -1.0, 0.5];
        let lp = log_softmax(&logits);
        assert!(kld_row(&lp, &logits).abs() < 1e-7);
        // Shifting all logits changes nothing; changing one does.
        let shifted: Vec<f32> = logits.iter().map(|x| x + 3.0).collect();
        assert!(kld_row(&lp, &shifted).abs() < 1e-6);
        let other = [1.0f32, 1.0, -1.0, 0.5];
        let d = kld_row(&lp, &other);
        // By hand: Σ p (log p − log q).
        let lq = log_softmax(&other);
        let want: f64 = lp
            .iter()
            .zip(&lq)
            .map(|(&a, &b)| (a as f64).exp() * (a - b) as f64)
            .sum();
        assert!(d > 1e-3 && (d - want).abs() < 1e-6 * want, "{d} {want}");
    }

    #[test]
    fn round_trip_is_quantize_then_dequantize() {
        let w: Vec<f32> = (0..512 * 3)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let rt = round_trip(GgmlType::Q4K, &w, 512, None).unwrap();
        let packed = quant::quantize_tensor(GgmlType::Q4K, &w, 512, None).unwrap();
        let mut want = vec![0f32; 512];
        quant::dequantize(GgmlType::Q4K, &packed[144 * 2 * 2..], &mut want).unwrap();
        assert_eq!(&rt[1024..], &want[..]);
        assert_ne!(rt, w);
        assert_eq!(round_trip(GgmlType::F32, &w, 512, None).unwrap(), w);
    }

    fn fixture_plan(outtype: crate::pipeline::OutType) -> Vec<crate::pipeline::TensorPlan> {
        use crate::pipeline::{self, ConvertOptions, Importance};
        let dir = format!("{}/fixtures/llama-bpe", env!("CARGO_MANIFEST_DIR"));
        let ck = Checkpoint::open(&dir).unwrap();
        let opts = ConvertOptions {
            outtype,
            quiet: true,
            importance: Some(Importance {
                sensitivity: Some(SampleSpec {
                    tokens: 24,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        pipeline::plan(&ck, &opts).unwrap()
    }

    /// On a real (tiny) checkpoint: every calibrated tensor is measured, the
    /// errors are the proxy times α, the plan is the same on a second run,
    /// la-mix upgrades first the tensor with the most estimated KLD removed per
    /// extra bit, and --target-bpw stays within its target.
    #[test]
    fn measured_plans_rank_by_alpha_and_are_deterministic() {
        use crate::pipeline::OutType;
        let p = fixture_plan(OutType::LaMix { f16_budget: 0.2 });
        let scored: Vec<_> = p.iter().filter(|t| t.score.is_some()).collect();
        assert!(scored.len() >= 10);
        for t in &scored {
            let s = t.score.as_ref().unwrap();
            let (a, d) = (s.alpha.unwrap(), s.delta_kld.unwrap());
            assert!(a > 0.0 && d > 0.0, "{}: α {a} ΔKLD {d}", t.name);
            assert!(t.reason.contains("measured"), "{}", t.reason);
            // Alone in its group: ΔKLD = α · E(base).
            assert!((s.base_error - d).abs() <= 1e-9 * d, "{}", t.name);
        }
        // The F16 budget, a bit budget (lamix::la_mix), buys its first upgrade for the
        // tensor with the highest gain per bit (α-scaled); every tensor says what it got.
        let params: u64 = p.iter().map(|t| t.n_elements()).sum();
        let g = |t: &&crate::pipeline::TensorPlan| t.score.as_ref().unwrap().gain_per_bit;
        let top = scored
            .iter()
            .max_by(|a, b| g(a).partial_cmp(&g(b)).unwrap())
            .unwrap();
        assert!(
            top.reason.contains("upgraded by the F16 budget"),
            "{}",
            top.reason
        );
        for t in &scored {
            assert!(
                t.reason.contains("upgraded by the F16 budget")
                    || t.reason.contains("not upgraded"),
                "{}",
                t.reason
            );
        }
        // Deterministic.
        let again = fixture_plan(OutType::LaMix { f16_budget: 0.2 });
        for (a, b) in p.iter().zip(&again) {
            assert_eq!((a.ty, &a.reason), (b.ty, &b.reason), "{}", a.name);
        }
        // --target-bpw with measured errors stays within the target.
        for x in [4.0, 6.0] {
            let p = fixture_plan(OutType::TargetBpw(x));
            let bits = 8.0 * p.iter().map(|t| t.bytes).sum::<u64>() as f64;
            assert!(
                bits / params as f64 <= x + 1e-9,
                "{x}: {}",
                bits / params as f64
            );
            assert!(p.iter().any(|t| t.reason.contains("measured")));
        }
    }
}
