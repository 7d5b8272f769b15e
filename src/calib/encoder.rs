//! CPU forward pass of the BERT family's encoders (`BertModel`,
//! `XLMRobertaModel`, `XLMRobertaForSequenceClassification`: the
//! [`crate::arch::AttentionKind::BidirectionalSeparateQkv`] block), as
//! llama.cpp's `llama_model_bert::graph` (`src/models/bert.cpp`) and
//! `llm_graph_context::build_pooling` compute it for `llama-embedding`:
//!
//! - input: token embedding rows, plus row 0 of the token-type embeddings
//!   (llama.cpp hard-codes every token to type 0, "sentence A"), plus the
//!   learned position rows from 0 (XLM-R's rows before its padding offset are
//!   dropped by the converter and by [`crate::hf::Checkpoint`] alike), then
//!   LayerNorm with bias (`ggml_norm`, `ggml_mul`, `ggml_add`);
//! - per layer: separate Q, K, V with biases, bidirectional attention
//!   (`softmax(QKᵀ/√d)V` over the whole sequence, no mask), the output
//!   projection with its bias, the layer input added back and LayerNormed
//!   (`attn_output_norm`), the plain GELU MLP (ggml's f16-table GELU, as
//!   `ggml_gelu`, both matmuls with biases), its input added back and
//!   LayerNormed (`layer_output_norm`);
//! - pooling as the model declares it (`bert.pooling_type`): none (every
//!   token's row), mean (each column's `Σ x · (1/n)`, as the `ggml_mul_mat`
//!   with `inp_mean` sums it), CLS (the first token), last token, or rank
//!   (CLS, then the classifier: `tanh(W·x + b)` and the output projection,
//!   `n_cls_out` scores).
//!
//! Matmul inputs are rounded as ggml's CPU backend rounds them for the
//! weights' stored type ([`WeightSource::activation`]), so the same pass on a
//! quantized file ([`crate::eval::GgufWeights`]) follows llama.cpp on that
//! file; every matmul input can be tapped into [`TapSums`] (the per-column
//! Σx² `llama-imatrix` collects for a decoder; `llama-imatrix` does not run
//! encoders, so for them these sums are checked against this f32 pass only).

use super::actquant::ActQuant;
use super::forward::{
    accumulate_sq, add_q8_1_sums, check_len, gelu_in_place, get_weight, layer_norm_in_place,
    matmul_wt, rounded, softmax_in_place, ForwardConfig, TapSums, WeightSource,
};
use super::CalibError;
use crate::arch::{AttentionKind, Input, Role};
use crate::hf::Config;
use rayon::prelude::*;

/// How token rows become the model's output (`LLAMA_POOLING_TYPE_*`,
/// gguf-py's `PoolingType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Every token's row (`bert.pooling_type` absent or 0).
    None,
    /// The mean of the token rows (1).
    Mean,
    /// The first token's row (2).
    Cls,
    /// The last token's row (3).
    Last,
    /// CLS, then the classifier head's scores (4).
    Rank,
}

impl Pooling {
    /// The pooling of `bert.pooling_type` value `v` (`None`: the key is absent).
    pub fn from_type(v: Option<u32>) -> Result<Pooling, CalibError> {
        Ok(match v {
            None | Some(0) => Pooling::None,
            Some(1) => Pooling::Mean,
            Some(2) => Pooling::Cls,
            Some(3) => Pooling::Last,
            Some(4) => Pooling::Rank,
            Some(n) => {
                return Err(CalibError::Unsupported(format!(
                    "pooling type {n} (llama.cpp knows 0 none, 1 mean, 2 cls, 3 last, 4 rank)"
                )))
            }
        })
    }
}

/// A linear layer: `n × k` weight (torch layout), optional bias, the input
/// rounding and Q8_1 block minima of its stored type.
struct Linear {
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    n: usize,
    k: usize,
    act: ActQuant,
    mins: Option<Vec<f32>>,
}

