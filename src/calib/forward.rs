//! CPU forward pass of the decoders the family specs describe
//! ([`crate::arch::BlockSpec`]) on the Hugging Face weights widened to f32,
//! with taps that accumulate, for every matmul weight, the per-input-column
//! sum of squared activations that llama.cpp's `llama-imatrix` collects
//! (`IMatrixCollector::collect_imatrix`).
//!
//! One layer function (`layer_forward_with`) reads the block spec; each
//! operation mirrors llama.cpp's graph builders (`src/models/*.cpp`):
//! RMSNorm (`ggml_rms_norm`), RoPE (`ggml_rope_ext`, NEOX pairing on HF-layout
//! weights: HF's `rotate_half` is the same rotation llama.cpp applies with
//! interleaved pairs on its permuted Q/K rows), grouped-query attention with a
//! causal mask and `1/sqrt(head_dim)` scale, SwiGLU MLP. Matrix products go
//! through the `gemm` crate (chosen over a rayon dot-product kernel by
//! measurement, see `benches/calib.rs`).

use super::actquant::{round_trip, ActQuant};
use super::CalibError;
use crate::arch::Gating;
use crate::arch::{
    Act, ArchSpec, AttentionKind, BlockSpec, Ffn, Input, Norm, Positions, QkNorm, QkvSplit,
    Residual, Role,
};
use gemm::Parallelism;
use rayon::prelude::*;
use std::borrow::Cow;

/// Whether the CPU runs AVX-512 (F, BW, DQ, VL) with FMA and BMI2: the
/// x86-64-v4 level [`multiversion!`] compiles its second copy for (cached by
/// `is_x86_feature_detected!`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_v4() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("bmi1")
        && std::is_x86_feature_detected!("bmi2")
        && std::is_x86_feature_detected!("lzcnt")
        && std::is_x86_feature_detected!("popcnt")
}

/// Defines a function whose body is compiled twice: for the baseline target
/// and for x86-64-v4 (AVX-512), the latter chosen at run time when
/// [`has_v4`] says so. The element-wise loops of the forward pass (softmax,
/// SiLU, RMS norm, the imatrix sums, bf16 conversion) then run 16 floats an
/// instruction; the crate is built for baseline x86-64 (SSE2), where the same
/// loops do 4. Only the instruction selection changes: Rust never contracts
/// `a * b + c` into an FMA nor reorders float operations, so both copies give
/// bit-identical results.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,avx,fma,bmi1,bmi2,lzcnt,popcnt")]
                fn v4($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::calib::forward::has_v4() {
                    // SAFETY: `v4` only needs the target features it is
                    // compiled with, and `has_v4` just checked that the CPU
                    // has every one of them.
                    return unsafe { v4($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// RoPE frequency scaling, as llama.cpp applies it (`ggml_rope_yarn_corr_dims`,
/// `rope_yarn` in ggml-cpu `ops.cpp`; llama3 factors as `convert_hf_to_gguf.py`
/// writes them to `rope_freqs.weight`).
#[derive(Clone, Debug, PartialEq)]
pub enum Rope {
    /// No scaling.
    Default,
    /// Positions divided by `factor`.
    Linear {
        /// The scaling factor.
        factor: f64,
    },
    /// Per rotation pair, the divisor of theta (`rope_freqs.weight`).
    Llama3 {
        /// The divisors.
        factors: Vec<f32>,
    },
    /// YaRN, with llama.cpp's defaults filled in.
    Yarn {
        /// The scaling factor.
        factor: f64,
        /// The context the model was trained on.
        original_max_position_embeddings: usize,
        /// `beta_fast`.
        beta_fast: f64,
        /// `beta_slow`.
        beta_slow: f64,
        /// The cos/sin scale.
        attn_factor: f64,
    },
    /// LongRoPE: the short factors divide theta up to `original` positions,
    /// the long ones beyond (llama.cpp chooses by the context size); cos and
    /// sin scaled by `attn_factor`.
    LongRope {
        /// Per rotation pair, within the original context.
        short: Vec<f32>,
        /// Per rotation pair, beyond it.
        long: Vec<f32>,
        /// The original context.
        original: usize,
        /// The cos/sin scale.
        attn_factor: f32,
    },
}

/// The shape of the decoder, read from `config.json` by the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardConfig {
    /// The family: tensor names and the block the layer function follows.
    pub arch: &'static ArchSpec,
    /// The residual stream's width.
    pub hidden: usize,
    /// The FFN's width.
    pub intermediate: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// A head's width.
    pub head_dim: usize,
    /// The rotated dimensions of a head (`head_dim` unless the rotary is partial).
    pub rope_dim: usize,
    /// The norms' epsilon (RMS or LayerNorm, as the block says).
    pub rms_eps: f32,
    /// RoPE's base.
    pub rope_theta: f64,
    /// RoPE's frequency scaling.
    pub rope: Rope,
    /// The vocabulary's size.
    pub vocab: usize,
    /// Whether the output head is the embedding.
    pub tied_embeddings: bool,
    /// Biases on q/k/v projections (`attention_bias` in the config, or the
    /// block's `qkv_bias_always`).
    pub qkv_bias: bool,
    /// The block's constant factors, as the config gives them.
    pub scales: Scales,
    /// Sliding-window layers, when the family has them.
    pub swa: Option<Swa>,
    /// A mixture of experts' shape, when the block's FFN is one.
    pub moe: Option<MoeShape>,
}

/// A mixture of experts' shape ([`crate::arch::Ffn::Moe`] resolved from
/// `config.json`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeShape {
    /// Experts per layer.
    pub n_expert: usize,
    /// Experts per token (`num_experts_per_tok`).
    pub n_used: usize,
    /// Each expert's width (`moe_intermediate_size`, else `intermediate_size`).
    pub ff: usize,
    /// The shared expert's width (`shared_expert_intermediate_size`), when
    /// the block has one.
    pub shared_ff: usize,
    /// Whether the chosen probabilities are divided by their sum.
    pub norm_top_k: bool,
}

/// Sliding-window attention ([`crate::arch::Sliding`] resolved from
/// `config.json`): the layers `il % period < period - 1` see the last
/// `window` positions only, rotated with base `rope_theta` when given (and
/// no frequency scaling, as llama.cpp's `rope_freq_scale_train_swa`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Swa {
    /// Positions a sliding layer sees.
    pub window: usize,
    /// The layer pattern's period (0: every layer slides).
    pub period: usize,
    /// The sliding layers' RoPE base, when it differs.
    pub rope_theta: Option<f64>,
}

impl Swa {
    /// Whether layer `layer` slides.
    pub fn slides(&self, layer: usize) -> bool {
        self.period == 0 || layer % self.period < self.period - 1
    }
}

/// Constant factors of the forward pass ([`crate::arch::Scales`] resolved
/// from `config.json`); `None` is not applied.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scales {
    /// The embedding multiplied by this.
    pub embedding: Option<f32>,
    /// The attention scores' scale (instead of `1/√head_dim`).
    pub attention: Option<f32>,
    /// Each block's output multiplied by this before the residual add.
    pub residual: Option<f32>,
    /// The logits divided by this.
    pub logit_divisor: Option<f32>,
    /// Q multiplied by this after RoPE (the scores then unscaled).
    pub query: Option<f32>,
    /// `cap · tanh(s / cap)` on the attention scores before the softmax.
    pub attn_softcap: Option<f32>,
    /// `cap · tanh(y / cap)` on the logits.
    pub final_softcap: Option<f32>,
}

multiversion! {
/// `ggml_scale(1/cap)`, `ggml_tanh`, `ggml_scale(cap)`: soft-capping in place.
pub(super) fn softcap_in_place(x: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for v in x.iter_mut() {
        *v = (*v * inv).tanh() * cap;
    }
}
}

multiversion! {
/// `ggml_scale`: `x ← x · s`.
pub(super) fn scale_in_place(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}
}

impl ForwardConfig {
    pub(super) fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub(super) fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// The block every layer follows.
    pub fn block(&self) -> &'static BlockSpec {
        &self.arch.block
    }

    /// The token embeddings' rows as the first layer reads them (scaled when
    /// the family says so).
    pub(super) fn scale_embeddings(&self, x: &mut [f32]) {
        if let Some(s) = self.scales.embedding {
            scale_in_place(x, s);
        }
    }

    /// Logits as the model outputs them: llama.cpp's `ggml_scale(cur, 1/s)`
    /// for a logit divisor `s`.
    pub(super) fn scale_logits(&self, y: &mut [f32]) {
        if let Some(s) = self.scales.logit_divisor {
            scale_in_place(y, 1.0 / s);
        }
        if let Some(cap) = self.scales.final_softcap {
            softcap_in_place(y, cap);
        }
    }

    /// Whether [`ForwardConfig::scale_logits`] is linear (a change of the
    /// logits then scales as they do).
    pub(super) fn logits_linear(&self) -> bool {
        self.scales.final_softcap.is_none()
    }

    /// The attention scores' scale: 1 when Q was scaled, else the family's,
    /// else `1/√head_dim`.
    fn kq_scale(&self) -> f32 {
        if self.scales.query.is_some() {
            return 1.0;
        }
        self.scales
            .attention
            .unwrap_or_else(|| 1.0 / (self.head_dim as f32).sqrt())
    }

    /// The sliding window of layer `layer`, if it slides.
    fn window(&self, layer: usize) -> Option<usize> {
        self.swa.filter(|s| s.slides(layer)).map(|s| s.window)
    }

    /// What a norm weight `g` multiplies by: `g`, or `1 + g` for the
    /// unit-offset norms (as llama.cpp's weight, which the converter stored
    /// as `1 + g` in f32).
    fn norm_offset(&self) -> f32 {
        match self.block().norm {
            Norm::Rms | Norm::Layer => 0.0,
            Norm::RmsUnitOffset => 1.0,
        }
    }

    /// HF name of layer `layer`'s tensor `base` (`.weight`/`.bias` as `suffix`).
    pub(super) fn layer_tensor(&self, layer: usize, base: &str, suffix: &str) -> String {
        self.arch.tensors.layer_tensor(layer, base, suffix)
    }

    /// HF names of layer `layer`'s matmul weights, in the block's order (a
    /// mixture's experts stored stacked in the checkpoint: that tensor).
    pub(super) fn matmul_names(&self, layer: usize) -> Vec<String> {
        self.block()
            .matmuls
            .iter()
            .map(|m| {
                (m.role
                    .is_experts()
                    .then(|| self.stacked_tensor(layer, m.role, "weight")))
                .flatten()
                .unwrap_or_else(|| self.layer_tensor(layer, m.hf, "weight"))
            })
            .collect()
    }

    /// HF name of the global tensor of role `role` (embeddings, final norm, head).
    pub(super) fn global_name(&self, role: Role) -> Result<String, CalibError> {
        self.arch.tensors.global_name(role).ok_or_else(|| {
            CalibError::Unsupported(format!(
                "the {} spec names no {role:?} tensor",
                self.arch.gguf_arch
            ))
        })
    }

    /// The width of the activation `input` (the matmuls' `k`).
    pub(super) fn input_width(&self, input: Input) -> usize {
        match input {
            Input::AttnIn | Input::FfnIn => self.hidden,
            Input::AttnOut => self.q_dim(),
            Input::FfnInExps => self.n_expert() * self.hidden,
            Input::FfnDown => match self.moe {
                Some(m) => m.n_expert * m.ff,
                None => self.intermediate,
            },
            Input::FfnDownShexp => self.moe.map_or(self.intermediate, |m| m.shared_ff),
        }
    }

    /// The FFN width a token's products run through: the dense width, or a
    /// mixture's `n_used` experts and its shared expert.
    pub fn ffn_active_width(&self) -> usize {
        match self.moe {
            Some(m) => m.n_used * m.ff + m.shared_ff,
            None => self.intermediate,
        }
    }

    /// The mixture's expert count (0 for a dense block).
    pub fn n_expert(&self) -> usize {
        self.moe.map_or(0, |m| m.n_expert)
    }

    /// The HF name of expert `e`'s tensor of stacked role `role` in layer `layer`.
    pub(crate) fn expert_tensor(&self, layer: usize, role: Role, e: usize) -> String {
        let x = self.arch.tensors.experts.as_ref();
        let base = x
            .and_then(|x| x.stacked.iter().find(|(_, r)| *r == role))
            .map_or("", |(b, _)| b);
        let prefix = x.map_or("", |x| x.prefix);
        self.layer_tensor(layer, &format!("{prefix}{e}.{base}"), "weight")
    }

    /// A mixture's experts of stacked role `role` in layer `layer` as one
    /// tensor of the checkpoint (`suffix`: weight or bias), when the family
    /// stores them stacked (gpt-oss, whose spec has no per-expert rules).
    pub(crate) fn stacked_tensor(&self, layer: usize, role: Role, suffix: &str) -> Option<String> {
        if self.arch.tensors.experts.is_some() {
            return None;
        }
        let rule = self.arch.tensors.layer.iter().find(|r| r.role == role)?;
        Some(self.layer_tensor(layer, rule.hf, suffix))
    }

    pub(super) fn validate(&self) -> Result<(), CalibError> {
        let bad = |what: String| Err(CalibError::Unsupported(what));
        if self.block().attention.kind == AttentionKind::BidirectionalSeparateQkv {
            return bad(format!(
                "{} is an encoder: the decoders' forward pass does not run bidirectional attention \
                 (calibrate, eval, la-mix and --target-bpw run the encoder's own pass)",
                self.arch.hf_classes[0]
            ));
        }
        match (self.block().ffn, self.moe) {
            (Ffn::Moe { .. }, None) => {
                return bad(format!(
                    "{} is a mixture of experts and the config gives no expert counts",
                    self.arch.hf_classes[0]
                ))
            }
            (Ffn::Moe { .. }, Some(m))
                if m.n_expert == 0 || m.n_used == 0 || m.n_used > m.n_expert || m.ff == 0 =>
            {
                return bad(format!(
                    "{} experts, {} per token, {} wide: a mixture needs 1 to n_expert experts \
                     per token and a width",
                    m.n_expert, m.n_used, m.ff
                ))
            }
            _ => {}
        }
        if self.hidden == 0
            || self.n_layers == 0
            || self.n_heads == 0
            || self.head_dim == 0
            || self.vocab == 0
        {
            return bad("config has a zero dimension (hidden_size, num_hidden_layers, heads, head_dim or vocab)".into());
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} is odd; RoPE needs pairs",
                self.head_dim
            ));
        }
        if self.rope_dim < 2 || !self.rope_dim.is_multiple_of(2) || self.rope_dim > self.head_dim {
            return bad(format!(
                "{} rotated dimensions per head: RoPE needs an even number from 2 to head_dim {}",
                self.rope_dim, self.head_dim
            ));
        }
        Ok(())
    }
}

/// Rows `rows` (each `width` values) of the whole weight `w` named `hf_name`,
/// in the order asked ([`WeightSource::rows`]'s default).
pub fn rows_of(
    w: &[f32],
    hf_name: &str,
    width: usize,
    rows: &[usize],
) -> Result<Vec<f32>, CalibError> {
    let n = w.len() / width.max(1);
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        if r >= n {
            return Err(CalibError::Weights(format!(
                "row {r} of tensor {hf_name} asked, it has {n}"
            )));
        }
        out.extend_from_slice(&w[r * width..(r + 1) * width]);
    }
    Ok(out)
}

/// Where the forward pass finds its weights (HF names, torch order, f32).
pub trait WeightSource {
    /// The whole weight, widened to f32.
    fn weight(&self, hf_name: &str) -> Result<Vec<f32>, CalibError>;
    /// Whether the source has it (optional tensors: biases, norms).
    fn has_weight(&self, hf_name: &str) -> bool;
    /// Rows `rows` (each `width` values) of a 2-D weight, in the order asked; by
    /// default read through [`WeightSource::weight`]. Sources that can read rows
    /// alone (the checkpoint's map) override it, so the layer-by-layer
    /// calibration never widens a whole embedding table.
    fn rows(&self, hf_name: &str, width: usize, rows: &[usize]) -> Result<Vec<f32>, CalibError> {
        rows_of(&self.weight(hf_name)?, hf_name, width, rows)
    }
    /// The `n × k` weight `hf_name` in bf16 for the AMX tile unit. By default
    /// through [`WeightSource::weight`]; the checkpoint's map reads it a block
    /// of rows at a time, so no f32 copy of the whole weight is made.
    fn packed_bf16(
        &self,
        hf_name: &str,
        n: usize,
        k: usize,
    ) -> Result<super::amx::PackedBf16, CalibError> {
        let w = self.weight(hf_name)?;
        check_len(hf_name, w.len(), n * k)?;
        Ok(super::amx::PackedBf16::pack(&w, n, k))
    }
    /// How the input of a matmul with this weight is rounded (ggml's
    /// `vec_dot_type` for the stored type); unchanged by default.
    fn activation(&self, _hf_name: &str) -> ActQuant {
        ActQuant::F32
    }
    /// The minimum of every block of 32 of each row (`n × k/32`, the weight's
    /// row order) of a weight stored as Q4_1/Q5_1, which ggml's dot product
    /// with a Q8_1 input reads on its own (`add_q8_1_sums`); `None` for
    /// other types and for sources that store no blocks (by default).
    fn block_minima(&self, _hf_name: &str) -> Result<Option<Vec<f32>>, CalibError> {
        Ok(None)
    }
}

impl WeightSource for std::collections::HashMap<String, Vec<f32>> {
    fn weight(&self, hf_name: &str) -> Result<Vec<f32>, CalibError> {
        self.get(hf_name)
            .cloned()
            .ok_or_else(|| CalibError::Weights(format!("tensor {hf_name} is missing")))
    }
    fn has_weight(&self, hf_name: &str) -> bool {
        self.contains_key(hf_name)
    }
}

/// A norm's weight and, for LayerNorms that have one, its bias.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct NormWeights {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

impl NormWeights {
    /// The norm named `hf_weight` (`….weight`, its bias `….bias` read when
    /// the block's norm has biases and the checkpoint has it), `len` wide.
    pub(super) fn read(
        cfg: &ForwardConfig,
        src: &dyn WeightSource,
        hf_weight: &str,
        len: usize,
    ) -> Result<NormWeights, CalibError> {
        let w = get_weight(src, hf_weight, len)?;
        let bias = hf_weight
            .strip_suffix(".weight")
            .map(|b| format!("{b}.bias"))
            .filter(|b| cfg.block().norm == Norm::Layer && src.has_weight(b));
        let b = match bias {
            Some(name) => Some(get_weight(src, &name, len)?),
            None => None,
        };
        Ok(NormWeights { w, b })
    }

    /// The model's final norm.
    pub(super) fn output(
        cfg: &ForwardConfig,
        src: &dyn WeightSource,
    ) -> Result<NormWeights, CalibError> {
        NormWeights::read(cfg, src, &cfg.global_name(Role::OutputNorm)?, cfg.hidden)
    }
}

pub(super) struct Layer {
    block: &'static BlockSpec,
    /// The sub-blocks' input norms (pre-norm residuals).
    attn_norm: Option<NormWeights>,
    /// The matmul weights in the block's order ([`BlockSpec::matmuls`]),
    /// `n × k` as [`matmul_dims`] says; empty when packed.
    mats: Vec<Vec<f32>>,
    /// Each matmul's bias, in the block's order.
    biases: Vec<Option<Vec<f32>>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// Per head, the attention sink's logit ([`crate::arch::Attention::sinks`]).
    sinks: Option<Vec<f32>>,
    ffn_norm: Option<NormWeights>,
    /// The sub-blocks' output norms (post-norm residuals).
    attn_post_norm: Option<NormWeights>,
    ffn_post_norm: Option<NormWeights>,
    /// Input rounding of each matmul, in the block's order.
    act: Vec<ActQuant>,
    /// Each matmul's block minima when its input is rounded to Q8_1
    /// ([`WeightSource::block_minima`]; a mixture's stacked experts' in
    /// expert order), in the block's order.
    mins: Vec<Option<Vec<f32>>>,
    /// The matmul weights packed for the AMX tile unit
    /// ([`Layer::load_packed`]), `mats` then empty.
    packed: Option<Vec<super::amx::PackedBf16>>,
}

/// The model in memory, f32.
pub struct Model {
    /// The decoder's shape.
    pub cfg: ForwardConfig,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    norm: NormWeights,
    /// `None` when tied to the embeddings.
    lm_head: Option<Vec<f32>>,
    /// Input rounding of the output head.
    act_head: ActQuant,
    /// The head's block minima when its input is rounded to Q8_1 ([`add_q8_1_sums`]).
    head_mins: Option<Vec<f32>>,
    /// Per rotation pair: frequency factor divisor (llama3) applied to theta.
    freq_factors: Vec<f32>,
    /// The learned position embeddings ([`Positions::Learned`]), all rows.
    positions: Option<LearnedPositions>,
    threads: usize,
}

/// Per-column Σx² of every tapped activation (each [`Input`] of the block,
/// layer by layer, then the output head's input when collected) and the
/// number of tokens seen. In a mixture of experts the experts' inputs
/// ([`Input::FfnInExps`], [`Input::FfnDown`]) hold one row of sums per
/// expert, of the tokens routed to it, and each layer has one more slot:
/// the number of tokens routed to each expert (as `llama-imatrix` counts
/// them per expert for `ggml_mul_mat_id`).
#[derive(Clone, Debug, PartialEq)]
pub struct TapSums {
    /// `[layer * per_layer + input]` (inputs in [`BlockSpec::inputs`] order,
    /// then a mixture's routed-token counts), then the output head's input
    /// when collected.
    pub sums: Vec<Vec<f64>>,
    /// Tokens seen.
    pub tokens: u64,
    /// Whether the output head's input is collected.
    pub with_output: bool,
    /// Decoder layers.
    pub n_layers: usize,
    /// The block whose inputs these are.
    pub block: &'static BlockSpec,
    /// The mixture's expert count, 0 for a dense block.
    pub n_expert: usize,
    /// When recorded ([`TapSums::recording_routes`]): per layer, per token of
    /// the sequence, the experts it was routed to, in increasing order.
    pub routes: Option<Vec<Vec<Vec<u16>>>>,
}

impl TapSums {
    /// Zeroed sums for a model of shape `cfg`.
    pub fn new(cfg: &ForwardConfig, with_output: bool) -> TapSums {
        let block = cfg.block();
        let inputs = block.inputs();
        let mut sums = Vec::with_capacity(cfg.n_layers * inputs.len() + 1);
        for _ in 0..cfg.n_layers {
            for &i in &inputs {
                sums.push(vec![0.0; cfg.input_width(i)]);
            }
            if cfg.n_expert() > 0 {
                sums.push(vec![0.0; cfg.n_expert()]);
            }
        }
        if with_output {
            sums.push(vec![0.0; cfg.hidden]);
        }
        TapSums {
            sums,
            tokens: 0,
            with_output,
            n_layers: cfg.n_layers,
            block,
            n_expert: cfg.n_expert(),
            routes: None,
        }
    }

    /// These sums, also recording which experts each token is routed to in
    /// every layer (a mixture's; `eval` compares a quantized file's routing
    /// with the reference's).
    pub fn recording_routes(mut self) -> TapSums {
        self.routes = Some(vec![Vec::new(); self.n_layers]);
        self
    }

    /// Adds another accumulator of the same shape.
    pub fn add(&mut self, other: &TapSums) {
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self.tokens += other.tokens;
    }

    /// Slots per layer: the tapped activations, and a mixture's routed counts.
    fn per_layer(&self) -> usize {
        self.block.inputs().len() + usize::from(self.n_expert > 0)
    }

    /// Per expert of layer `layer`, the tokens routed to it (a mixture's).
    pub fn routed(&self, layer: usize) -> Option<&[f64]> {
        let n = self.per_layer();
        (self.n_expert > 0).then(|| self.sums[layer * n + n - 1].as_slice())
    }

    fn routed_mut(&mut self, layer: usize) -> &mut [f64] {
        let n = self.per_layer();
        &mut self.sums[layer * n + n - 1]
    }

    /// Records expert `e` for the batch rows `rows` of this sequence (its
    /// `len` rows start at batch row `off`), when routes are recorded.
    fn record_routes(&mut self, layer: usize, e: usize, rows: &[usize], off: usize, len: usize) {
        let Some(per_token) = self.routes.as_mut().and_then(|r| r.get_mut(layer)) else {
            return;
        };
        per_token.resize_with(len, Vec::new);
        for &r in rows {
            // Experts are served in increasing order, so each list stays sorted.
            per_token[r - off].push(e as u16);
        }
    }

    /// The sums of layer `layer`'s inputs (without a mixture's routed counts).
    pub fn layer(&self, layer: usize) -> &[Vec<f64>] {
        let n = self.per_layer();
        &self.sums[layer * n..layer * n + self.block.inputs().len()]
    }

    /// The output head's input sums, when collected.
    pub fn output_mut(&mut self) -> Option<&mut Vec<f64>> {
        let i = self.output_index();
        self.sums.get_mut(i).filter(|_| self.with_output)
    }

    /// Every (GGUF weight name, Σx² per input column), in a deterministic order:
    /// per layer, each input's matmuls in the block's order (names from their roles).
    pub fn by_weight(&self) -> Vec<(String, &[f64])> {
        self.by_weight_counted()
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect()
    }

    /// [`TapSums::by_weight`] with the tokens behind each matrix's sums:
    /// one count (every token) for a 2-D weight, one per expert (the tokens
    /// routed to it) for a mixture's stacked experts, whose sums are then
    /// `n_expert` rows of columns.
    pub fn by_weight_counted(&self) -> Vec<(String, &[f64], Vec<f64>)> {
        let mut out = Vec::new();
        let inputs = self.block.inputs();
        let per = self.per_layer();
        for layer in 0..self.n_layers {
            for (p, &input) in inputs.iter().enumerate() {
                for m in self.block.matmuls.iter().filter(|m| m.input == input) {
                    let counts = match (m.role.is_experts(), self.routed(layer)) {
                        (true, Some(r)) => r.to_vec(),
                        _ => vec![self.tokens as f64],
                    };
                    out.push((
                        format!("blk.{layer}.{}.weight", m.role.gguf_stem()),
                        self.sums[layer * per + p].as_slice(),
                        counts,
                    ));
                }
            }
        }
        if self.with_output {
            out.push((
                format!("{}.weight", Role::Output.gguf_stem()),
                self.sums[self.n_layers * per].as_slice(),
                vec![self.tokens as f64],
            ));
        }
        out
    }

    fn slot(&mut self, layer: usize, input: Input) -> &mut [f64] {
        let n = self.per_layer();
        let p = self.block.input_index(input);
        &mut self.sums[layer * n + p]
    }

    /// The output head's input sums' index.
    fn output_index(&self) -> usize {
        self.n_layers * self.per_layer()
    }
}

multiversion! {
/// Accumulates Σ over rows of x² per column (`collect_imatrix`'s inner loop; f32
/// products, f64 totals).
pub(super) fn accumulate_sq(acc: &mut [f64], x: &[f32], width: usize) {
    // Per row in f32 like ggml, then into the f64 total in blocks of rows, so long
    // runs do not lose precision.
    let mut part = vec![0f32; width];
    for (i, row) in x.chunks_exact(width).enumerate() {
        for (p, &v) in part.iter_mut().zip(row) {
            *p += v * v;
        }
        if i % 64 == 63 {
            for (a, p) in acc.iter_mut().zip(part.iter_mut()) {
                *a += *p as f64;
                *p = 0.0;
            }
        }
    }
    for (a, p) in acc.iter_mut().zip(&part) {
        *a += *p as f64;
    }
}
}

/// `y[t][n] = Σ_k x[t][k] · w[n][k]` (+ bias): x is `rows × k`, w is `n × k`
/// (torch Linear layout), y is `rows × n`. ggml's `ggml_mul_mat(w, x)`.
pub fn matmul_wt(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    threads: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    if rows == 0 || n == 0 {
        return y;
    }
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: gemm reads `lhs` as a rows×k matrix (row stride k, col stride 1),
    // `rhs` as a k×n matrix given by w's transpose (row stride 1, col stride k),
    // and writes `dst` as rows×n (row stride n); all three buffers have exactly
    // those sizes, checked by the asserts below, and do not overlap.
    assert_eq!(x.len(), rows * k);
    assert_eq!(w.len(), n * k);
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n) {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
    y
}

/// The rayon-blocked dot-product kernel `gemm` was measured against (kept for
/// the benchmark and as the tests' independent reference).
pub fn matmul_wt_dot(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    y.par_chunks_mut(n)
        .zip(x.par_chunks(k))
        .for_each(|(yr, xr)| {
            for (o, wr) in yr.iter_mut().zip(w.chunks_exact(k)) {
                let mut acc = [0f32; 8];
                let mut xc = xr.chunks_exact(8);
                let mut wc = wr.chunks_exact(8);
                for (a, b) in (&mut xc).zip(&mut wc) {
                    for i in 0..8 {
                        acc[i] += a[i] * b[i];
                    }
                }
                let mut s: f32 = acc.iter().sum();
                for (a, b) in xc.remainder().iter().zip(wc.remainder()) {
                    s += a * b;
                }
                *o = s;
            }
        });
    let _ = rows;
    y
}

/// Adds to `y` (`rows × n`, the product of `x` rounded to Q8_1 with a Q4_1/Q5_1
/// weight's dequantized rows) what ggml's dot products add beyond it: the
/// weight's block minima `mins` (`n × k/32`) times each input block's stored
/// sum less the sum of its rounded values
/// ([`crate::calib::actquant::q8_1_sum_residuals`]).
pub(super) fn add_q8_1_sums(
    y: &mut [f32],
    x: &[f32],
    rows: usize,
    k: usize,
    mins: &[f32],
    n: usize,
    threads: usize,
) {
    let r = super::actquant::q8_1_sum_residuals(x, k);
    if r.len() != rows * (k / 32) || mins.len() != n * (k / 32) {
        return;
    }
    add_in_place(y, &matmul_wt(&r, rows, k / 32, mins, n, None, threads));
}

/// `x` as a matmul with input rounding `act` sees it (borrowed when unchanged).
pub(super) fn rounded(x: &[f32], width: usize, act: ActQuant) -> Cow<'_, [f32]> {
    if act == ActQuant::F32 {
        return Cow::Borrowed(x);
    }
    let mut v = x.to_vec();
    round_trip(act, &mut v, width);
    Cow::Owned(v)
}

/// The block's norm ([`Norm`]) of rows of the model's width with weights `n`.
pub(super) fn norm(cfg: &ForwardConfig, x: &[f32], n: &NormWeights) -> Vec<f32> {
    let mut out = x.to_vec();
    norm_in_place(cfg, &mut out, n);
    out
}

/// [`norm`] in place.
pub(super) fn norm_in_place(cfg: &ForwardConfig, x: &mut [f32], n: &NormWeights) {
    match cfg.block().norm {
        Norm::Rms => rms_norm_in_place(x, cfg.hidden, &n.w, cfg.rms_eps, 0.0),
        Norm::RmsUnitOffset => rms_norm_in_place(x, cfg.hidden, &n.w, cfg.rms_eps, 1.0),
        Norm::Layer => layer_norm_in_place(x, cfg.hidden, &n.w, n.b.as_deref(), cfg.rms_eps),
    }
}