impl Linear {
    /// The weight `{base}.weight` (`n × k`) and, when the source has it, `{base}.bias`.
    fn read(src: &dyn WeightSource, base: &str, n: usize, k: usize) -> Result<Linear, CalibError> {
        let name = format!("{base}.weight");
        let w = get_weight(src, &name, n * k)?;
        let bias = format!("{base}.bias");
        let b = if src.has_weight(&bias) {
            Some(get_weight(src, &bias, n)?)
        } else {
            None
        };
        Ok(Linear {
            w,
            b,
            n,
            k,
            act: src.activation(&name),
            mins: src.block_minima(&name)?,
        })
    }

    /// `ggml_mul_mat(w, x)` then `ggml_add(·, b)`: `rows × n`.
    fn apply(&self, x: &[f32], rows: usize, threads: usize) -> Vec<f32> {
        let xr = rounded(x, self.k, self.act);
        let mut y = matmul_wt(&xr, rows, self.k, &self.w, self.n, None, threads);
        if let Some(m) = &self.mins {
            add_q8_1_sums(&mut y, x, rows, self.k, m, self.n, threads);
        }
        if let Some(b) = &self.b {
            for row in y.chunks_exact_mut(self.n) {
                for (v, bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
        y
    }
}

/// A LayerNorm's weight and bias.
struct LayerNorm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl LayerNorm {
    fn read(src: &dyn WeightSource, base: &str, n: usize) -> Result<LayerNorm, CalibError> {
        Ok(LayerNorm {
            w: get_weight(src, &format!("{base}.weight"), n)?,
            b: get_weight(src, &format!("{base}.bias"), n)?,
        })
    }

    fn apply(&self, x: &mut [f32], eps: f32) {
        layer_norm_in_place(x, self.w.len(), &self.w, Some(&self.b), eps);
    }
}

struct EncoderLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_out_norm: LayerNorm,
    up: Linear,
    down: Linear,
    layer_out_norm: LayerNorm,
}

/// The encoder in memory, f32 (weights as the source gives them, widened).
pub struct Encoder {
    /// The encoder's shape.
    pub cfg: ForwardConfig,
    /// The pooling applied by [`Encoder::embed`].
    pub pooling: Pooling,
    /// The token embeddings' HF name (rows read per call).
    tok_embd: String,
    /// Row 0 of the token-type embeddings, when the model has them.
    type0: Option<Vec<f32>>,
    /// The learned position rows, `n_pos × hidden`.
    pos: Vec<f32>,
    n_pos: usize,
    embd_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    /// The classifier's dense layer (`cls`) and output projection (`cls_out`).
    cls: Option<Linear>,
    cls_out: Option<Linear>,
    src_vocab: usize,
    threads: usize,
}

fn global(cfg: &ForwardConfig, role: Role) -> Option<String> {
    cfg.arch.tensors.global_name(role)
}

impl Encoder {
    /// The encoder `config` describes, weights from `src`, pooled as the
    /// config declares unless `pooling` overrides it.
    pub fn load(
        config: &Config,
        src: &dyn WeightSource,
        pooling: Option<Pooling>,
        threads: usize,
    ) -> Result<Encoder, CalibError> {
        if config.arch.block.attention.kind != AttentionKind::BidirectionalSeparateQkv {
            return Err(CalibError::Unsupported(format!(
                "{} is not an encoder (the encoder pass runs the BERT family)",
                config.arch.hf_classes[0]
            )));
        }
        let cfg = ForwardConfig::from_hf(config)?;
        let (h, ff) = (cfg.hidden, cfg.intermediate);
        if h == 0 || ff == 0 || cfg.n_layers == 0 || cfg.n_heads == 0 || cfg.vocab == 0 {
            return Err(CalibError::Unsupported(
                "config has a zero dimension (hidden_size, intermediate_size, num_hidden_layers, \
                 num_attention_heads or vocab_size)"
                    .into(),
            ));
        }
        if cfg.n_heads * cfg.head_dim != h || cfg.n_kv_heads != cfg.n_heads {
            return Err(CalibError::Unsupported(format!(
                "hidden_size {h} is not num_attention_heads {} × head_dim {} (an encoder's \
                 attention spans the hidden width, one key/value head per query head)",
                cfg.n_heads, cfg.head_dim
            )));
        }
        let pooling = match pooling {
            Some(p) => p,
            None => Pooling::from_type(config.pooling_type)?,
        };
        let name = |role: Role| {
            global(&cfg, role).ok_or_else(|| {
                CalibError::Unsupported(format!(
                    "the {} spec names no {role:?}",
                    cfg.arch.gguf_arch
                ))
            })
        };
        let tok_embd = name(Role::TokenEmbd)?;
        let type_name = name(Role::TokenTypes)?;
        let type0 = if src.has_weight(&type_name) {
            Some(src.rows(&type_name, h, &[0])?)
        } else {
            None
        };
        let pos_name = name(Role::PosEmbd)?;
        let pos = src.weight(&pos_name)?;
        if pos.is_empty() || !pos.len().is_multiple_of(h) {
            return Err(CalibError::Weights(format!(
                "tensor {pos_name} has {} elements, not a whole number of rows of {h}",
                pos.len()
            )));
        }
        let n_pos = pos.len() / h;
        let base = |n: String| n.strip_suffix(".weight").map(str::to_string).unwrap_or(n);
        let embd_norm = LayerNorm::read(src, &base(name(Role::TokenEmbdNorm)?), h)?;
        let layer_base = |l: usize, role: Role| -> Result<String, CalibError> {
            cfg.arch
                .tensors
                .layer_name(l, role)
                .map(base)
                .ok_or_else(|| {
                    CalibError::Unsupported(format!(
                        "the {} spec names no {role:?}",
                        cfg.arch.gguf_arch
                    ))
                })
        };
        let layers = (0..cfg.n_layers)
            .map(|l| {
                let lin =
                    |role: Role, n: usize, k: usize| Linear::read(src, &layer_base(l, role)?, n, k);
                Ok(EncoderLayer {
                    q: lin(Role::AttnQ, h, h)?,
                    k: lin(Role::AttnK, h, h)?,
                    v: lin(Role::AttnV, h, h)?,
                    o: lin(Role::AttnOutput, h, h)?,
                    attn_out_norm: LayerNorm::read(src, &layer_base(l, Role::AttnOutNorm)?, h)?,
                    up: lin(Role::FfnUp, ff, h)?,
                    down: lin(Role::FfnDown, h, ff)?,
                    layer_out_norm: LayerNorm::read(src, &layer_base(l, Role::LayerOutNorm)?, h)?,
                })
            })
            .collect::<Result<Vec<_>, CalibError>>()?;
        let head = |role: Role, n: usize| -> Result<Option<Linear>, CalibError> {
            match global(&cfg, role) {
                Some(w) if src.has_weight(&w) => Ok(Some(Linear::read(src, &base(w), n, h)?)),
                _ => Ok(None),
            }
        };
        let cls = head(Role::Cls, h)?;
        let n_cls_out = config.classifier_labels.len().max(1);
        let cls_out = head(Role::ClsOut, n_cls_out)?;
        if pooling == Pooling::Rank && cls.is_none() && cls_out.is_none() {
            return Err(CalibError::Unsupported(format!(
                "rank pooling needs a classifier head ({} has none)",
                config.arch.hf_classes[0]
            )));
        }
        Ok(Encoder {
            src_vocab: cfg.vocab,
            cfg,
            pooling,
            tok_embd,
            type0,
            pos,
            n_pos,
            embd_norm,
            layers,
            cls,
            cls_out,
            threads: threads.max(1),
        })
    }

    /// The positions the model has rows for (the longest sequence).
    pub fn max_tokens(&self) -> usize {
        self.n_pos
    }

    /// The last layer's output, `tokens.len() × hidden`, one sequence; Σx² of
    /// every matmul input added to `taps` when given (one count per token).
    pub fn hidden_states(
        &self,
        src: &dyn WeightSource,
        tokens: &[u32],
        mut taps: Option<&mut TapSums>,
    ) -> Result<Vec<f32>, CalibError> {
        let (h, t) = (self.cfg.hidden, tokens.len());
        if t == 0 {
            return Err(CalibError::Other(
                "the encoder got an empty sequence".into(),
            ));
        }
        if t > self.n_pos {
            return Err(CalibError::Other(format!(
                "a sequence of {t} tokens, the model has {} positions",
                self.n_pos
            )));
        }
        let rows: Vec<usize> = tokens
            .iter()
            .map(|&id| {
                let id = id as usize;
                if id >= self.src_vocab {
                    Err(CalibError::Other(format!(
                        "token id {id} is outside the vocabulary ({} entries)",
                        self.src_vocab
                    )))
                } else {
                    Ok(id)
                }
            })
            .collect::<Result<_, _>>()?;
        let mut x = src.rows(&self.tok_embd, h, &rows)?;
        check_len(&self.tok_embd, x.len(), t * h)?;
        // ggml_add(tok, type_row0), then ggml_add(pos, ·) (addition commutes).
        for (i, row) in x.chunks_exact_mut(h).enumerate() {
            if let Some(ty) = &self.type0 {
                for (v, &a) in row.iter_mut().zip(ty) {
                    *v += a;
                }
            }
            for (v, &p) in row.iter_mut().zip(&self.pos[i * h..(i + 1) * h]) {
                *v += p;
            }
        }
        let eps = self.cfg.rms_eps;
        self.embd_norm.apply(&mut x, eps);
        if let Some(tp) = taps.as_deref_mut() {
            tp.tokens += t as u64;
        }
        let block = self.cfg.block();
        for (li, l) in self.layers.iter().enumerate() {
            let mut tap = |input: Input, v: &[f32], width: usize| {
                if let Some(tp) = taps.as_deref_mut() {
                    let per = block.inputs().len();
                    let i = li * per + block.input_index(input);
                    accumulate_sq(&mut tp.sums[i], v, width);
                }
            };
            tap(Input::AttnIn, &x, h);
            let q = l.q.apply(&x, t, self.threads);
            let k = l.k.apply(&x, t, self.threads);
            let v = l.v.apply(&x, t, self.threads);
            let a = self.attention(&q, &k, &v, t);
            tap(Input::AttnOut, &a, h);
            let mut cur = l.o.apply(&a, t, self.threads);
            for (c, &xi) in cur.iter_mut().zip(&x) {
                *c += xi;
            }
            l.attn_out_norm.apply(&mut cur, eps);
            let ffn_inp = cur;
            tap(Input::FfnIn, &ffn_inp, h);
            let mut u = l.up.apply(&ffn_inp, t, self.threads);
            gelu_in_place(&mut u);
            tap(Input::FfnDown, &u, self.cfg.intermediate);
            let mut cur = l.down.apply(&u, t, self.threads);
            for (c, &f) in cur.iter_mut().zip(&ffn_inp) {
                *c += f;
            }
            l.layer_out_norm.apply(&mut cur, eps);
            x = cur;
        }
        Ok(x)
    }

    /// Bidirectional attention of one sequence, every head over every key:
    /// `softmax(scale · q kᵀ) v` per head (`ggml_soft_max_ext` without a
    /// mask), `t × hidden` with the heads side by side.
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], t: usize) -> Vec<f32> {
        let (d, nh) = (self.cfg.head_dim, self.cfg.n_heads);
        let w = nh * d;
        let scale = 1.0 / (d as f32).sqrt();
        let heads: Vec<Vec<f32>> = (0..nh)
            .into_par_iter()
            .map(|hh| {
                let head = |m: &[f32]| -> Vec<f32> {
                    m.chunks_exact(w)
                        .flat_map(|r| r[hh * d..(hh + 1) * d].iter().copied())
                        .collect()
                };
                let (qh, kh, vh) = (head(q), head(k), head(v));
                // Scores: t × t (rows: queries), kᵀ as a d × t product.
                let mut s = matmul_wt(&qh, t, d, &kh, t, None, 1);
                for row in s.chunks_exact_mut(t) {
                    for x in row.iter_mut() {
                        *x *= scale;
                    }
                    softmax_in_place(row);
                }
                // out = s · vh: vh transposed to d × t for matmul_wt's layout.
                let mut vt = vec![0f32; d * t];
                for (j, r) in vh.chunks_exact(d).enumerate() {
                    for (c, &x) in r.iter().enumerate() {
                        vt[c * t + j] = x;
                    }
                }
                matmul_wt(&s, t, t, &vt, d, None, 1)
            })
            .collect();
        let mut out = vec![0f32; t * w];
        for (hh, o) in heads.iter().enumerate() {
            for (i, r) in o.chunks_exact(d).enumerate() {
                out[i * w + hh * d..][..d].copy_from_slice(r);
            }
        }
        out
    }