/// `ggml_norm` then the weight multiply (`ggml_mul`) and the bias add
/// (`ggml_add`) when there is a bias, row by row, in place.
pub(super) fn layer_norm_in_place(
    x: &mut [f32],
    width: usize,
    w: &[f32],
    b: Option<&[f32]>,
    eps: f32,
) {
    for r in x.chunks_exact_mut(width) {
        layer_norm_row(r, w, b, eps);
    }
}

multiversion! {
/// One row of [`layer_norm_in_place`]: the mean (an f64 sum, as
/// `ggml_vec_sum_f32`'s `ggml_float`), the values minus it, their variance
/// (f64 sum of squares), `1/√(var + eps)` in f32, then weight and bias.
fn layer_norm_row(r: &mut [f32], w: &[f32], b: Option<&[f32]>, eps: f32) {
    let n = r.len();
    let mean = (lanes_sum_f64(r, |v| v as f64) as f32) / n as f32;
    for v in r.iter_mut() {
        *v -= mean;
    }
    let var = (sum_sq_f64(r) / n as f64) as f32;
    let scale = 1.0 / (var + eps).sqrt();
    for (v, &g) in r.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
    if let Some(b) = b {
        for (v, &bb) in r.iter_mut().zip(b) {
            *v += bb;
        }
    }
}
}

/// `ggml_rms_norm` followed by the multiply by `offset + w`, row by row
/// (sum in f64 as ggml's `ggml_float`), in place.
pub(super) fn rms_norm_in_place(x: &mut [f32], width: usize, w: &[f32], eps: f32, offset: f32) {
    for r in x.chunks_exact_mut(width) {
        rms_norm_row(r, w, eps, offset);
    }
}

multiversion! {
/// One row of [`rms_norm_in_place`]: `1/√(mean(r²) + eps)`, the f64 sum of
/// squares in eight interleaved partial sums (lanes of a vector) added at the
/// end, then each value times it and its weight (`offset + g`, in f32).
fn rms_norm_row(r: &mut [f32], w: &[f32], eps: f32, offset: f32) {
    let sum = sum_sq_f64(r);
    let mean = (sum / r.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    if offset == 0.0 {
        for (v, &g) in r.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    } else {
        for (v, &g) in r.iter_mut().zip(w) {
            *v = *v * scale * (offset + g);
        }
    }
}
}

/// Σ v² in f64 over eight interleaved partial sums.
#[inline(always)]
fn sum_sq_f64(r: &[f32]) -> f64 {
    lanes_sum_f64(r, |v| (v as f64) * (v as f64))
}

/// Σ f(v) in f64 over eight interleaved partial sums (lanes of a vector),
/// added at the end, then the tail.
#[inline(always)]
fn lanes_sum_f64(r: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let mut ch = r.chunks_exact(8);
    for c in &mut ch {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    let mut sum: f64 = lanes.iter().sum();
    for &v in ch.remainder() {
        sum += f(v);
    }
    sum
}

/// `rope_yarn_ramp` in ggml-cpu.
fn yarn_ramp(low: f32, high: f32, i0: usize) -> f32 {
    let y = ((i0 / 2) as f32 - low) / (high - low).max(0.001);
    1.0 - y.clamp(0.0, 1.0)
}

/// `ggml_rope_yarn_corr_dims`.
fn yarn_corr_dims(
    n_dims: usize,
    n_ctx_orig: usize,
    base: f64,
    beta_fast: f64,
    beta_slow: f64,
) -> (f32, f32) {
    let corr = |n_rot: f64| {
        n_dims as f64 * ((n_ctx_orig as f64) / (n_rot * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    let start = corr(beta_fast).floor().max(0.0);
    let end = corr(beta_slow).ceil().min(n_dims as f64 - 1.0);
    (start as f32, end as f32)
}

/// Reads a weight and checks its length against the config.
pub(super) fn get_weight(
    src: &dyn WeightSource,
    name: &str,
    len: usize,
) -> Result<Vec<f32>, CalibError> {
    let v = src.weight(name)?;
    check_len(name, v.len(), len)?;
    Ok(v)
}

/// A weight's element count `got` against what the config implies.
pub(super) fn check_len(name: &str, got: usize, want: usize) -> Result<(), CalibError> {
    if got != want {
        return Err(CalibError::Weights(format!(
            "tensor {name} has {got} elements, the config implies {want}"
        )));
    }
    Ok(())
}

/// `(n, k)` of the matmul weight of role `role` in a decoder layer.
pub(super) fn role_dims(cfg: &ForwardConfig, role: Role) -> (usize, usize) {
    let (h, q, kv, ff) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate);
    match role {
        Role::AttnQ => (q, h),
        Role::AttnK | Role::AttnV => (kv, h),
        Role::AttnOutput => (h, q),
        Role::AttnQkv => (q + 2 * kv, h),
        Role::FfnUp if matches!(cfg.block().ffn, Ffn::GatedFused { .. }) => (2 * ff, h),
        Role::FfnGate | Role::FfnUp => (ff, h),
        Role::FfnDown => (h, ff),
        // A mixture's: the router, each expert's rows stacked, the shared expert.
        Role::FfnGateInp => (cfg.n_expert(), h),
        Role::FfnGateExps | Role::FfnUpExps | Role::FfnDownExps => {
            let (n, k) = expert_dims(cfg, role);
            (cfg.n_expert() * n, k)
        }
        Role::FfnGateInpShexp => (1, h),
        Role::FfnGateShexp | Role::FfnUpShexp => (cfg.input_width(Input::FfnDownShexp), h),
        Role::FfnDownShexp => (h, cfg.input_width(Input::FfnDownShexp)),
        other => unreachable!("{other:?} is not a layer matmul"),
    }
}

/// `(n, k)` of one expert's weight of stacked role `role`.
pub(crate) fn expert_dims(cfg: &ForwardConfig, role: Role) -> (usize, usize) {
    let (h, ff) = (cfg.hidden, cfg.moe.map_or(0, |m| m.ff));
    match role {
        Role::FfnDownExps => (h, ff),
        _ => (ff, h),
    }
}

/// `(n, k)` of each matmul weight of a decoder layer, in the block's order.
pub(super) fn matmul_dims(cfg: &ForwardConfig) -> Vec<(usize, usize)> {
    cfg.block()
        .matmuls
        .iter()
        .map(|m| role_dims(cfg, m.role))
        .collect()
}

/// Reads the weights of decoder layer `i` of a checkpoint, piece by piece,
/// for [`Layer::read`]; each read checks the tensor's length.
struct LayerReader<'a> {
    cfg: &'a ForwardConfig,
    src: &'a dyn WeightSource,
    i: usize,
}

impl LayerReader<'_> {
    fn get(&self, name: &str, len: usize) -> Result<Vec<f32>, CalibError> {
        get_weight(self.src, name, len)
    }

    /// The name of the layer's tensor of role `role` (a norm) with `suffix`.
    fn tensor(&self, role: Role, suffix: &str) -> String {
        let cfg = self.cfg;
        let base = cfg
            .arch
            .tensors
            .layer
            .iter()
            .find(|r| r.role == role)
            .map_or("", |r| r.hf);
        cfg.layer_tensor(self.i, base, suffix)
    }

    /// Each matmul's bias, in the block's order: Q, K and V's required when
    /// the config says so, any other read when the checkpoint has it.
    fn biases(&self) -> Result<Vec<Option<Vec<f32>>>, CalibError> {
        let cfg = self.cfg;
        cfg.block()
            .matmuls
            .iter()
            .zip(matmul_dims(cfg))
            .map(|(m, (n, _))| {
                let name = cfg
                    .stacked_tensor(self.i, m.role, "bias")
                    .unwrap_or_else(|| cfg.layer_tensor(self.i, m.hf, "bias"));
                // A stacked expert bias (gpt-oss): one row per expert.
                let n = match m.role.is_experts() {
                    true => cfg.n_expert() * expert_dims(cfg, m.role).0,
                    false => n,
                };
                let want =
                    cfg.qkv_bias && matches!(m.role, Role::AttnQ | Role::AttnK | Role::AttnV);
                match want || self.src.has_weight(&name) {
                    true => self.get(&name, n).map(Some),
                    false => Ok(None),
                }
            })
            .collect()
    }

    /// The input rounding of each matmul (`names`, in the block's order); a
    /// stacked tensor's is its first expert's (every expert's is the same).
    fn activations(&self, names: &[String]) -> Vec<ActQuant> {
        let cfg = self.cfg;
        cfg.block()
            .matmuls
            .iter()
            .zip(names)
            .map(|(m, n)| match m.role.is_experts() {
                true => self.src.activation(
                    &cfg.stacked_tensor(self.i, m.role, "weight")
                        .unwrap_or_else(|| cfg.expert_tensor(self.i, m.role, 0)),
                ),
                false => self.src.activation(n),
            })
            .collect()
    }

    /// The block's norm of role `role` when its residual has it (`want`).
    fn block_norm(&self, role: Role, want: bool) -> Result<Option<NormWeights>, CalibError> {
        want.then(|| {
            NormWeights::read(
                self.cfg,
                self.src,
                &self.tensor(role, "weight"),
                self.cfg.hidden,
            )
        })
        .transpose()
    }

    /// The matmul weights (`names`, in the block's order); a mixture's
    /// experts each in turn, stacked as the converter does.
    fn matmul_weights(&self, names: &[String]) -> Result<Vec<Vec<f32>>, CalibError> {
        let cfg = self.cfg;
        let mut mats = Vec::with_capacity(names.len());
        for ((w, (n, k)), mm) in names.iter().zip(matmul_dims(cfg)).zip(cfg.block().matmuls) {
            mats.push(if mm.role.is_experts() {
                let (en, ek) = expert_dims(cfg, mm.role);
                if let Some(name) = cfg.stacked_tensor(self.i, mm.role, "weight") {
                    mats.push(self.get(&name, cfg.n_expert() * en * ek)?);
                    continue;
                }
                let mut all = Vec::with_capacity(n * k);
                for e in 0..cfg.n_expert() {
                    all.extend(self.get(&cfg.expert_tensor(self.i, mm.role, e), en * ek)?);
                }
                all
            } else {
                self.get(w, n * k)?
            });
        }
        Ok(mats)
    }

    /// The block minima of matmul `w` of role `role` ([`WeightSource::block_minima`]);
    /// a mixture's experts each in turn, stacked, none unless every expert has them.
    fn block_minima(&self, w: &str, role: Role) -> Result<Option<Vec<f32>>, CalibError> {
        if !role.is_experts() {
            return self.src.block_minima(w);
        }
        if let Some(name) = self.cfg.stacked_tensor(self.i, role, "weight") {
            return self.src.block_minima(&name);
        }
        let mut all = Vec::new();
        for e in 0..self.cfg.n_expert() {
            match self
                .src
                .block_minima(&self.cfg.expert_tensor(self.i, role, e))?
            {
                Some(v) => all.extend(v),
                None => return Ok(None),
            }
        }
        Ok(Some(all))
    }

    /// The Q or K norm (`role`) when the block has them: per head or over
    /// the whole projection.
    fn qk_norm(&self, role: Role) -> Result<Option<Vec<f32>>, CalibError> {
        let cfg = self.cfg;
        let whole = match role {
            Role::AttnQNorm => cfg.q_dim(),
            _ => cfg.kv_dim(),
        };
        let n = match cfg.block().attention.qk_norm {
            QkNorm::None => return Ok(None),
            QkNorm::PerHead => cfg.head_dim,
            QkNorm::Whole => whole,
        };
        self.get(&self.tensor(role, "weight"), n).map(Some)
    }
}

impl Layer {
    /// The weight of the matmul of role `role` and the rounding of its input,
    /// to swap another weight in (the measured sensitivity patches one tensor
    /// of a layer this way instead of copying the layer). The layers patched
    /// are the checkpoint's, which have no block minima
    /// ([`WeightSource::block_minima`]) to swap with the weight.
    pub(super) fn matmul_mut(&mut self, role: Role) -> (&mut Vec<f32>, &mut ActQuant) {
        let i = self.block.index(role);
        debug_assert!(self.mins[i].is_none(), "a patched weight has block minima");
        (&mut self.mats[i], &mut self.act[i])
    }

    /// Reads and checks the weights of decoder layer `i`.
    pub(super) fn load(
        cfg: &ForwardConfig,
        src: &dyn WeightSource,
        i: usize,
    ) -> Result<Layer, CalibError> {
        Layer::read(cfg, src, i, true)
    }

    /// [`Layer::load`] without the matmul weights (norms, biases,
    /// input roundings and checks only), for callers that read those alone.
    pub(super) fn load_without_matmuls(
        cfg: &ForwardConfig,
        src: &dyn WeightSource,
        i: usize,
    ) -> Result<Layer, CalibError> {
        Layer::read(cfg, src, i, false)
    }

    /// [`Layer::load`]; without `matmuls` the matmul weights are left
    /// empty (not read), for [`Layer::load_packed`] to fill. Reads the
    /// biases, the attention norm, the matmuls, their block minima, the Q/K
    /// norms and the other norms, in that order.
    fn read(
        cfg: &ForwardConfig,
        src: &dyn WeightSource,
        i: usize,
        matmuls: bool,
    ) -> Result<Layer, CalibError> {
        let r = LayerReader { cfg, src, i };
        let block = cfg.block();
        let names = cfg.matmul_names(i);
        let biases = r.biases()?;
        let act = r.activations(&names);
        let (pre, post) = (block.residual.pre_norms(), block.residual.post_norms());
        let attn_norm = r.block_norm(Role::AttnNorm, pre)?;
        let mats = match matmuls {
            true => r.matmul_weights(&names)?,
            false => vec![Vec::new(); names.len()],
        };
        // The block minima of the matmuls whose input is rounded to Q8_1.
        let mins = names
            .iter()
            .zip(block.matmuls.iter().zip(&act))
            .map(|(w, (mm, &a))| match matmuls && a == ActQuant::Q8_1 {
                true => r.block_minima(w, mm.role),
                false => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Layer {
            block,
            attn_norm,
            mats,
            biases,
            q_norm: r.qk_norm(Role::AttnQNorm)?,
            k_norm: r.qk_norm(Role::AttnKNorm)?,
            sinks: match block.attention.sinks {
                true => Some(r.get(&r.tensor(Role::AttnSinks, "weight"), cfg.n_heads)?),
                false => None,
            },
            ffn_norm: r.block_norm(block.ffn_norm, pre)?,
            attn_post_norm: r.block_norm(Role::AttnPostNorm, post)?,
            ffn_post_norm: r.block_norm(Role::FfnPostNorm, post)?,
            act,
            mins,
            packed: None,
        })
    }

    /// [`Layer::load`] with the matmul weights read straight into their
    /// bf16 packing ([`WeightSource::packed_bf16`]), never whole in f32. Falls
    /// back to `load` (f32 products) when the tile unit is missing or an input
    /// is rounded.
    pub(super) fn load_packed(
        cfg: &ForwardConfig,
        src: &dyn WeightSource,
        i: usize,
    ) -> Result<Layer, CalibError> {
        let names = cfg.matmul_names(i);
        if !super::amx::available()
            || cfg.moe.is_some()
            || names.iter().any(|n| src.activation(n) != ActQuant::F32)
        {
            return Layer::load(cfg, src, i);
        }
        let mut packed = Vec::with_capacity(names.len());
        for (w, (n, k)) in names.iter().zip(matmul_dims(cfg)) {
            packed.push(src.packed_bf16(w, n, k)?);
        }
        // The rest of the layer (norms, biases, checks) as `load` reads it.
        let mut l = Layer::read(cfg, src, i, false)?;
        l.packed = Some(packed);
        Ok(l)
    }

    /// `x · W_roleᵀ (+ bias)`: on the tile unit when the layer is packed, else
    /// with `gemm` in f32 ([`matmul_wt`]). `k`/`n` are the weight's width/rows.
    #[allow(clippy::too_many_arguments)]
    fn mm(
        &self,
        role: Role,
        x: &[f32],
        rows: usize,
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
        threads: usize,
    ) -> Vec<f32> {
        let i = self.block.index(role);
        let xr = rounded(x, k, self.act[i]);
        if let Some(p) = &self.packed {
            return super::amx::matmul(&xr, rows, &p[i], bias, threads);
        }
        let mut y = matmul_wt(&xr, rows, k, &self.mats[i], n, bias, threads);
        if let Some(m) = &self.mins[i] {
            add_q8_1_sums(&mut y, x, rows, k, m, n, threads);
        }
        y
    }

    /// [`Layer::mm`] of one input with the weights of several roles of the
    /// same width `k` (`(role, n, bias)` each, one result each in order): on
    /// the tile unit the input is converted once and the products share one
    /// parallel loop ([`super::amx::matmul_many`]).
    pub(super) fn mm_many(
        &self,
        slots: &[(Role, usize, Option<&[f32]>)],
        x: &[f32],
        rows: usize,
        k: usize,
        threads: usize,
    ) -> Vec<Vec<f32>> {
        if let Some(p) = &self.packed {
            // Packed layers have unrounded inputs (`load_packed`).
            let ws: Vec<_> = slots
                .iter()
                .map(|&(r, _, b)| (&p[self.block.index(r)], b))
                .collect();
            return super::amx::matmul_many(x, rows, &ws, threads);
        }
        slots
            .iter()
            .map(|&(role, n, bias)| self.mm(role, x, rows, k, n, bias, threads))
            .collect()
    }

    /// `x · W_roleᵀ` with expert `e`'s weight of stacked role `role`
    /// (`ggml_mul_mat_id` for the rows routed to it), in f32.
    /// `(n, k)` are one expert's ([`expert_dims`]).
    #[allow(clippy::too_many_arguments)]
    fn mm_expert(
        &self,
        role: Role,
        e: usize,
        x: &[f32],
        rows: usize,
        (n, k): (usize, usize),
        threads: usize,
    ) -> Vec<f32> {
        let i = self.block.index(role);
        let w = &self.mats[i];
        let xr = rounded(x, k, self.act[i]);
        let mut y = matmul_wt(
            &xr,
            rows,
            k,
            &w[e * n * k..(e + 1) * n * k],
            n,
            None,
            threads,
        );
        if let Some(m) = &self.mins[i] {
            let per = n * (k / 32);
            add_q8_1_sums(&mut y, x, rows, k, &m[e * per..(e + 1) * per], n, threads);
        }
        y
    }

    /// The bias of the matmul of role `role`, if it has one.
    fn bias(&self, role: Role) -> Option<&[f32]> {
        self.biases[self.block.index(role)].as_deref()
    }

    /// The input rounding of every matmul, in the block's order.
    pub(super) fn acts(&self) -> Vec<ActQuant> {
        self.act.clone()
    }
}

/// How [`layer_forward_with`] computes a decoder layer's matmuls: for each
/// `(role, n, bias)` of `slots` (`n` rows of the weight), `x · W_roleᵀ (+ bias)`
/// of the one input `x` (`rows × k`); one result per role, in order. The roles
/// of one call are those sharing an [`Input`]: q, k, v; o; gate, up; down.
pub(super) trait Products {
    fn products(
        &mut self,
        slots: &[(Role, usize, Option<&[f32]>)],
        x: &[f32],
        rows: usize,
        k: usize,
    ) -> Vec<Vec<f32>>;

    /// A mixture's expert products: `x · W_roleᵀ` with expert `expert`'s
    /// weight of each stacked role of `roles` (one result each, `(n, k)` of
    /// one expert as [`expert_dims`] gives them).
    fn experts(
        &mut self,
        roles: &[(Role, (usize, usize))],
        expert: usize,
        x: &[f32],
        rows: usize,
    ) -> Vec<Vec<f32>>;
}

/// The layer's own weights ([`Layer::mm_many`]) on `threads` threads.
pub(super) struct OwnWeights<'a>(pub &'a Layer, pub usize);

impl Products for OwnWeights<'_> {
    fn products(
        &mut self,
        slots: &[(Role, usize, Option<&[f32]>)],
        x: &[f32],
        rows: usize,
        k: usize,
    ) -> Vec<Vec<f32>> {
        self.0.mm_many(slots, x, rows, k, self.1)
    }

    fn experts(
        &mut self,
        roles: &[(Role, (usize, usize))],
        expert: usize,
        x: &[f32],
        rows: usize,
    ) -> Vec<Vec<f32>> {
        roles
            .iter()
            .map(|&(role, dims)| self.0.mm_expert(role, expert, x, rows, dims, self.1))
            .collect()
    }
}

/// The output head's weight name (`lm_head.weight` in the Llama layout), or
/// the embeddings' when tied; an error when neither applies.
pub(super) fn head_name(cfg: &ForwardConfig, src: &dyn WeightSource) -> Result<String, CalibError> {
    // A family without an output head of its own (llama.cpp
    // multiplies by the embeddings whatever the checkpoint holds).
    if cfg.arch.tensors.global_name(Role::Output).is_none() {
        return cfg.global_name(Role::TokenEmbd);
    }
    let head = cfg.global_name(Role::Output)?;
    if src.has_weight(&head) {
        Ok(head)
    } else if cfg.tied_embeddings {
        cfg.global_name(Role::TokenEmbd)
    } else {
        Err(CalibError::Weights(format!(
            "tensor {head} is missing and tie_word_embeddings is false"
        )))
    }
}

/// Whether `name` (from [`head_name`]) is a head of its own, not the embeddings.
pub(super) fn untied_head(cfg: &ForwardConfig, name: &str) -> Result<bool, CalibError> {
    Ok(name != cfg.global_name(Role::TokenEmbd)?)
}

impl Model {
    /// Reads and checks every weight the forward pass needs.
    pub fn load(
        cfg: ForwardConfig,
        src: &dyn WeightSource,
        threads: usize,
    ) -> Result<Model, CalibError> {
        cfg.validate()?;
        let h = cfg.hidden;
        let embed = get_weight(src, &cfg.global_name(Role::TokenEmbd)?, cfg.vocab * h)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            layers.push(Layer::load(&cfg, src, i)?);
        }
        let norm = NormWeights::output(&cfg, src)?;
        let head = head_name(&cfg, src)?;
        let lm_head = if untied_head(&cfg, &head)? {
            Some(get_weight(src, &head, cfg.vocab * h)?)
        } else {
            None
        };
        let act_head = src.activation(&head);
        let head_mins = match act_head {
            ActQuant::Q8_1 => src.block_minima(&head)?,
            _ => None,
        };
        let freq_factors = freq_factors(&cfg)?;
        let positions = LearnedPositions::load(&cfg, src)?;
        Ok(Model {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            act_head,
            head_mins,
            freq_factors,
            positions,
            threads: threads.max(1),
        })
    }

    /// Runs one sequence (positions 0..len). Accumulates taps into `taps` when
    /// given; returns the logits (`len × vocab`) when `want_logits`.
    pub fn forward(
        &self,
        tokens: &[u32],
        taps: Option<&mut TapSums>,
        want_logits: bool,
    ) -> Result<Option<Vec<f32>>, CalibError> {
        self.run(tokens, taps, want_logits.then_some(0))
    }

    /// Runs one sequence and returns the logits of positions `from..len` only
    /// (`(len - from) × vocab`), as llama.cpp computes outputs only for the
    /// batch entries that ask for them (`llama_batch.logits`); the output head,
    /// the largest matmul of a small model, then runs on those rows alone.
    pub fn forward_logits_from(&self, tokens: &[u32], from: usize) -> Result<Vec<f32>, CalibError> {
        if from > tokens.len() {
            return Err(CalibError::LogitsFrom {
                from,
                len: tokens.len(),
            });
        }
        Ok(self.run(tokens, None, Some(from))?.unwrap_or_default())
    }

    /// [`Model::forward_logits_from`] that also returns, for a mixture of
    /// experts, per layer and per position `from..len`, the experts the token
    /// was routed to (in increasing order); `None` for a dense model.
    #[allow(clippy::type_complexity)]
    pub fn forward_routes_from(
        &self,
        tokens: &[u32],
        from: usize,
    ) -> Result<(Vec<f32>, Option<Vec<Vec<Vec<u16>>>>), CalibError> {
        if self.cfg.n_expert() == 0 {
            return Ok((self.forward_logits_from(tokens, from)?, None));
        }
        if from > tokens.len() {
            return Err(CalibError::LogitsFrom {
                from,
                len: tokens.len(),
            });
        }
        let mut taps = TapSums::new(&self.cfg, false).recording_routes();
        let logits = self
            .run(tokens, Some(&mut taps), Some(from))?
            .unwrap_or_default();
        let routes = taps.routes.map(|layers| {
            layers
                .into_iter()
                .map(|per_token| per_token.into_iter().skip(from).collect())
                .collect()
        });
        Ok((logits, routes))
    }

    /// The forward pass; logits for rows `logits_from..` when given.
    fn run(
        &self,
        tokens: &[u32],
        mut taps: Option<&mut TapSums>,
        logits_from: Option<usize>,
    ) -> Result<Option<Vec<f32>>, CalibError> {
        let want_logits = logits_from.is_some();
        let cfg = &self.cfg;
        let t = tokens.len();
        let h = cfg.hidden;
        let mut x = vec![0f32; t * h];
        for (row, &tok) in x.chunks_exact_mut(h).zip(tokens) {
            let tok = check_token(cfg, tok)?;
            row.copy_from_slice(&self.embed[tok * h..(tok + 1) * h]);
        }
        cfg.scale_embeddings(&mut x);
        if let Some(p) = &self.positions {
            add_positions(&mut x, &[t], p.first(t)?, h);
        }
        let rope = rope_cache(cfg, &self.freq_factors, t);
        for (li, l) in self.layers.iter().enumerate() {
            let tp = taps
                .as_deref_mut()
                .map(|tp| (std::slice::from_mut(tp), &[0usize][..]));
            layer_forward(cfg, l, li, &mut x, &[t], &rope, tp, self.threads);
        }
        if let Some(tp) = taps.as_deref_mut() {
            tp.tokens += t as u64;
        }
        let need_final = want_logits || taps.as_ref().is_some_and(|tp| tp.with_output);
        if !need_final {
            return Ok(None);
        }
        let xn = norm(cfg, &x, &self.norm);
        if let Some(out) = taps.and_then(TapSums::output_mut) {
            accumulate_sq(out, &xn, h);
        }
        if !want_logits {
            return Ok(None);
        }
        let head = self.lm_head.as_deref().unwrap_or(&self.embed);
        let from = logits_from.unwrap_or(0).min(t);
        let mut y = matmul_wt(
            &rounded(&xn[from * h..], h, self.act_head),
            t - from,
            h,
            head,
            cfg.vocab,
            None,
            self.threads,
        );
        if let Some(m) = &self.head_mins {
            let x = &xn[from * h..];
            add_q8_1_sums(&mut y, x, t - from, h, m, cfg.vocab, self.threads);
        }
        cfg.scale_logits(&mut y);
        Ok(Some(y))
    }
}

/// The learned position embeddings ([`Positions::Learned`]): the table as
/// the checkpoint holds it, read once, and the one check that a sequence
/// fits in it (the whole-model forward pass, the layer-by-layer one and the
/// patched one all take their rows from [`LearnedPositions::first`]).
pub(super) struct LearnedPositions {
    /// The tensor's HF name, for errors.
    name: String,
    table: Vec<f32>,
    width: usize,
}

impl LearnedPositions {
    /// The table when the block has one (`None` otherwise), checked to be
    /// rows of the hidden size.
    pub(super) fn load(
        cfg: &ForwardConfig,
        src: &dyn WeightSource,
    ) -> Result<Option<LearnedPositions>, CalibError> {
        if cfg.block().positions != Positions::Learned {
            return Ok(None);
        }
        let name = cfg.global_name(Role::PosEmbd)?;
        let table = src.weight(&name)?;
        let width = cfg.hidden;
        if width == 0 || table.is_empty() || !table.len().is_multiple_of(width) {
            return Err(CalibError::Weights(format!(
                "tensor {name} has {} elements, not rows of the hidden size {width}",
                table.len()
            )));
        }
        Ok(Some(LearnedPositions { name, table, width }))
    }

    /// The rows of positions `0..n`; an error naming the tensor and both
    /// lengths when a sequence of `n` tokens is longer than the table.
    pub(super) fn first(&self, n: usize) -> Result<&[f32], CalibError> {
        let have = self.table.len() / self.width;
        if n > have {
            return Err(CalibError::Weights(format!(
                "a sequence of {n} tokens is longer than the {have} learned positions of tensor {} \
                 (pass --ctx {have} or less)",
                self.name
            )));
        }
        Ok(&self.table[..n * self.width])
    }
}

/// `ggml_add(inpL, pos)`: row `p` of `pos` added to the row of position `p`
/// of every sequence (`lens[i]` rows each, positions from 0).
pub(super) fn add_positions(x: &mut [f32], lens: &[usize], pos: &[f32], h: usize) {
    let mut off = 0;
    for &n in lens {
        add_in_place(&mut x[off * h..(off + n) * h], &pos[..n * h]);
        off += n;
    }
}

/// A token id as an index into the embeddings; an error outside the vocabulary.
pub(super) fn check_token(cfg: &ForwardConfig, tok: u32) -> Result<usize, CalibError> {
    let tok = tok as usize;
    if tok >= cfg.vocab {
        return Err(CalibError::Weights(format!(
            "token id {tok} is outside the vocabulary of {}",
            cfg.vocab
        )));
    }
    Ok(tok)
}

/// Per rotation pair, the divisor of theta: llama3's `rope_freqs.weight`, else 1.
pub(super) fn freq_factors(cfg: &ForwardConfig) -> Result<Vec<f32>, CalibError> {
    let half = cfg.rope_dim / 2;
    match &cfg.rope {
        Rope::Llama3 { factors } if factors.len() != half => Err(CalibError::Unsupported(format!(
            "llama3 rope has {} frequency factors, head_dim {} needs {half}",
            factors.len(),
            cfg.head_dim
        ))),
        Rope::Llama3 { factors } => Ok(factors.clone()),
        Rope::LongRope { short, .. } => Ok(short.clone()),
        _ => Ok(vec![1.0; half]),
    }
}

/// cos and sin per position and rotation pair, `position × head_dim/2`.
pub(super) struct RopeCache {
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The sliding layers' own, when their base differs ([`Swa::rope_theta`]).
    local: Option<Box<RopeCache>>,
}

impl RopeCache {
    /// The cache layer `layer` rotates with.
    fn for_layer(&self, cfg: &ForwardConfig, layer: usize) -> &RopeCache {
        match &self.local {
            Some(l) if cfg.window(layer).is_some() => l,
            _ => self,
        }
    }
}

/// cos/sin per position and pair (`ggml_rope_cache_init`): theta advances by
/// `theta_scale = base^(-2/n_dims)` in f32 as ggml does; the sliding layers'
/// too when their base differs.
pub(super) fn rope_cache(cfg: &ForwardConfig, freq: &[f32], n: usize) -> RopeCache {
    let freq = match &cfg.rope {
        Rope::LongRope { long, original, .. } if n > *original => long,
        _ => freq,
    };
    let mut c = rope_cache_one(cfg, freq, n);
    if let Some(theta) = cfg.swa.and_then(|s| s.rope_theta) {
        let local = ForwardConfig {
            rope_theta: theta,
            rope: Rope::Default,
            ..cfg.clone()
        };
        let ones = vec![1.0; cfg.rope_dim / 2];
        c.local = Some(Box::new(rope_cache_one(&local, &ones, n)));
    }
    c
}