    /// The pooled output of [`Encoder::hidden_states`]: `hidden` values (mean,
    /// CLS, last), the classifier's scores (rank), or every token's row (none).
    pub fn pool(&self, hs: &[f32]) -> Vec<f32> {
        let h = self.cfg.hidden;
        let t = hs.len() / h;
        match self.pooling {
            Pooling::None => hs.to_vec(),
            Pooling::Mean => {
                let inv = 1.0 / t as f32;
                let mut out = vec![0f32; h];
                for row in hs.chunks_exact(h) {
                    for (o, &x) in out.iter_mut().zip(row) {
                        *o += x * inv;
                    }
                }
                out
            }
            Pooling::Cls => hs[..h].to_vec(),
            Pooling::Last => hs[(t - 1) * h..].to_vec(),
            Pooling::Rank => {
                let mut cur = hs[..h].to_vec();
                if let Some(c) = &self.cls {
                    cur = c.apply(&cur, 1, self.threads);
                    for v in cur.iter_mut() {
                        *v = v.tanh();
                    }
                }
                if let Some(c) = &self.cls_out {
                    cur = c.apply(&cur, 1, self.threads);
                }
                cur
            }
        }
    }

    /// [`Encoder::hidden_states`] then [`Encoder::pool`].
    pub fn embed(
        &self,
        src: &dyn WeightSource,
        tokens: &[u32],
        taps: Option<&mut TapSums>,
    ) -> Result<Vec<f32>, CalibError> {
        let hs = self.hidden_states(src, tokens, taps)?;
        Ok(self.pool(&hs))
    }
}

/// Calibration of an encoder: every chunk of every language run through
/// [`Encoder::hidden_states`] as one sequence (bidirectional: each chunk on
/// its own, as `llama-embedding` runs a prompt), the Σx² of each matmul's
/// input per language, balanced as for decoders ([`super::run_layered`]'s
/// statistic; `--matmul` and `--process-output` do not apply: f32 products,
/// no output head). `llama-imatrix` does not run encoders (it aborts in
/// `llama_encode`), so these sums are checked against this f32 pass alone.
pub fn calibrate(
    config: &Config,
    src: &dyn WeightSource,
    chunks: &[super::LangChunks],
    opts: &super::CalibOptions,
    datasets: Vec<String>,
    threads: usize,
    progress: &mut (dyn FnMut(&super::Progress) + Send),
) -> Result<super::Importance, CalibError> {
    // An encoder has no output head: `--process-output` has nothing to add.
    let enc = Encoder::load(config, src, Some(Pooling::None), threads)?;
    if opts.ctx > enc.max_tokens() {
        return Err(CalibError::Other(format!(
            "--ctx {} is longer than the encoder's {} positions; give --ctx {} or less",
            opts.ctx,
            enc.max_tokens(),
            enc.max_tokens()
        )));
    }
    super::run_chunks(
        chunks,
        opts,
        datasets,
        || TapSums::new(&enc.cfg, false),
        |c, t| enc.hidden_states(src, c, Some(t)).map(|_| ()),
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::Checkpoint;

    fn fixture(name: &str) -> Checkpoint {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        Checkpoint::open(dir.to_str().unwrap()).unwrap()
    }

    /// Attention sees the whole sequence: changing the last token changes
    /// the first token's row (a causal pass would leave it alone); mean and
    /// CLS pooling are the mean and the first of the unpooled rows.
    #[test]
    fn attention_is_bidirectional_and_pooling_reads_the_rows() {
        let ck = fixture("bert");
        let none = Encoder::load(&ck.config, &ck, Some(Pooling::None), 1).unwrap();
        assert_eq!(
            Encoder::load(&ck.config, &ck, None, 1).unwrap().pooling,
            Pooling::Mean
        );
        let h = none.cfg.hidden;
        let a = none.embed(&ck, &[2, 40, 41, 42, 3], None).unwrap();
        let b = none.embed(&ck, &[2, 40, 41, 43, 3], None).unwrap();
        assert_eq!(a.len(), 5 * h);
        assert!(a.iter().all(|v| v.is_finite()));
        let d0 = a[..h]
            .iter()
            .zip(&b[..h])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d0 > 1e-4, "the first row ignores a later token ({d0})");
        let mean = Encoder::load(&ck.config, &ck, Some(Pooling::Mean), 1).unwrap();
        let m = mean.embed(&ck, &[2, 40, 41, 42, 3], None).unwrap();
        for (j, &v) in m.iter().enumerate() {
            let want: f32 = (0..5).map(|i| a[i * h + j] * 0.2).sum();
            assert!((v - want).abs() <= 1e-5, "column {j}: {v} against {want}");
        }
        let cls = Encoder::load(&ck.config, &ck, Some(Pooling::Cls), 1).unwrap();
        assert_eq!(cls.embed(&ck, &[2, 40, 41, 42, 3], None).unwrap(), a[..h]);
    }

    /// The taps hold every matmul input's Σx² (the attention input is the
    /// embedding LayerNorm's output: unit variance, so Σ over columns of the
    /// per-column sums is about hidden × tokens before weight and bias).
    #[test]
    fn taps_count_tokens_and_fill_every_input() {
        let ck = fixture("xlmr");
        let enc = Encoder::load(&ck.config, &ck, None, 1).unwrap();
        let mut taps = TapSums::new(&enc.cfg, false);
        enc.embed(&ck, &[0, 10, 11, 12, 2], Some(&mut taps))
            .unwrap();
        enc.embed(&ck, &[0, 13, 2], Some(&mut taps)).unwrap();
        assert_eq!(taps.tokens, 8);
        for (name, sums) in taps.by_weight() {
            assert!(
                sums.iter().all(|v| v.is_finite() && *v >= 0.0) && sums.iter().any(|v| *v > 0.0),
                "{name}: empty or non-finite sums"
            );
        }
        assert_eq!(taps.by_weight().len(), 6 * enc.cfg.n_layers);
    }

    /// Bad input is an error naming what is wrong, not a panic.
    #[test]
    fn bad_input_errors_name_the_problem() {
        let ck = fixture("bert");
        let enc = Encoder::load(&ck.config, &ck, None, 1).unwrap();
        let e = enc.embed(&ck, &[], None).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = enc.embed(&ck, &[2, 99_999], None).unwrap_err().to_string();
        assert!(e.contains("99999") && e.contains("vocabulary"), "{e}");
        let long = vec![5u32; enc.max_tokens() + 1];
        let e = enc.embed(&ck, &long, None).unwrap_err().to_string();
        assert!(e.contains("positions"), "{e}");
        let e = Encoder::load(&ck.config, &ck, Some(Pooling::Rank), 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("classifier"), "{e}");
        assert!(Pooling::from_type(Some(9)).is_err());
    }
}