/// [`rope_cache`] with `cfg`'s base and scaling.
fn rope_cache_one(cfg: &ForwardConfig, freq: &[f32], n: usize) -> RopeCache {
    let half = cfg.rope_dim / 2;
    let theta_scale = (cfg.rope_theta as f32).powf(-2.0 / cfg.rope_dim as f32);
    let (freq_scale, ext_factor, attn_factor, corr) = match &cfg.rope {
        Rope::Linear { factor } => (1.0 / *factor as f32, 0.0, 1.0, (0.0, 0.0)),
        Rope::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attn_factor,
        } => (
            1.0 / *factor as f32,
            1.0,
            *attn_factor as f32,
            yarn_corr_dims(
                cfg.rope_dim,
                *original_max_position_embeddings,
                cfg.rope_theta,
                *beta_fast,
                *beta_slow,
            ),
        ),
        Rope::LongRope { attn_factor, .. } => (1.0, 0.0, *attn_factor, (0.0, 0.0)),
        _ => (1.0, 0.0, 1.0, (0.0, 0.0)),
    };
    let mut mscale = attn_factor;
    if ext_factor != 0.0 {
        mscale *= 1.0 + 0.1 * (1.0 / freq_scale).ln();
    }
    let mut cos = vec![0f32; n * half];
    let mut sin = vec![0f32; n * half];
    for p in 0..n {
        let mut theta = p as f32;
        for i in 0..half {
            let theta_extrap = theta / freq[i];
            let theta_interp = freq_scale * theta_extrap;
            let angle = if ext_factor != 0.0 {
                let mix = yarn_ramp(corr.0, corr.1, 2 * i) * ext_factor;
                theta_interp * (1.0 - mix) + theta_extrap * mix
            } else {
                theta_interp
            };
            cos[p * half + i] = angle.cos() * mscale;
            sin[p * half + i] = angle.sin() * mscale;
            theta *= theta_scale;
        }
    }
    RopeCache {
        cos,
        sin,
        local: None,
    }
}

/// The range reduction of [`exp_f32`] for `|x| < 2^22·ln2`: `x = n·ln2 + r`
/// with ln2 split in two, `n` rounded to nearest even through 1.5·2^23 (no
/// libm call), `|r| ≤ ln2/2`; returns `(r, n)`. `n` as an integer comes from
/// the bits of the rounding sum, which has 1.5·2^23's exponent, so its bits
/// are that constant's plus n: exact, and unlike `n as i32` (a saturating
/// cast that stays scalar) it vectorizes. A NaN gives garbage.
#[inline(always)]
pub(crate) fn exp_reduce(x: f32) -> (f32, i32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let ni = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    (r, ni)
}

/// `e^r − 1 − r` by its Taylor polynomial to `r⁷` (coefficients 1/k!, k = 7
/// down to 2, by Horner): [`exp_f32`]'s `e^r = 1 + r + exp_tail(r)` on
/// `|r| ≤ ln2/2`, within 2e-7 relative of itself for `|r| < 0.25`.
#[inline(always)]
pub(crate) fn exp_tail(r: f32) -> f32 {
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    p * r * r
}

/// `e^x` in f32 within 2 ulp, as a straight-line formula the compiler turns
/// into vector code over a slice (libm's scalar `expf` was 12% of a
/// calibration on polyglot-25m). Range reduction `x = n·ln2 + r` with ln2
/// split in two, `e^r` by its Taylor polynomial to degree 7 on |r| ≤ ln2/2,
/// scaled by `2^n` built from exponent bits in two halves so that results
/// down to the subnormals come out right; below −103.97 it is 0, above 88.72
/// +inf, NaN stays NaN. ggml's softmax and SiLU likewise use their own vector
/// `expf` (`ggml_v_expf`).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let (r, ni) = exp_reduce(x.clamp(-104.0, 89.0));
    let p = exp_tail(r) + r + 1.0;
    // 2^n as 2^h · 2^(n-h), h = n/2: both halves are normal f32 for n in [-150, 129].
    let h = ni >> 1;
    let s1 = f32::from_bits((h.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((ni.wrapping_sub(h).wrapping_add(127) as u32) << 23);
    let y = p * s1 * s2;
    if x.is_nan() {
        x
    } else if x > 88.722_84 {
        f32::INFINITY
    } else if x < -103.972_08 {
        0.0
    } else {
        y
    }
}

multiversion! {
/// NEOX-style rotation of pairs `(i, i + n/2)` of the first `n = rope_dim`
/// dimensions in every head of `x` (`rows × heads·d`); the rest pass through.
fn apply_rope(cfg: &ForwardConfig, x: &mut [f32], heads: usize, rope: &RopeCache) {
    let (cos, sin) = (&rope.cos, &rope.sin);
    let d = cfg.head_dim;
    let half = cfg.rope_dim / 2;
    for (p, row) in x.chunks_exact_mut(heads * d).enumerate() {
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in row.chunks_exact_mut(d) {
            for i in 0..half {
                let (x0, x1) = (head[i], head[i + half]);
                head[i] = x0 * c[i] - x1 * s[i];
                head[i + half] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}
}

/// `ggml_soft_max_ext` on one row of scores ([`softmax_sink_in_place`]
/// without a sink).
pub(super) fn softmax_in_place(row: &mut [f32]) {
    softmax_sink_in_place(row, f32::NEG_INFINITY);
}

multiversion! {
/// `ggml_soft_max_ext` on one row of scores: f32 exponentials of `s − max`,
/// summed as `ggml_vec_soft_max_f32` does on AVX-512 (sixteen f32 lanes,
/// then their total in f64), then the scale. A sink (`ggml_soft_max_add_sinks`;
/// −∞: none) joins the maximum and adds libm's `expf(sink − max)` to the
/// f64 sum, as if it were one more score whose probability is dropped.
pub(super) fn softmax_sink_in_place(row: &mut [f32], sink: f32) {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut ch = row.chunks_exact(16);
    for c in &mut ch {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    let max = ch
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
        .max(sink);
    let mut sums = [0f32; 16];
    let mut ch = row.chunks_exact_mut(16);
    for c in &mut ch {
        for (s, v) in sums.iter_mut().zip(c) {
            *v = exp_f32(*v - max);
            *s += *v;
        }
    }
    // The tail through a full 16-lane block padded with −inf (e^−inf = 0
    // adds nothing), so it runs vectorized too.
    let tail = ch.into_remainder();
    let mut pad = [f32::NEG_INFINITY; 16];
    pad[..tail.len()].copy_from_slice(tail);
    for (s, v) in sums.iter_mut().zip(pad.iter_mut()) {
        *v = exp_f32(*v - max);
        *s += *v;
    }
    tail.copy_from_slice(&pad[..tail.len()]);
    let mut sum: f64 = sums.iter().map(|&s| s as f64).sum();
    if sink > f32::NEG_INFINITY {
        sum += (sink - max).exp() as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|x| *x *= inv);
}
}

/// `ggml_swiglu_oai`'s α in llama.cpp's `build_moe_ffn` (`LLM_FFN_SWIGLU_OAI_MOE`).
const SWIGLU_OAI_ALPHA: f32 = 1.702;
/// `ggml_swiglu_oai`'s limit there.
const SWIGLU_OAI_LIMIT: f32 = 7.0;

/// ggml_swiglu_oai in place: `u ← x / (1 + e^(-α·x)) · (y + 1)` with the gate
/// `x = min(g, limit)` and the up `y = clamp(u, -limit, limit)`; the
/// exponential is libm's `expf`, as ggml's scalar loop calls it.
fn swiglu_oai_in_place(u: &mut [f32], g: &[f32], alpha: f32, limit: f32) {
    for (uu, &gg) in u.iter_mut().zip(g) {
        let x = gg.min(limit);
        let y = uu.clamp(-limit, limit);
        *uu = x / (1.0 + (alpha * -x).exp()) * (y + 1.0);
    }
}

multiversion! {
/// ggml_swiglu in place: `u ← silu(g) · u`, silu(x) = x / (1 + e^-x).
fn swiglu_in_place(u: &mut [f32], g: &[f32]) {
    for (uu, &gg) in u.iter_mut().zip(g) {
        *uu *= gg / (1.0 + exp_f32(-gg));
    }
}
}

/// ggml's GELU (tanh approximation) of every f16 value, as
/// `ggml_table_gelu_f16` holds it: `f16(gelu(f32(h)))`.
fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        use crate::quant::float::{f16_bits_to_f32, f32_to_f16_bits};
        const GELU_COEF_A: f32 = 0.044715;
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        (0..=u16::MAX)
            .map(|h| {
                let x = f16_bits_to_f32(h);
                let g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh());
                f16_bits_to_f32(f32_to_f16_bits(g))
            })
            .collect()
    })
}

/// ggml's GELU of one value: 0 from −10 down, the identity from 10 up, else
/// `table` (from [`gelu_table`]) at `x` rounded to f16.
fn gelu_from(table: &[f32], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[crate::quant::float::f32_to_f16_bits(x) as usize]
    }
}

/// `ggml_vec_geglu_f32` in place: `u ← gelu(g) · u` (`GGML_GELU_FP16`).
fn geglu_in_place(u: &mut [f32], g: &[f32]) {
    let table = gelu_table();
    for (uu, &gg) in u.iter_mut().zip(g) {
        // 0 (not 0 · u) from −10 down, as ggml.
        *uu = if gg <= -10.0 {
            0.0
        } else {
            gelu_from(table, gg) * *uu
        };
    }
}

/// `ggml_gelu` in place, through the same f16 table.
pub(super) fn gelu_in_place(u: &mut [f32]) {
    let table = gelu_table();
    for v in u.iter_mut() {
        *v = gelu_from(table, *v);
    }
}

multiversion! {
/// `ggml_silu` in place: `x / (1 + e^-x)`.
fn silu_in_place(u: &mut [f32]) {
    for v in u.iter_mut() {
        *v /= 1.0 + exp_f32(-*v);
    }
}
}

multiversion! {
/// The residual add `x += y`.
pub(super) fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
}

/// Query rows per block of the causal attention.
const ATTN_ROWS: usize = 64;

/// Causal grouped-query attention for one sequence: q `t × heads·d`, k/v
/// `t × kv_heads·d`. Per head and block of [`ATTN_ROWS`] query rows, the
/// scores `scale · Q Kᵀ` against the keys up to the block's last row and the
/// output `softmax(scores) V` are two `gemm` products (the part of the block
/// above the diagonal is computed and then masked, as llama.cpp's `kq_mask`
/// does); softmax as `ggml_soft_max_ext` ([`softmax_in_place`]).
fn attention(
    cfg: &ForwardConfig,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    window: Option<usize>,
    sinks: Option<&[f32]>,
) -> Vec<f32> {
    let (d, nh, nkv) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
    let group = nh / nkv;
    let scale = cfg.kq_scale();
    let softcap = cfg.scales.attn_softcap;
    assert!(q.len() >= t * nh * d && k.len() >= t * nkv * d && v.len() >= t * nkv * d);
    let heads: Vec<Vec<f32>> = (0..nh)
        .into_par_iter()
        .map(|h| {
            let kvh = h / group;
            let mut out = vec![0f32; t * d];
            let mut s = vec![0f32; ATTN_ROWS.min(t) * t];
            // Causal: the rows r0..r1 see the keys 0..r1 only, so each block of
            // rows multiplies against that prefix (half the work of the full
            // square on long chunks).
            for r0 in (0..t).step_by(ATTN_ROWS) {
                let r1 = (r0 + ATTN_ROWS).min(t);
                let (m, cols) = (r1 - r0, r1);
                let sb = &mut s[..m * cols];
                // SAFETY: lhs is rows r0..r1 of Q's head h, an m×d matrix at
                // offset r0·nh·d + h·d with row stride nh·d and column stride 1
                // (last element (r1-1)·nh·d + h·d + d-1 < t·nh·d, asserted
                // above); rhs is Kᵀ of kv head kvh for keys 0..cols, d×cols,
                // element (c, j) at kvh·d + j·nkv·d + c (row stride 1, column
                // stride nkv·d; last element < t·nkv·d); dst is sb, m×cols,
                // row stride cols, inside s. No buffer overlaps another.
                unsafe {
                    gemm::gemm(
                        m,
                        cols,
                        d,
                        sb.as_mut_ptr(),
                        1,
                        cols as isize,
                        false,
                        q.as_ptr().add(r0 * nh * d + h * d),
                        1,
                        (nh * d) as isize,
                        k.as_ptr().add(kvh * d),
                        (nkv * d) as isize,
                        1,
                        0.0f32,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                for (ii, row) in sb.chunks_exact_mut(cols).enumerate() {
                    let i = r0 + ii;
                    // Causal, and within the window: keys `i - j < window`.
                    let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
                    let (row, masked) = row.split_at_mut(i + 1);
                    let (before, seen) = row.split_at_mut(lo);
                    if let Some(cap) = softcap {
                        softcap_in_place(seen, cap);
                    }
                    softmax_sink_in_place(seen, sinks.map_or(f32::NEG_INFINITY, |s| s[h]));
                    before.fill(0.0);
                    masked.fill(0.0);
                }
                // SAFETY: lhs is sb, the m×cols probabilities (row stride
                // cols); rhs is V's kv head kvh for keys 0..cols, cols×d,
                // element (j, c) at kvh·d + j·nkv·d + c (row stride nkv·d,
                // column stride 1; last element < t·nkv·d, asserted above);
                // dst is rows r0..r1 of out, m×d at offset r0·d, row stride d.
                // No buffer overlaps another.
                unsafe {
                    gemm::gemm(
                        m,
                        d,
                        cols,
                        out.as_mut_ptr().add(r0 * d),
                        1,
                        d as isize,
                        false,
                        sb.as_ptr(),
                        1,
                        cols as isize,
                        v.as_ptr().add(kvh * d),
                        1,
                        (nkv * d) as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            out
        })
        .collect();
    let mut o = vec![0f32; t * nh * d];
    for (h, head) in heads.iter().enumerate() {
        for i in 0..t {
            o[i * nh * d + h * d..][..d].copy_from_slice(&head[i * d..(i + 1) * d]);
        }
    }
    o
}

/// One decoder layer on a batch of sequences: `x` holds their rows back to back
/// (`lens[i]` rows each, positions from 0), updated in place. The matmuls run on
/// all rows at once; normalisation, RoPE, attention and the taps go sequence by
/// sequence, so every sequence's numbers are those of running it alone
/// (sequence i's Σx² go to `taps.0[taps.1[i]]`, each sequence summed on its own).
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_forward(
    cfg: &ForwardConfig,
    l: &Layer,
    li: usize,
    x: &mut [f32],
    lens: &[usize],
    rope: &RopeCache,
    taps: Option<(&mut [TapSums], &[usize])>,
    threads: usize,
) {
    layer_forward_with(cfg, l, li, x, lens, rope, taps, &mut OwnWeights(l, threads));
}

/// [`layer_forward`] with the matmuls computed by `mm` (the layer's norms,
/// biases and attention as `l` holds them).
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_forward_with(
    cfg: &ForwardConfig,
    l: &Layer,
    li: usize,
    x: &mut [f32],
    lens: &[usize],
    rope: &RopeCache,
    taps: Option<(&mut [TapSums], &[usize])>,
    mm: &mut dyn Products,
) {
    let h = cfg.hidden;
    let t: usize = lens.iter().sum();
    debug_assert_eq!(x.len(), t * h);
    let run = LayerRun {
        cfg,
        l,
        li,
        lens,
        t,
    };
    let mut taps = LayerTaps {
        sums: taps,
        lens,
        layer: li,
    };
    let mut tap =
        |input: Input, v: &[f32], width: usize, routed: Routed| taps.add(input, v, width, routed);
    // Attention: x += post(o(attn(rope(q(a)), rope(k(a)), v(a)))), a = norm(x); the
    // block's residual says which of the norms exist (the others are the identity).
    let mut ya = run.attention(x, rope, &mut tap, mm);
    // Pre-norm and post-norm: the FFN reads x + attention; parallel: the
    // layer's input.
    let parallel = match cfg.block().residual {
        Residual::PreNorm | Residual::PostNorm | Residual::Sandwich | Residual::PostLayerNorm => {
            add_in_place(x, &ya);
            drop(std::mem::take(&mut ya));
            false
        }
        Residual::Parallel => true,
    };
    // FFN: post(down(act(gate(f)) · up(f))) or down(act(up(f))), f = norm(x).
    let f = match &l.ffn_norm {
        Some(w) => norm(cfg, x, w),
        None => x.to_vec(),
    };
    tap(Input::FfnIn, &f, h, None);
    let y = run.ffn(f, &mut tap, mm);
    finish_ffn(cfg, l, x, y, parallel.then_some(&ya));
}

/// Where [`layer_forward_with`] sums the squares of a layer's inputs:
/// sequence i's rows (`lens[i]` of them, back to back) into
/// `sums.0[sums.1[i]]`; nothing without `sums`.
struct LayerTaps<'a> {
    sums: Option<(&'a mut [TapSums], &'a [usize])>,
    lens: &'a [usize],
    layer: usize,
}

impl LayerTaps<'_> {
    /// Accumulates the rows of every sequence into its own taps; a mixture's
    /// expert inputs (`routed`: the expert and the token of each row, in
    /// order) into that expert's row of sums, counting its tokens.
    fn add(&mut self, input: Input, v: &[f32], width: usize, routed: Routed) {
        let Some((tp, of)) = self.sums.as_mut() else {
            return;
        };
        let li = self.layer;
        let mut off = 0;
        for (&n, &i) in self.lens.iter().zip(of.iter()) {
            match routed {
                None => accumulate_sq(
                    tp[i].slot(li, input),
                    &v[off * width..(off + n) * width],
                    width,
                ),
                Some((e, tok)) => {
                    let (a, b) = (
                        tok.partition_point(|&r| r < off),
                        tok.partition_point(|&r| r < off + n),
                    );
                    accumulate_sq(
                        &mut tp[i].slot(li, input)[e * width..(e + 1) * width],
                        &v[a * width..b * width],
                        width,
                    );
                    if input == Input::FfnInExps {
                        tp[i].routed_mut(li)[e] += (b - a) as f64;
                        tp[i].record_routes(li, e, &tok[a..b], off, n);
                    }
                }
            }
            off += n;
        }
    }
}

/// What every step of one [`layer_forward_with`] reads: the model, the
/// layer and its index, and the batch (`lens[i]` rows per sequence, `t` in all).
struct LayerRun<'a> {
    cfg: &'a ForwardConfig,
    l: &'a Layer,
    li: usize,
    lens: &'a [usize],
    t: usize,
}

impl LayerRun<'_> {
    /// The attention half on the residual stream `x`: its norm, Q, K and V
    /// ([`LayerRun::qkv`]), their norms, the attention of each sequence
    /// ([`LayerRun::attend`]) and the output matmul, then its post norm and
    /// residual scale (not yet added to `x`).
    fn attention(
        &self,
        x: &[f32],
        rope: &RopeCache,
        tap: &mut Tap,
        mm: &mut dyn Products,
    ) -> Vec<f32> {
        let (cfg, l) = (self.cfg, self.l);
        let (h, qd) = (cfg.hidden, cfg.q_dim());
        let a = match &l.attn_norm {
            Some(w) => norm(cfg, x, w),
            None => x.to_vec(),
        };
        tap(Input::AttnIn, &a, h, None);
        let (mut q, mut k, v) = self.qkv(&a, mm);
        drop(a);
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            // Per head or over the whole projection (the weights' length), in place.
            let off = cfg.norm_offset();
            rms_norm_in_place(&mut q, qn.len(), qn, cfg.rms_eps, off);
            rms_norm_in_place(&mut k, kn.len(), kn, cfg.rms_eps, off);
        }
        let o = self.attend(&mut q, &mut k, &v, rope);
        drop((q, k, v));
        tap(Input::AttnOut, &o, qd, None);
        let mut ya = one(mm.products(
            &[(Role::AttnOutput, h, l.bias(Role::AttnOutput))],
            &o,
            self.t,
            qd,
        ));
        drop(o);
        if let Some(w) = &l.attn_post_norm {
            norm_in_place(cfg, &mut ya, w);
        }
        if let Some(s) = cfg.scales.residual {
            scale_in_place(&mut ya, s);
        }
        ya
    }

    /// Q, K and V of the normed rows `a`: three matmuls, or one fused
    /// matmul split as the block says.
    fn qkv(&self, a: &[f32], mm: &mut dyn Products) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (cfg, l, t) = (self.cfg, self.l, self.t);
        let (h, qd, kvd) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim());
        match cfg.block().attention.kind {
            // (ForwardConfig::validate refuses bidirectional attention before a layer runs.)
            AttentionKind::CausalSeparateQkv | AttentionKind::BidirectionalSeparateQkv => {
                let mut qkv = mm
                    .products(
                        &[
                            (Role::AttnQ, qd, l.bias(Role::AttnQ)),
                            (Role::AttnK, kvd, l.bias(Role::AttnK)),
                            (Role::AttnV, kvd, l.bias(Role::AttnV)),
                        ],
                        a,
                        t,
                        h,
                    )
                    .into_iter();
                (
                    qkv.next().unwrap_or_default(),
                    qkv.next().unwrap_or_default(),
                    qkv.next().unwrap_or_default(),
                )
            }
            AttentionKind::CausalFusedQkv { split } => {
                let fused = one(mm.products(
                    &[(Role::AttnQkv, qd + 2 * kvd, l.bias(Role::AttnQkv))],
                    a,
                    t,
                    h,
                ));
                split_qkv(cfg, split, &fused, t)
            }
        }
    }

    /// Sequence by sequence: RoPE on its Q and K (when this layer has it),
    /// the query scale, and its attention; the outputs back to back.
    fn attend(&self, q: &mut [f32], k: &mut [f32], v: &[f32], rope: &RopeCache) -> Vec<f32> {
        let (cfg, li) = (self.cfg, self.li);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let block = cfg.block();
        let rope = rope.for_layer(cfg, li);
        let window = cfg.window(li);
        let mut o = Vec::with_capacity(self.t * qd);
        let mut off = 0;
        for &n in self.lens {
            let (qs, ks) = (
                &mut q[off * qd..(off + n) * qd],
                &mut k[off * kvd..(off + n) * kvd],
            );
            match block.positions {
                _ if !block.rope_in_layer(li) => {}
                Positions::RopeFull | Positions::RopePartial => {
                    apply_rope(cfg, qs, cfg.n_heads, rope);
                    apply_rope(cfg, ks, cfg.n_kv_heads, rope);
                }
                // Added to the embeddings before the first layer.
                Positions::Learned => {}
            }
            if let Some(s) = cfg.scales.query {
                scale_in_place(qs, s);
            }
            o.extend(attention(
                cfg,
                qs,
                ks,
                &v[off * kvd..(off + n) * kvd],
                n,
                window,
                self.l.sinks.as_deref(),
            ));
            off += n;
        }
        o
    }

    /// The FFN of the normed rows `f`, before its post norm: a mixture's
    /// ([`moe_ffn`]), or the down matmul of the dense FFN's hidden activation.
    fn ffn(&self, f: Vec<f32>, tap: &mut Tap, mm: &mut dyn Products) -> Vec<f32> {
        let (cfg, l, t) = (self.cfg, self.l, self.t);
        let (h, ff) = (cfg.hidden, cfg.intermediate);
        let u = match cfg.block().ffn {
            Ffn::Moe {
                act, shared_expert, ..
            } => return moe_ffn(cfg, l, act, shared_expert, &f, t, tap, mm),
            Ffn::Gated { act } => self.gated(act, f, mm),
            Ffn::GatedFused { act } => self.gated_fused(act, f, mm),
            Ffn::Plain { act } => self.plain(act, f, mm),
        };
        tap(Input::FfnDown, &u, ff, None);
        one(mm.products(&[(Role::FfnDown, h, l.bias(Role::FfnDown))], &u, t, ff))
    }

    /// `act(gate(f)) · up(f)` (`t × intermediate`), from two matmuls.
    fn gated(&self, act: Act, f: Vec<f32>, mm: &mut dyn Products) -> Vec<f32> {
        let (cfg, l) = (self.cfg, self.l);
        let ff = cfg.intermediate;
        let mut gu = mm
            .products(
                &[
                    (Role::FfnGate, ff, l.bias(Role::FfnGate)),
                    (Role::FfnUp, ff, l.bias(Role::FfnUp)),
                ],
                &f,
                self.t,
                cfg.hidden,
            )
            .into_iter();
        let (g, mut u) = (gu.next().unwrap_or_default(), gu.next().unwrap_or_default());
        drop(f);
        glu_in_place(act, &mut u, &g);
        u
    }

    /// `act(gate(f)) · up(f)` from one fused matmul whose rows hold the
    /// gate's then the up's outputs.
    fn gated_fused(&self, act: Act, f: Vec<f32>, mm: &mut dyn Products) -> Vec<f32> {
        let (cfg, t) = (self.cfg, self.t);
        let ff = cfg.intermediate;
        let bias = self.l.bias(Role::FfnUp);
        let gu = one(mm.products(&[(Role::FfnUp, 2 * ff, bias)], &f, t, cfg.hidden));
        drop(f);
        let (mut g, mut u) = (Vec::with_capacity(t * ff), Vec::with_capacity(t * ff));
        for row in gu.chunks_exact(2 * ff) {
            g.extend_from_slice(&row[..ff]);
            u.extend_from_slice(&row[ff..]);
        }
        glu_in_place(act, &mut u, &g);
        u
    }

    /// `act(up(f))`, the ungated FFN's hidden activation.
    fn plain(&self, act: Act, f: Vec<f32>, mm: &mut dyn Products) -> Vec<f32> {
        let (cfg, t) = (self.cfg, self.t);
        let ff = cfg.intermediate;
        let bias = self.l.bias(Role::FfnUp);
        let mut u = one(mm.products(&[(Role::FfnUp, ff, bias)], &f, t, cfg.hidden));
        drop(f);
        match act {
            Act::Gelu => gelu_in_place(&mut u),
            Act::Silu => silu_in_place(&mut u),
            Act::SwigluOai => unreachable!("arch::tests::swiglu_oai_is_only_an_experts_gate"),
        }
        u
    }
}

/// The FFN's output `y` into the residual stream `x`: its post norm and
/// residual scale when the block has them, then the add (and the
/// attention's output `ya` for a parallel residual).
fn finish_ffn(
    cfg: &ForwardConfig,
    l: &Layer,
    x: &mut [f32],
    mut y: Vec<f32>,
    ya: Option<&Vec<f32>>,
) {
    if let Some(w) = &l.ffn_post_norm {
        norm_in_place(cfg, &mut y, w);
    }
    if let Some(s) = cfg.scales.residual {
        scale_in_place(&mut y, s);
    }
    add_in_place(x, &y);
    if let Some(ya) = ya {
        add_in_place(x, ya);
    }
}

/// A mixture's expert and the token of each row of a tapped activation.
type Routed<'a> = Option<(usize, &'a [usize])>;

/// Accumulates a tapped activation (`rows × width`) into the layer's taps.
type Tap<'t> = dyn FnMut(Input, &[f32], usize, Routed) + 't;

/// `u ← act(g) · u`: SwiGLU or GeGLU.
fn glu_in_place(act: Act, u: &mut [f32], g: &[f32]) {
    match act {
        Act::Silu => swiglu_in_place(u, g),
        Act::Gelu => geglu_in_place(u, g),
        Act::SwigluOai => swiglu_oai_in_place(u, g, SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT),
    }
}

/// ggml's smallest normal f16, the least the sum of a token's chosen expert
/// weights is clamped to before they are divided by it (`build_moe_ffn`).
const MOE_WEIGHT_SUM_MIN: f32 = 6.103_515_6e-5;

/// Per token (a row of `probs`, `n_expert` wide), the `k` experts of highest
/// probability, best first, as `ggml_argsort_top_k` orders them (a
/// descending `std::sort`, whose insertion sort keeps equal values in index
/// order up to 16 experts; a stable sort here), and their weights: the
/// probabilities, divided by their sum (an f64 sum rounded to f32,
/// `ggml_sum_rows`, clamped below at [`MOE_WEIGHT_SUM_MIN`]) when `norm`.
/// Returns `(expert, weight)` per `token · k + slot`.
pub(super) fn route(
    probs: &[f32],
    n_expert: usize,
    k: usize,
    norm: bool,
) -> (Vec<usize>, Vec<f32>) {
    let rows = probs.len() / n_expert.max(1);
    let (mut sel, mut w) = (Vec::with_capacity(rows * k), Vec::with_capacity(rows * k));
    let mut idx: Vec<usize> = Vec::with_capacity(n_expert);
    for row in probs.chunks_exact(n_expert) {
        idx.clear();
        idx.extend(0..n_expert);
        idx.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let first = w.len();
        for &e in &idx[..k] {
            sel.push(e);
            w.push(row[e]);
        }
        if norm {
            renormalise(&mut w[first..], k);
        }
    }
    (sel, w)
}

/// The experts each token is routed to and their weights (`k` per token,
/// token after token) from the router's logits (`t × ne`), as `gating` says:
/// [`Gating::Softmax`], the softmax over every expert then its top k
/// ([`route`]); [`Gating::SoftmaxWeight`] (gpt-oss), the top k of the logits
/// (the same order as of their softmax) then the softmax of those k. With
/// `norm`, the k weights are divided by their sum ([`renormalise`]).
fn gate(
    mut logits: Vec<f32>,
    gating: Gating,
    ne: usize,
    k: usize,
    norm: bool,
) -> (Vec<usize>, Vec<f32>) {
    match gating {
        Gating::Softmax => {
            logits.chunks_exact_mut(ne).for_each(softmax_in_place);
            route(&logits, ne, k, norm)
        }
        Gating::SoftmaxWeight => {
            let (sel, mut w) = route(&logits, ne, k, false);
            w.chunks_exact_mut(k).for_each(softmax_in_place);
            if norm {
                renormalise(&mut w, k);
            }
            (sel, w)
        }
    }
}

/// Each token's `k` chosen weights divided by their sum (an f64 sum rounded
/// to f32, `ggml_sum_rows`, clamped below at [`MOE_WEIGHT_SUM_MIN`]).
fn renormalise(w: &mut [f32], k: usize) {
    for chosen in w.chunks_exact_mut(k) {
        let sum = chosen.iter().map(|&v| v as f64).sum::<f64>() as f32;
        let sum = sum.max(MOE_WEIGHT_SUM_MIN);
        chosen.iter_mut().for_each(|v| *v /= sum);
    }
}

/// A mixture of experts' FFN on the normed rows `f` (`t × hidden`), as
/// llama.cpp's `build_moe_ffn` with softmax gating computes it: the router's
/// logits, their softmax over every expert, the top k ([`route`]), each
/// chosen expert's gated block on the tokens routed to it
/// (`ggml_mul_mat_id`), its output times the token's weight for it, and the
/// k outputs of a token added in the order chosen; then, when the block has
/// one, the shared expert's gated block times its gate's sigmoid (taken as
/// `silu(g) / g`, as llama.cpp's qwen2moe graph does) added to that. The
/// experts' inputs are tapped per expert (the tokens routed to it).
#[allow(clippy::too_many_arguments)]
fn moe_ffn(
    cfg: &ForwardConfig,
    l: &Layer,
    act: Act,
    shared: bool,
    f: &[f32],
    t: usize,
    tap: &mut Tap,
    mm: &mut dyn Products,
) -> Vec<f32> {
    let h = cfg.hidden;
    let Some(m) = cfg.moe else {
        unreachable!("ForwardConfig::validate: a mixture has its shape")
    };
    let (ne, k) = (m.n_expert, m.n_used);
    let logits = one(mm.products(&[(Role::FfnGateInp, ne, l.bias(Role::FfnGateInp))], f, t, h));
    let gating = match cfg.block().ffn {
        Ffn::Moe { gating, .. } => gating,
        _ => Gating::Softmax,
    };
    let (sel, w) = gate(logits, gating, ne, k, m.norm_top_k);
    // A stacked expert bias's row of expert `e`, `n` wide.
    let expert_bias = |role: Role, e: usize, n: usize| l.bias(role).map(|b| &b[e * n..(e + 1) * n]);
    // Per expert, the (token · k + slot) it serves, in token order.
    let mut served: Vec<Vec<usize>> = vec![Vec::new(); ne];
    for (i, &e) in sel.iter().enumerate() {
        served[e].push(i);
    }
    let (gate_dims, down_dims) = (
        expert_dims(cfg, Role::FfnGateExps),
        expert_dims(cfg, Role::FfnDownExps),
    );
    let mut outs = vec![0f32; t * k * h];
    for (e, idx) in served.iter().enumerate().filter(|(_, i)| !i.is_empty()) {
        let toks: Vec<usize> = idx.iter().map(|&i| i / k).collect();
        let mut xe = Vec::with_capacity(toks.len() * h);
        for &r in &toks {
            xe.extend_from_slice(&f[r * h..(r + 1) * h]);
        }
        tap(Input::FfnInExps, &xe, h, Some((e, &toks)));
        let mut gu = mm
            .experts(
                &[(Role::FfnGateExps, gate_dims), (Role::FfnUpExps, gate_dims)],
                e,
                &xe,
                toks.len(),
            )
            .into_iter();
        let (mut g, mut u) = (gu.next().unwrap_or_default(), gu.next().unwrap_or_default());
        // `ggml_add_id`: the expert's bias row on each of its tokens' rows.
        for (role, v) in [(Role::FfnGateExps, &mut g), (Role::FfnUpExps, &mut u)] {
            if let Some(b) = expert_bias(role, e, m.ff) {
                v.chunks_exact_mut(m.ff).for_each(|r| add_in_place(r, b));
            }
        }
        glu_in_place(act, &mut u, &g);
        tap(Input::FfnDown, &u, m.ff, Some((e, &toks)));
        let mut d = one(mm.experts(&[(Role::FfnDownExps, down_dims)], e, &u, toks.len()));
        if let Some(b) = expert_bias(Role::FfnDownExps, e, h) {
            d.chunks_exact_mut(h).for_each(|r| add_in_place(r, b));
        }
        for (row, &i) in d.chunks_exact(h).zip(idx) {
            for (o, &v) in outs[i * h..(i + 1) * h].iter_mut().zip(row) {
                *o = v * w[i];
            }
        }
    }
    let mut y = vec![0f32; t * h];
    for (yr, o) in y.chunks_exact_mut(h).zip(outs.chunks_exact(k * h)) {
        yr.copy_from_slice(&o[..h]);
        for s in o.chunks_exact(h).skip(1) {
            add_in_place(yr, s);
        }
    }
    drop(outs);
    if shared {
        let sh = m.shared_ff;
        let gate = one(mm.products(
            &[(Role::FfnGateInpShexp, 1, l.bias(Role::FfnGateInpShexp))],
            f,
            t,
            h,
        ));
        let mut gu = mm
            .products(
                &[
                    (Role::FfnGateShexp, sh, l.bias(Role::FfnGateShexp)),
                    (Role::FfnUpShexp, sh, l.bias(Role::FfnUpShexp)),
                ],
                f,
                t,
                h,
            )
            .into_iter();
        let (g, mut u) = (gu.next().unwrap_or_default(), gu.next().unwrap_or_default());
        glu_in_place(act, &mut u, &g);
        tap(Input::FfnDownShexp, &u, sh, None);
        let mut d = one(mm.products(
            &[(Role::FfnDownShexp, h, l.bias(Role::FfnDownShexp))],
            &u,
            t,
            sh,
        ));
        for (row, &g) in d.chunks_exact_mut(h).zip(&gate) {
            let sigmoid = (g / (1.0 + exp_f32(-g))) / g;
            scale_in_place(row, sigmoid);
        }
        add_in_place(&mut y, &d);
    }
    y
}

/// Q, K and V (`t` rows each) from the output of a fused QKV matmul.
fn split_qkv(
    cfg: &ForwardConfig,
    split: QkvSplit,
    fused: &[f32],
    t: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qd, kvd, d) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let (mut q, mut k, mut v) = (
        Vec::with_capacity(t * qd),
        Vec::with_capacity(t * kvd),
        Vec::with_capacity(t * kvd),
    );
    for row in fused.chunks_exact(qd + 2 * kvd).take(t) {
        match split {
            QkvSplit::PerHead => {
                for head in row.chunks_exact(3 * d) {
                    q.extend_from_slice(&head[..d]);
                    k.extend_from_slice(&head[d..2 * d]);
                    v.extend_from_slice(&head[2 * d..]);
                }
            }
            QkvSplit::Sequential => {
                q.extend_from_slice(&row[..qd]);
                k.extend_from_slice(&row[qd..qd + kvd]);
                v.extend_from_slice(&row[qd + kvd..]);
            }
        }
    }
    (q, k, v)
}

/// The one result of a one-slot [`Products::products`].
fn one(mut v: Vec<Vec<f32>>) -> Vec<f32> {
    v.pop().unwrap_or_default()
}

#[cfg(test)]
mod exp_tests {
    use super::exp_f32;

    fn ulps(a: f32, b: f32) -> i64 {
        let key = |v: f32| {
            let i = v.to_bits() as i32;
            if i < 0 {
                i64::from(i32::MIN) - i64::from(i)
            } else {
                i64::from(i)
            }
        };
        (key(a) - key(b)).abs()
    }

    /// Within 2 ulp of the correctly rounded e^x (f64, rounded) on a dense
    /// sweep of the finite range, subnormal results included (counted in
    /// units of the smallest subnormal there), and the edge cases exact.
    #[test]
    fn exp_is_within_two_ulp_everywhere() {
        let mut worst = (0i64, 0f32);
        let mut x = -104.5f32;
        while x < 89.5 {
            for v in [x, x + 1e-3, x * 0.999_9] {
                let want = (v as f64).exp() as f32;
                let u = ulps(exp_f32(v), want);
                if u > worst.0 {
                    worst = (u, v);
                }
            }
            x += 0.000_37 * (1.0 + x.abs());
        }
        assert!(worst.0 <= 2, "{} ulp at {}", worst.0, worst.1);
        for v in [0.0f32, -0.0, 1e-30, -1e-30, 1.0, -1.0] {
            assert!(ulps(exp_f32(v), (v as f64).exp() as f32) <= 1, "{v}");
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1e30), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.7).is_finite());
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    /// The vectorized softmax against a plain f64 one, on every row length
    /// around the 16-lane blocks (tails included) and with a −inf score.
    #[test]
    fn softmax_matches_a_plain_one() {
        for len in 1..70usize {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
                .collect();
            let mut got = row.clone();
            softmax_in_place(&mut got);
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (g, w) in got.iter().zip(&e) {
                assert!(
                    ((*g as f64) - w / sum).abs() <= 1e-6 * (w / sum) + 1e-12,
                    "{len}: {g} vs {}",
                    w / sum
                );
            }
        }
        let mut row = vec![1.0, f32::NEG_INFINITY, 1.0];
        softmax_in_place(&mut row);
        assert_eq!(row, vec![0.5, 0.0, 0.5]);
    }

    /// GELU-tanh through ggml's f16 table: within f16 rounding (of the
    /// input and of the result) of the tanh formula in f64, 0 at -10 and
    /// below, the identity at 10 and above, times the up value; soft-capping
    /// is `cap · tanh(x / cap)`, bounded by the cap.
    #[test]
    fn geglu_and_softcap_match_their_definitions() {
        let g: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) * 0.0071).collect();
        let up: Vec<f32> = (0..g.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut u = up.clone();
        geglu_in_place(&mut u, &g);
        for ((&got, &x), &b) in u.iter().zip(&g).zip(&up) {
            let xd = x as f64;
            let gelu = 0.5
                * xd
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd))
                        .tanh());
            let want = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                xd * b as f64
            } else {
                gelu * b as f64
            };
            let tol = 2e-3 * want.abs() + 1e-4 * (b as f64);
            assert!(
                ((got as f64) - want).abs() <= tol,
                "gelu({x}) · {b}: {got} vs {want}"
            );
        }
        let mut c = vec![-1e30f32, -7.0, -0.5, 0.0, 0.5, 7.0, 1e30];
        let orig = c.clone();
        softcap_in_place(&mut c, 5.0);
        for (&got, &x) in c.iter().zip(&orig) {
            let want = 5.0 * ((x as f64) / 5.0).tanh();
            assert!(
                ((got as f64) - want).abs() <= 1e-6 * 5.0,
                "softcap({x}): {got} vs {want}"
            );
            assert!(got.abs() <= 5.0);
        }
    }

    /// ggml_gelu's ends: 0 from −10 down, the identity from 10 up; between,
    /// the tanh form at f16 input and output (0.5 → f16(gelu(0.5))).
    #[test]
    fn gelu_follows_ggml_table_and_ends() {
        let mut v = vec![-10.0, -12.5, 10.0, 11.25, 0.0, 0.5, -9.99];
        gelu_in_place(&mut v);
        assert_eq!(&v[..5], &[0.0, 0.0, 10.0, 11.25, 0.0]);
        let g = 0.5f32 * 0.5 * (1.0 + (0.797_884_6f32 * 0.5 * (1.0 + 0.044_715 * 0.25)).tanh());
        assert_eq!(v[5], half::f16::from_f32(g).to_f32());
        assert!(v[6] <= 0.0 && v[6] > -1e-3, "{}", v[6]);
    }

    /// SwiGLU, RMS norm, the residual add and the Σx² taps equal their
    /// one-line scalar definitions on lengths around the vector widths.
    #[test]
    fn elementwise_kernels_match_their_definitions() {
        for len in [1usize, 7, 8, 15, 16, 17, 33, 384] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() * 2.0).collect();
            let mut u = b.clone();
            swiglu_in_place(&mut u, &a);
            for ((u, &g), &b) in u.iter().zip(&a).zip(&b) {
                assert_eq!(*u, b * (g / (1.0 + exp_f32(-g))));
            }
            let mut x = a.clone();
            add_in_place(&mut x, &b);
            assert!(x.iter().zip(&a).zip(&b).all(|((x, a), b)| *x == a + b));
            let mut o = a.clone();
            rms_norm_row(&mut o, &b, 1e-5, 0.0);
            let ms = a.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / len as f64;
            let scale = 1.0 / (ms as f32 + 1e-5).sqrt();
            for ((o, &v), &g) in o.iter().zip(&a).zip(&b) {
                assert!((o - v * scale * g).abs() <= 1e-6 * (v * scale * g).abs());
            }
            let mut o = a.clone();
            layer_norm_row(&mut o, &b, Some(&a), 1e-5);
            let mean = a.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
            let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
            for ((o, &v), &g) in o.iter().zip(&a).zip(&b) {
                let want = (v as f64 - mean) / (var + 1e-5).sqrt() * g as f64 + v as f64;
                assert!(
                    (*o as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{o} vs {want}"
                );
            }
            let mut g = a.iter().map(|v| v * 4.0).collect::<Vec<_>>();
            gelu_in_place(&mut g);
            for (&g, &v) in g.iter().zip(&a).filter(|(_, &v)| (v * 4.0).abs() < 10.0) {
                let x = v * 4.0;
                let tanh = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh());
                assert_eq!(
                    half::f16::from_f32(g).to_f32(),
                    g,
                    "{x}: not on ggml's f16 table"
                );
                assert!(
                    (g - tanh).abs() <= 2e-3 * (1.0 + tanh.abs()),
                    "{x}: {g} vs {tanh}"
                );
            }
            let mut acc = vec![0f64; 3];
            let rows: Vec<f32> = (0..3 * len).map(|i| i as f32 * 0.5).collect();
            accumulate_sq(&mut acc, &rows, 3);
            for (c, s) in acc.iter().enumerate() {
                let want: f64 = rows
                    .iter()
                    .skip(c)
                    .step_by(3)
                    .map(|&v| (v * v) as f64)
                    .sum();
                assert!((s - want).abs() <= 1e-6 * want, "{s} vs {want}");
            }
        }
    }
}

#[cfg(test)]
mod moe_tests {
    use super::*;
    use crate::arch::moe::{MIXTRAL, OLMOE, QWEN2MOE, QWEN3MOE};
    use crate::calib::testmodel::{cfg, weights};

    /// Top-k best first, equal probabilities in expert order (as ggml's
    /// descending `std::sort` leaves them for up to 16 experts), the chosen
    /// probabilities divided by their f64 sum when asked, and that sum
    /// clamped at f16's smallest normal.
    #[test]
    fn route_takes_the_best_k_in_ggml_order() {
        let probs = [0.1f32, 0.4, 0.1, 0.4, 0.0, 1e-9, 2e-9, 0.0];
        let (sel, w) = route(&probs, 4, 3, false);
        assert_eq!(sel, vec![1, 3, 0, 2, 1, 0]);
        assert_eq!(w, vec![0.4, 0.4, 0.1, 2e-9, 1e-9, 0.0]);
        let (sel, w) = route(&probs, 4, 2, true);
        assert_eq!(sel, vec![1, 3, 2, 1]);
        assert_eq!(w[..2], [0.5, 0.5]);
        // 3e-9 is below the clamp: the weights are divided by it, not renormalised.
        assert_eq!(w[2], 2e-9 / MOE_WEIGHT_SUM_MIN);
        assert_eq!(w[3], 1e-9 / MOE_WEIGHT_SUM_MIN);
    }

    /// Softmax with a sink against its definition in f64: `p_i = e^(s_i) /
    /// (Σ_j e^(s_j) + e^sink)`, the sink's share missing from the row's sum;
    /// with no sink (−∞) it is [`softmax_in_place`].
    #[test]
    fn softmax_with_a_sink_is_its_definition() {
        let cases = [
            (5usize, 0.3f32),
            (37, 4.0),
            (16, -2.5),
            (3, 20.0),
            (33, f32::NEG_INFINITY),
        ];
        for (len, sink) in cases {
            let row: Vec<f32> = (0..len)
                .map(|j| ((j * 37 % 11) as f32 - 5.0) * 0.7)
                .collect();
            let mut got = row.clone();
            softmax_sink_in_place(&mut got, sink);
            let max = row.iter().fold(sink as f64, |m, &v| m.max(v as f64));
            let e = |v: f32| (v as f64 - max).exp();
            let denom = row.iter().map(|&v| e(v)).sum::<f64>() + e(sink);
            for (&g, &v) in got.iter().zip(&row) {
                let want = e(v) / denom;
                assert!(
                    (g as f64 - want).abs() <= 2e-6 * want,
                    "{len} {sink}: {g} {want}"
                );
            }
            let sum: f64 = got.iter().map(|&v| v as f64).sum();
            assert!(
                (sum + e(sink) / denom - 1.0).abs() < 1e-6,
                "{len} {sink}: {sum}"
            );
            let mut plain = row.clone();
            softmax_in_place(&mut plain);
            if sink == f32::NEG_INFINITY {
                assert_eq!(plain, got);
            } else {
                assert!(plain.iter().zip(&got).all(|(p, g)| p > g), "{len} {sink}");
            }
        }
    }

    /// gpt-oss's clamped SwiGLU against its definition in f64: gate
    /// `x = min(g, 7)`, up `y = clamp(u, −7, 7)`, `x / (1 + e^(−1.702 x)) · (y + 1)`;
    /// a gate above the limit acts as the limit, an up beyond it as ±limit.
    #[test]
    fn swiglu_oai_is_its_definition() {
        let g = [-9.0f32, -1.0, 0.0, 0.5, 6.9, 7.0, 12.0, 3.0, 12.0];
        let u = [0.3f32, -8.0, 2.0, 9.0, -0.4, 1.0, -7.5, 7.0, -7.0];
        let mut got = u;
        glu_in_place(Act::SwigluOai, &mut got, &g);
        for j in 0..g.len() {
            let x = (g[j] as f64).min(7.0);
            let y = (u[j] as f64).clamp(-7.0, 7.0);
            let want = x / (1.0 + (-1.702 * x).exp()) * (y + 1.0);
            let err = (got[j] as f64 - want).abs();
            assert!(err <= 1e-6 * want.abs().max(1e-2), "{j}: {} {want}", got[j]);
        }
        // Clamped: gate 12 as gate 7, up −7.5 as up −7.
        assert_eq!(got[6], got[8]);
        let mut at_limit = [-7.0f32];
        glu_in_place(Act::SwigluOai, &mut at_limit, &[7.0]);
        assert_eq!(got[6], at_limit[0]);
    }

    /// gpt-oss's routing: the top k of the router's logits, then the softmax
    /// of those k alone (`Gating::SoftmaxWeight`), where the other families'
    /// weights are the probabilities of the softmax over every expert.
    #[test]
    fn softmax_weight_gating_is_top_k_then_softmax() {
        let logits = vec![0.5f32, 2.0, -1.0, 1.5, 3.0, 3.0, -4.0, 0.0];
        let (sel, w) = gate(logits.clone(), Gating::SoftmaxWeight, 4, 2, false);
        assert_eq!(sel, [1, 3, 0, 1]);
        let pair = |a: f64, b: f64| [1.0 / (1.0 + (b - a).exp()), 1.0 / (1.0 + (a - b).exp())];
        let want = [pair(2.0, 1.5), pair(3.0, 3.0)].concat();
        for (&g, &x) in w.iter().zip(&want) {
            assert!((g as f64 - x).abs() < 1e-7, "{w:?} {want:?}");
        }
        let (sel_n, w_n) = gate(logits.clone(), Gating::SoftmaxWeight, 4, 2, true);
        assert_eq!(sel_n, sel);
        for (&g, &x) in w_n.iter().zip(&want) {
            assert!((g as f64 - x).abs() < 1e-7, "{w_n:?} {want:?}");
        }
        let (sel_s, w_s) = gate(logits.clone(), Gating::Softmax, 4, 2, false);
        assert_eq!(sel_s, sel);
        let row0: f64 = logits[..4].iter().map(|&v| (v as f64).exp()).sum();
        let full = [2.0f64.exp() / row0, 1.5f64.exp() / row0];
        for (&g, &x) in w_s[..2].iter().zip(&full) {
            assert!((g as f64 - x).abs() < 1e-7, "{w_s:?} {full:?}");
        }
        assert!(w_s[0] < w[0] && w_s[1] < w[1]);
    }

    /// The per-expert taps of every mixture family: each token counted for
    /// exactly `n_used` experts, the experts' input sums adding up to
    /// `n_used` times the router's (every token's row reaches k experts), and
    /// the down input per expert zero exactly where no token was routed; a
    /// mixture's logits are finite, and differ when the renormalisation flag
    /// flips (it is read).
    #[test]
    fn expert_taps_count_every_routed_token() {
        for family in [&QWEN2MOE, &QWEN3MOE, &MIXTRAL, &OLMOE] {
            let c = cfg(family, false);
            let w = weights(&c, 5);
            let model = Model::load(c.clone(), &w, 2).unwrap();
            let toks: Vec<u32> = (0..37).map(|j| (j * 7 % c.vocab) as u32).collect();
            let mut taps = TapSums::new(&c, false);
            let logits = model
                .forward(&toks, Some(&mut taps), true)
                .unwrap()
                .unwrap();
            assert!(logits.iter().all(|v| v.is_finite()));
            let m = c.moe.unwrap();
            let b = c.block();
            for layer in 0..c.n_layers {
                let routed = taps.routed(layer).unwrap();
                assert_eq!(routed.len(), m.n_expert);
                assert_eq!(
                    routed.iter().sum::<f64>(),
                    (toks.len() * m.n_used) as f64,
                    "{family:?}"
                );
                assert!(routed.iter().filter(|&&n| n > 0.0).count() >= m.n_used);
                let sums = taps.layer(layer);
                let ffn_in = &sums[b.input_index(Input::FfnIn)];
                let exps = &sums[b.input_index(Input::FfnInExps)];
                assert_eq!(exps.len(), m.n_expert * c.hidden);
                for (j, &s) in ffn_in.iter().enumerate() {
                    let total: f64 = (0..m.n_expert).map(|e| exps[e * c.hidden + j]).sum();
                    assert!(
                        (total - m.n_used as f64 * s).abs() <= 1e-5 * total.abs(),
                        "{family:?} layer {layer} column {j}: {total} vs {s}"
                    );
                }
                let down = &sums[b.input_index(Input::FfnDown)];
                for (e, &n) in routed.iter().enumerate() {
                    let row = &down[e * m.ff..(e + 1) * m.ff];
                    assert_eq!(
                        n == 0.0,
                        row.iter().all(|&v| v == 0.0),
                        "{family:?} expert {e}"
                    );
                }
            }
            let by = taps.by_weight_counted();
            let (_, s, counts) = by
                .iter()
                .find(|(n, _, _)| n == "blk.1.ffn_down_exps.weight")
                .unwrap();
            assert_eq!(counts.as_slice(), taps.routed(1).unwrap());
            assert_eq!(s.len(), m.n_expert * m.ff);
            let mut flipped = c.clone();
            flipped.moe = Some(MoeShape {
                norm_top_k: !m.norm_top_k,
                ..m
            });
            let other = Model::load(flipped, &w, 2).unwrap();
            let l2 = other.forward(&toks, None, true).unwrap().unwrap();
            assert_ne!(logits, l2, "{family:?}: norm_top_k is not read");
        }
    }

    /// The recorded routes are the taps' counts token by token: every token
    /// of every layer has `n_used` distinct experts in increasing order, each
    /// expert's recorded tokens number its routed count, and the logits are
    /// the plain pass's; from position `from` on only; none for a dense model.
    #[test]
    fn recorded_routes_are_the_routed_tokens() {
        for family in [&QWEN2MOE, &QWEN3MOE, &MIXTRAL, &OLMOE] {
            let c = cfg(family, false);
            let w = weights(&c, 5);
            let model = Model::load(c.clone(), &w, 2).unwrap();
            let toks: Vec<u32> = (0..29).map(|j| (j * 5 % c.vocab) as u32).collect();
            let mut taps = TapSums::new(&c, false);
            model.forward(&toks, Some(&mut taps), false).unwrap();
            let from = 9;
            let (logits, routes) = model.forward_routes_from(&toks, from).unwrap();
            assert_eq!(logits, model.forward_logits_from(&toks, from).unwrap());
            let (_, all) = model.forward_routes_from(&toks, 0).unwrap();
            let (routes, all) = (routes.unwrap(), all.unwrap());
            let m = c.moe.unwrap();
            assert_eq!(routes.len(), c.n_layers);
            for layer in 0..c.n_layers {
                assert_eq!(all[layer].len(), toks.len(), "{family:?}");
                assert_eq!(routes[layer], all[layer][from..], "{family:?}");
                let mut counts = vec![0f64; m.n_expert];
                for experts in &all[layer] {
                    assert_eq!(experts.len(), m.n_used, "{family:?}");
                    assert!(experts.windows(2).all(|p| p[0] < p[1]), "{experts:?}");
                    experts.iter().for_each(|&e| counts[e as usize] += 1.0);
                }
                assert_eq!(counts.as_slice(), taps.routed(layer).unwrap(), "{family:?}");
            }
        }
        let c = cfg(&crate::arch::llama::LLAMA, false);
        let model = Model::load(c.clone(), &weights(&c, 5), 2).unwrap();
        let (_, routes) = model.forward_routes_from(&[1, 2, 3], 1).unwrap();
        assert!(routes.is_none());
    }
}

#[cfg(test)]
mod packed_tests {
    use super::*;

    /// Reading a layer straight into its bf16 packing (the checkpoint's map,
    /// 256 rows at a time) gives the packing of the f32 layer, and the same
    /// norms; a tensor of the wrong size is an error naming it.
    #[test]
    fn load_packed_equals_load_then_pack() {
        if !super::super::amx::available() {
            return eprintln!("no AMX on this machine: the packed layers are not exercised");
        }
        for fx in ["llama-bpe", "qwen2-tied", "qwen3-sharded"] {
            let dir = format!("{}/fixtures/{fx}", env!("CARGO_MANIFEST_DIR"));
            let ck = crate::hf::Checkpoint::open(&dir).unwrap();
            let cfg = ForwardConfig::from_hf(&ck.config).unwrap();
            for i in 0..cfg.n_layers {
                let direct = Layer::load_packed(&cfg, &ck, i).unwrap();
                let via = Layer::load(&cfg, &ck, i).unwrap();
                let want: Vec<_> = matmul_dims(&cfg)
                    .iter()
                    .zip(&via.mats)
                    .map(|(&(n, k), w)| super::super::amx::PackedBf16::pack(w, n, k))
                    .collect();
                assert_eq!(direct.packed.as_deref(), Some(&want[..]), "{fx} layer {i}");
                assert_eq!(direct.attn_norm, via.attn_norm);
                assert_eq!(direct.ffn_norm, via.ffn_norm);
                assert_eq!(direct.biases, via.biases);
                assert!(direct.mats.iter().all(Vec::is_empty), "{fx} layer {i}");
                assert!(via.packed.is_none());
            }
            let mut bad = cfg.clone();
            bad.intermediate += 32;
            let e = Layer::load_packed(&bad, &ck, 0).err().expect("wrong size");
            assert!(e.to_string().contains("mlp.gate_proj.weight"), "{e}");
        }
    }
}

#[cfg(test)]
mod q8_1_tests {
    use super::*;
    use crate::gguf::GgmlType;

    /// A Q4_1/Q5_1 weight times Q8_1 activations, as ggml's
    /// `ggml_vec_dot_q5_1_q8_1` computes it from the blocks (`d_w · d_y · Σ q_w q_y`
    /// plus `m · s`, `s` the f16 sum), equals the product of the dequantized weight
    /// with the rounded activations plus [`add_q8_1_sums`]; without the latter
    /// it is off by far more.
    #[test]
    fn q8_1_sums_make_the_product_ggml_s() {
        let (n, k, rows) = (5, 96, 3);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 211) as f32 - 60.0) * 0.011)
            .collect();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 104_729 % 389) as f32 - 150.0) * 0.0037)
            .collect();
        for ty in [GgmlType::Q4_1, GgmlType::Q5_1] {
            let rb = ty.row_bytes(k as u64).unwrap() as usize;
            let mut bytes = vec![0u8; n * rb];
            crate::quant::quantize_rows(ty, &w, k, None, &mut bytes).unwrap();
            let mut deq = vec![0f32; n * k];
            for (o, b) in deq.chunks_exact_mut(k).zip(bytes.chunks_exact(rb)) {
                crate::quant::dequantize(ty, b, o).unwrap();
            }
            let mins = crate::quant::block_minima(ty, &bytes).unwrap();
            assert_eq!(mins.len(), n * k / 32);
            let xr = rounded(&x, k, ActQuant::Q8_1);
            let plain = matmul_wt(&xr, rows, k, &deq, n, None, 1);
            let mut ours = plain.clone();
            add_q8_1_sums(&mut ours, &x, rows, k, &mins, n, 1);
            for r in 0..rows {
                for j in 0..n {
                    let mut want = 0f64;
                    for b in 0..k / 32 {
                        let xb = &x[r * k + b * 32..r * k + b * 32 + 32];
                        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let d = amax / 127.0;
                        let q: Vec<f32> = xb
                            .iter()
                            .map(|v| (v * (127.0 / amax)).round_ties_even())
                            .collect();
                        let s = half::f16::from_f32(d * q.iter().sum::<f32>()).to_f32();
                        let dy = half::f16::from_f32(d).to_f32() as f64;
                        let m = mins[j * (k / 32) + b];
                        // The weight's levels times its scale: w − m.
                        let wq = &deq[j * k + b * 32..j * k + b * 32 + 32];
                        let dot: f64 = wq
                            .iter()
                            .zip(&q)
                            .map(|(&wv, &qv)| (wv - m) as f64 * qv as f64)
                            .sum();
                        want += dot * dy + m as f64 * s as f64;
                    }
                    let got = ours[r * n + j] as f64;
                    let off = plain[r * n + j] as f64;
                    assert!((got - want).abs() < 1e-5, "{ty} {r},{j}: {got} vs {want}");
                    assert!(
                        (off - want).abs() > 10.0 * (got - want).abs(),
                        "{ty} {r},{j}: the correction does not matter ({off} vs {want})"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod positions_tests {
    use super::super::layered::{forward_layered, Limits, Sequence};
    use super::super::patched::{delta_kld, Weighted};
    use super::super::Matmul;
    use super::*;

    /// The whole-model, layer-by-layer and patched forward passes take their
    /// learned positions from one place: a sequence as long as the table
    /// runs, one token longer is the same error in all three, naming the
    /// tensor and both lengths.
    #[test]
    fn a_sequence_longer_than_the_learned_positions_is_one_error() {
        let dir = format!("{}/fixtures/gpt2", env!("CARGO_MANIFEST_DIR"));
        let ck = crate::hf::Checkpoint::open(&dir).unwrap();
        let cfg = ForwardConfig::from_hf(&ck.config).unwrap();
        let table = ck.tensor_shape("transformer.wpe.weight").unwrap()[0];
        let tokens: Vec<u32> = (0..table as u32 + 1).map(|i| i * 7 % 97).collect();
        let (fits, long) = (&tokens[..table], &tokens[..]);
        let model = Model::load(cfg.clone(), &ck, 1).unwrap();
        assert!(model.forward(fits, None, true).unwrap().is_some());
        let whole = model.forward(long, None, true).unwrap_err().to_string();
        let want = format!(
            "a sequence of {} tokens is longer than the {table} learned positions of tensor \
             transformer.wpe.weight",
            table + 1
        );
        assert!(whole.contains(&want), "{whole}");
        let layered = forward_layered(
            &cfg,
            &ck,
            &[Sequence {
                tokens: long,
                taps: 0,
            }],
            None,
            None,
            Limits::default(),
            1,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert_eq!(layered, whole);
        // One group, replacing a weight by its own values.
        let same = |_: usize,
                    _: Option<&[usize]>,
                    original: &dyn Fn() -> Result<Vec<f32>, CalibError>|
         -> Result<Vec<f32>, CalibError> { original() };
        let patched = delta_kld(
            &cfg,
            &ck,
            &[Weighted {
                tokens: long,
                weight: 1.0,
            }],
            &[super::super::patched::Patch {
                hf_name: "transformer.h.1.mlp.c_proj.weight",
                act: super::super::actquant::ActQuant::F32,
            }],
            &[vec![0]],
            &same,
            Limits::default(),
            Matmul::F32,
            1,
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert_eq!(patched, whole);
    }
}
