//! The shape of a family's knowledge: one [`ArchSpec`] per family (in
//! `src/arch/<family>.rs`, registered in [`super::ARCHS`]), read by the
//! converter (names, transforms, hyperparameters, vocabulary) and by the
//! forward pass (the [`BlockSpec`] its single layer function follows).
//!
//! Each enum lists the variants the code implements; a new operation is a new
//! variant, implemented once in the layer function (following ggml's order of
//! floating-point operations) and then available to every family whose spec
//! names it. A mixture-of-experts block is a new [`Ffn`] variant (its router
//! and expert matmuls are more [`Matmul`] rows with their own roles and
//! inputs); an encoder is a block whose attention is not causal, refused today
//! (see [`super::ENCODER_ONLY`]).

use super::Role;

/// Everything laquant knows about one model family.
#[derive(Debug, PartialEq)]
pub struct ArchSpec {
    /// The `architectures[0]` names of `config.json` this spec converts.
    pub hf_classes: &'static [&'static str],
    /// `general.architecture` and the `{arch}.*` key prefix.
    pub gguf_arch: &'static str,
    /// How its vocabulary is written.
    pub vocab: VocabKind,
    /// Its tensors: HF names to GGUF names, roles and transforms.
    pub tensors: TensorRules,
    /// Its `{arch}.*` hyperparameter keys.
    pub hparams: HparamSpec,
    /// What the forward pass computes in one of its layers.
    pub block: BlockSpec,
}

/// Which `set_vocab` of `convert_hf_to_gguf.py` the family runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `LlamaModel.set_vocab`: SentencePiece (`tokenizer.model`), else the
    /// byte-fallback BPE of `tokenizer.json` (gguf-py's `LlamaHfVocab`), else
    /// gpt2 BPE; plus the CodeLlama FIM ids and the 49152-token `add_bos` rule.
    SentencePieceLlamaHfGpt2,
    /// `Qwen2Model.set_vocab`: SentencePiece, else gpt2 BPE.
    SentencePieceGpt2,
    /// `Gemma2Model`/`Gemma3Model.set_vocab`: SentencePiece written with
    /// `add_space_prefix` false, else gpt2 BPE.
    SentencePieceNoPrefixGpt2,
    /// `_set_vocab_gpt2` from `tokenizer.json` alone (a `tokenizer.model`
    /// beside it is ignored).
    Gpt2,
    /// `BertModel.set_vocab`: the WordPiece vocabulary of `tokenizer.json`
    /// (`get_vocab_base`) in llama.cpp's phantom-space form, `tokenizer.ggml.model`
    /// `bert`, the token type count.
    BertWordPiece,
    /// `XLMRobertaModel.set_vocab` (`_xlmroberta_set_vocab`): the SentencePiece
    /// Unigram model `sentencepiece.bpe.model` realigned to fairseq's ids
    /// (`<s> <pad> </s> <unk>` first), `tokenizer.ggml.model` `t5`, its
    /// normalizer flags and precompiled charsmap, the token type count.
    XlmRobertaUnigram,
}

/// HF tensor names and where each goes.
#[derive(Debug, PartialEq)]
pub struct TensorRules {
    /// Whole HF base names (without `.weight`/`.bias`) of the global tensors.
    pub global: &'static [TensorRule],
    /// What precedes the layer number in per-layer names (`model.layers.`).
    pub layer_prefix: &'static str,
    /// Per-layer base names, after `{layer_prefix}{N}.`.
    pub layer: &'static [TensorRule],
    /// Name suffixes the converter drops.
    pub skipped_suffixes: &'static [&'static str],
    /// Per-expert tensors stacked into one 3-D tensor each (mixtures of experts).
    pub experts: Option<ExpertRules>,
}

/// The per-expert HF tensors of a mixture of experts
/// (`{layer_prefix}{N}.{prefix}{E}.{base}.weight`), which the converter stacks
/// into one `[n_expert, rows, cols]` tensor per base name, expert by expert,
/// as `convert_hf_to_gguf.py`'s `torch.stack` does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertRules {
    /// What precedes the expert number, after the layer's prefix (`mlp.experts.`).
    pub prefix: &'static str,
    /// Base names after `{prefix}{E}.` and the stacked tensor's role, in the
    /// order the converter writes the stacked tensors (once a layer's last
    /// expert tensor is read).
    pub stacked: &'static [(&'static str, Role)],
}

impl TensorRules {
    /// The HF name (with `.weight`) of a global tensor of role `role`.
    pub fn global_name(&self, role: Role) -> Option<String> {
        self.global
            .iter()
            .find(|r| r.role == role)
            .map(|r| format!("{}.weight", r.hf))
    }

    /// The HF name (with `.weight`) of layer `layer`'s tensor of role `role`.
    pub fn layer_name(&self, layer: usize, role: Role) -> Option<String> {
        self.layer
            .iter()
            .find(|r| r.role == role)
            .map(|r| self.layer_tensor(layer, r.hf, "weight"))
    }

    /// `{layer_prefix}{layer}.{base}.{suffix}`.
    pub fn layer_tensor(&self, layer: usize, base: &str, suffix: &str) -> String {
        format!("{}{layer}.{base}.{suffix}", self.layer_prefix)
    }
}

/// One HF tensor (weight, and bias where [`TensorRule::bias`] allows one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorRule {
    /// HF base name (global: the whole name; per layer: after the layer prefix).
    pub hf: &'static str,
    /// What it is.
    pub role: Role,
    /// Whether llama.cpp cannot load the model without it.
    pub required: bool,
    /// Whether it may come with a bias.
    pub bias: BiasRule,
    /// What converting it takes.
    pub transform: TransformRule,
}

impl TensorRule {
    /// A required weight without bias or transform.
    pub const fn plain(hf: &'static str, role: Role) -> TensorRule {
        TensorRule {
            hf,
            role,
            required: true,
            bias: BiasRule::Never,
            transform: TransformRule::None,
        }
    }

    /// [`TensorRule::plain`] with a bias whatever the config says.
    pub const fn with_bias(hf: &'static str, role: Role) -> TensorRule {
        TensorRule {
            bias: BiasRule::Always,
            ..TensorRule::plain(hf, role)
        }
    }
}

/// Whether a tensor may come with a `.bias`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasRule {
    /// Never (a `.bias` is an unknown tensor).
    Never,
    /// When `config.json`'s `attention_bias` is true (or its family default).
    IfAttentionBias,
    /// Whenever the checkpoint has one.
    Always,
}

/// How a tensor's rows are rearranged on the way to GGUF (and back, to read a
/// GGUF file in HF layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformRule {
    /// Rows as stored.
    None,
    /// llama.cpp's `permute(w, n_head, n_head_kv)` over this many heads.
    PermuteHeads(Heads),
    /// `w + 1` on every value: Gemma's norm weights, stored as the offset
    /// from 1 (`Gemma2Model.modify_tensors` adds 1, in f32 for bf16 and f32
    /// checkpoints, in f16 for f16 ones).
    AddOne,
    /// A fused QKV whose HF rows go head by head (`q, k, v` of head 0, then
    /// of head 1, ...) to llama.cpp's `[Q; K; V]` (GPT-NeoX's reshape to
    /// `(n_head, 3, head_dim, ·)`).
    QkvPerHead,
    /// A `Conv1D` weight, stored `[in, out]` (GPT-2's `c_attn`, `c_proj`,
    /// `c_fc`), transposed as `convert_hf_to_gguf.py` transposes it. The
    /// checkpoint reader transposes such a tensor each time it is read
    /// (`Checkpoint::tensor_bytes`, never held from open), so everything
    /// after it (the converter's rows, the forward pass) sees the
    /// `nn.Linear` layout, `[out, in]`.
    Transpose,
    /// RoBERTa's learned positions, which start after the padding id: the
    /// first `pad_token_id + 1` rows dropped, as `XLMRobertaModel.modify_tensors`
    /// slices them (and `max_position_embeddings` lowered by as many). The
    /// checkpoint reader presents the tensor already sliced
    /// ([`crate::hf::Checkpoint::open`]); no family without `pad_token_id`
    /// slices anything.
    SkipPaddingPositions,
}

/// Which head count a permutation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    /// `num_attention_heads` (Q).
    Attention,
    /// `num_key_value_heads` (K).
    KeyValue,
}

/// How the `{arch}.*` hyperparameters are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HparamSpec {
    /// `{arch}.vocab_size` and `{arch}.rope.dimension_count` (LlamaModel's additions).
    pub vocab_and_rope_dim: bool,
    /// transformers' config class derives `head_dim` when `config.json` has
    /// none, so the key/value lengths are always written (LlamaConfig).
    pub head_dim_always: bool,
    /// `attention_bias` when `config.json` does not say.
    pub attention_bias_default: bool,
    /// `tie_word_embeddings` when `config.json` does not say (the config
    /// class's default: true for SmolLM3Config).
    pub tie_word_embeddings_default: bool,
    /// `(config.json key, {arch}.* key)`: f32 values written after the rest
    /// when the config has them and they are not zero (Granite's multipliers).
    pub extra_f32: &'static [(&'static str, &'static str)],
    /// `(config.json key, {arch}.* key)`: u32 values written after the rest
    /// when the config has them (Qwen2-MoE's expert widths, Gemma's sliding
    /// window).
    pub extra_u32: &'static [(&'static str, &'static str)],
    /// The RMS norm epsilon the converter writes whatever `config.json` says
    /// (OLMoE's 1e-5).
    pub rms_norm_eps_fixed: Option<f64>,
    /// `{arch}.rope.freq_base` (TextModel's; Gemma2Model does not write it).
    pub rope_freq_base: bool,
    /// `{arch}.rope.freq_base_swa` from this `config.json` key (Gemma 3's
    /// local base), when the config has it.
    pub rope_freq_base_swa: Option<&'static str>,
    /// The `{arch}.*` keys in the order the family's own `set_gguf_parameters`
    /// writes them; `None`: `TextModel.set_gguf_parameters` (the code above).
    pub layout: Option<&'static [Hp]>,
    /// `(key laquant reads, the family's config.json name for it)`: read from
    /// the family's name when the config lacks the usual one
    /// (`layer_norm_eps` for `rms_norm_eps`, `use_qkv_bias` for `attention_bias`).
    pub aliases: &'static [(&'static str, &'static str)],
}

/// One `{arch}.*` key of a family's own hyperparameter layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hp {
    /// `context_length`: `max_position_embeddings`.
    ContextLength,
    /// `embedding_length`: `hidden_size`.
    EmbeddingLength,
    /// `block_count`: `num_hidden_layers`.
    BlockCount,
    /// `feed_forward_length`: `intermediate_size`.
    FeedForwardLength,
    /// `rope.dimension_count`: the rotated dimensions of a head (partial rotary).
    RopeDimensionCount,
    /// `attention.head_count`: `num_attention_heads`.
    HeadCount,
    /// `attention.head_count_kv`: `num_key_value_heads`.
    HeadCountKv,
    /// `use_parallel_residual` from the config (default true).
    ParallelResidual,
    /// `attention.layer_norm_epsilon` (the config's norm epsilon).
    LayerNormEps,
    /// `general.file_type`.
    FileType,
    /// `rope.scaling.original_context_length` (`original_max_position_embeddings`).
    RopeScalingOrigCtx,
    /// `attention.layer_norm_rms_epsilon`.
    LayerNormRmsEps,
    /// `rope.freq_base`.
    RopeFreqBase,
    /// `attention.sliding_window`: the config's `sliding_window`, 0 when it has none.
    SlidingWindowOrZero,
    /// `rope.scaling.attn_factor`, LongRoPE's (absent without it).
    RopeScalingAttnFactor,
    /// `feed_forward_length` as `4 · embedding_length`, whatever the config
    /// says (GPT2Model's); the FFN width is then that, and a config naming
    /// another (`n_inner`) is refused.
    FeedForwardFourfold,
    /// `attention.causal` = false (an encoder).
    NonCausal,
    /// `pooling_type` from sentence-transformers' `modules.json` and its
    /// Pooling module's `config.json`, when the model has them
    /// ([`crate::hf::Config::pooling_type`]).
    PoolingType,
    /// `classifier.output_labels`: `id2label`'s labels in id order, unless
    /// they are transformers' two dummy ones (`BertModel.__init__`'s rule;
    /// [`crate::hf::Config::classifier_output_labels`]).
    ClassifierOutputLabels,
}

impl HparamSpec {
    /// `TextModel.set_gguf_parameters` alone: no Llama additions, key/value
    /// lengths only when `config.json` gives `head_dim`, no biases by default.
    pub const TEXT_MODEL: HparamSpec = HparamSpec {
        vocab_and_rope_dim: false,
        head_dim_always: false,
        attention_bias_default: false,
        tie_word_embeddings_default: false,
        extra_f32: &[],
        extra_u32: &[],
        rope_freq_base: true,
        rope_freq_base_swa: None,
        rms_norm_eps_fixed: None,
        layout: None,
        aliases: &[],
    };
}

/// What the forward pass computes in one decoder layer.
#[derive(Debug, PartialEq)]
pub struct BlockSpec {
    /// The norms' kind.
    pub norm: Norm,
    /// How positions enter.
    pub positions: Positions,
    /// The attention.
    pub attention: Attention,
    /// The feed-forward part.
    pub ffn: Ffn,
    /// How the parts join the residual stream.
    pub residual: Residual,
    /// The role of the tensor norming the FFN's input when the residual has
    /// pre-norms ([`Residual::pre_norms`]): [`Role::FfnNorm`] (`ffn_norm`),
    /// except gpt-oss's, which its converter writes as `post_attention_norm`
    /// ([`Role::AttnPostNorm`]) and llama.cpp's graph applies before the FFN.
    pub ffn_norm: Role,
    /// Constant factors read from `config.json`.
    pub scales: Scales,
    /// `Some(n)`: every n-th layer (1-based: layers n-1, 2n-1, …) has no
    /// positions at all (NoPE: Q and K are not rotated), as llama.cpp's
    /// smollm3 graph does with `n_no_rope_layer_step`.
    pub nope_every: Option<usize>,
    /// The layer's matmuls, each with its role, HF base name and input.
    pub matmuls: &'static [Matmul],
}

impl BlockSpec {
    /// Whether layer `layer` rotates Q and K ([`BlockSpec::nope_every`]).
    pub fn rope_in_layer(&self, layer: usize) -> bool {
        self.nope_every
            .is_none_or(|n| !(layer + 1).is_multiple_of(n))
    }
}

/// The `config.json` keys of constant factors (`ggml_scale` in llama.cpp's
/// graph); a factor that is absent or zero is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scales {
    /// Multiplies the token embeddings.
    pub embedding: Option<&'static str>,
    /// Replaces `1/√head_dim` as the attention scores' scale.
    pub attention: Option<&'static str>,
    /// Multiplies each sub-block's output before its residual add.
    pub residual: Option<&'static str>,
    /// Divides the logits.
    pub logit_divisor: Option<&'static str>,
    /// Multiplies the token embeddings by `√hidden_size` (Gemma's
    /// `ggml_scale(inpL, sqrtf(n_embd))`).
    pub embedding_sqrt_hidden: bool,
    /// Soft-caps the logits: `cap · tanh(logits / cap)` for this
    /// `config.json` key's cap (Gemma 2's `final_logit_softcapping`).
    pub final_softcap: Option<&'static str>,
}

impl Scales {
    /// No factor anywhere.
    pub const NONE: Scales = Scales {
        embedding: None,
        attention: None,
        residual: None,
        logit_divisor: None,
        embedding_sqrt_hidden: false,
        final_softcap: None,
    };
}

/// A normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// `ggml_rms_norm` then the weight multiply.
    Rms,
    /// [`Norm::Rms`] with the weight `1 + w` (Gemma's norms): the checkpoint
    /// holds `w`, the converter writes `1 + w` ([`TransformRule::AddOne`] on
    /// every norm tensor).
    RmsUnitOffset,
    /// `ggml_norm` (mean removed, divided by the standard deviation), then the
    /// weight multiply and the bias add when the norm has a bias.
    Layer,
}

/// How positions enter the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// RoPE on every head dimension, pairs `(i, i + d/2)` of HF's layout
    /// (NEOX pairing; for permuted families the same rotation llama.cpp
    /// applies to interleaved pairs of its permuted rows).
    RopeFull,
    /// RoPE on the first `rope.dimension_count` dimensions of every head
    /// (`partial_rotary_factor` or `rotary_pct` of `head_dim`, NEOX pairs
    /// `(i, i + n_rot/2)`), the rest passed through.
    RopePartial,
    /// No rotation: a learned absolute position embedding (`position_embd`,
    /// [`crate::arch::Role::PosEmbd`]) row `p` is added to the token
    /// embedding of position `p` (llama.cpp's `ggml_add(inpL, pos)`).
    Learned,
}

/// Q's scale `1/√v` ([`Attention::query_scale`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryScale {
    /// The `config.json` key of `v` (no GGUF key carries it).
    pub key: &'static str,
    /// The block counts at which llama.cpp takes `v` as the hidden size per
    /// head (its 27B models); at any other, as the head size
    /// (`{arch}.attention.key_length`): how a GGUF file's `v` is read back.
    pub hidden_per_head_at: &'static [usize],
}

impl QueryScale {
    /// `v` as llama.cpp takes it for a model of `blocks` blocks, `hidden`
    /// wide, of `heads` heads of `head_size`.
    pub fn llama_cpp_value(&self, blocks: u64, hidden: u64, heads: u64, head_size: u64) -> u64 {
        if self.hidden_per_head_at.contains(&(blocks as usize)) {
            hidden / heads.max(1)
        } else {
            head_size
        }
    }
}

/// The attention of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attention {
    /// Causal, grouped-query, scale `1/√head_dim`, separate Q, K, V.
    pub kind: AttentionKind,
    /// RMS norms on Q and K before RoPE.
    pub qk_norm: QkNorm,
    /// Biases on Q, K, V whatever `attention_bias` says.
    pub qkv_bias_always: bool,
    /// Q multiplied by `1/√v` after RoPE, the scores then unscaled
    /// (Gemma's `query_pre_attn_scalar`, as llama.cpp's
    /// `ggml_scale(Qcur, f_attention_scale)`).
    pub query_scale: Option<QueryScale>,
    /// Scores soft-capped, `cap · tanh(s / cap)`, before the softmax, for
    /// this `config.json` key's cap (Gemma 2's `attn_logit_softcapping`).
    pub softcap: Option<&'static str>,
    /// Sliding-window layers, when the family has them.
    pub sliding: Option<Sliding>,
    /// A learned per-head logit (`attn_sinks`) joins each softmax of the
    /// scores: it raises the maximum and adds its exponential to the sum
    /// without a value of its own (gpt-oss; ggml's `ggml_soft_max_add_sinks`).
    pub sinks: bool,
}

impl Attention {
    /// One fused `attn_qkv` matmul split as `split`, nothing else (no Q/K
    /// norms, scaling, soft-capping or sliding window).
    pub const fn fused(split: QkvSplit) -> Attention {
        Attention {
            kind: AttentionKind::CausalFusedQkv { split },
            qk_norm: QkNorm::None,
            qkv_bias_always: false,
            query_scale: None,
            softcap: None,
            sliding: None,
            sinks: false,
        }
    }
}

/// Layers whose attention sees only the last `window` positions
/// (llama.cpp's `LLAMA_SWA_TYPE_STANDARD`: key `j` is masked for query `i`
/// when `i - j >= window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sliding {
    /// The `config.json` key of the window.
    pub window: &'static str,
    /// llama.cpp's `set_swa_pattern(period)`: layer `il` slides when
    /// `il % period < period - 1`.
    pub period: usize,
    /// The `config.json` key of the sliding layers' RoPE base, when it
    /// differs from `rope_theta` (Gemma 3's `rope_local_base_freq`).
    pub rope_base: Option<&'static str>,
}

impl Sliding {
    /// Whether layer `layer` slides.
    pub fn slides(&self, layer: usize) -> bool {
        self.period == 0 || layer % self.period < self.period - 1
    }
}

/// Whether and over what Q and K are RMS-normed (after their projection and
/// bias, before RoPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// Not normed.
    None,
    /// Each head on its own, weights of `head_dim` (Qwen3).
    PerHead,
    /// The whole projection of a token, weights of `heads × head_dim` (OLMo 2).
    Whole,
}

/// The attention's projections and mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Separate Q, K, V projections, causal mask (a decoder).
    CausalSeparateQkv,
    /// Separate Q, K, V, every position attending to every other (an
    /// encoder). The forward pass does not implement it yet: calibration,
    /// eval and the calibrated policies refuse it.
    BidirectionalSeparateQkv,
    /// One `attn_qkv` matmul whose output is split into Q, K and V as `split` says.
    CausalFusedQkv {
        /// The output's layout.
        split: QkvSplit,
    },
}

/// How the output of a fused QKV matmul (in the checkpoint's row order) splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvSplit {
    /// `[q, k, v]` per head, head after head (GPT-NeoX's layout).
    PerHead,
    /// All of Q, then all of K, then all of V: GPT-2's `c_attn` (`[Q; K; V]`),
    /// Phi-3's `qkv_proj` (grouped-query widths: `q_dim`, `kv_dim`, `kv_dim`).
    Sequential,
}

/// The feed-forward part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ffn {
    /// `down(act(gate(x)) · up(x))`, no biases.
    Gated {
        /// The gate's activation.
        act: Act,
    },
    /// `down(act(up(x) + b_up)) + b_down` (`LLM_FFN_SEQ`), biases when the
    /// checkpoint has them.
    Plain {
        /// The activation.
        act: Act,
    },
    /// [`Ffn::Gated`] from one `ffn_up` of twice the width, gate rows first
    /// (Phi-3's `gate_up_proj`): `down(act(u[..ff]) · u[ff..])`, as ggml's
    /// `ggml_swiglu` splits a row in halves.
    GatedFused {
        /// The gate's activation.
        act: Act,
    },
    /// A mixture of experts: a router (`ffn_gate_inp`) scores the experts,
    /// each token runs through the `n_expert_used` best, each a [`Ffn::Gated`]
    /// block of its own, and their outputs are summed with the router's
    /// weights; optionally a shared expert, scaled by its own sigmoid gate.
    /// llama.cpp's `build_moe_ffn` with `LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX`:
    /// softmax over every expert, then the top k.
    Moe {
        /// The experts' gate activation.
        act: Act,
        /// Whether the chosen probabilities are divided by their sum.
        norm_top_k: NormTopK,
        /// Whether a shared expert runs beside the routed ones.
        shared_expert: bool,
        /// How the router's logits become the chosen experts' weights.
        gating: Gating,
    },
}

/// How a mixture's router logits (plus the router's bias, when it has one)
/// become the chosen experts and their weights (llama.cpp's
/// `llama_expert_gating_func_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over every expert, then the top k of the probabilities
    /// (`LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX`).
    Softmax,
    /// The top k of the logits, then a softmax over those k alone
    /// (`LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT`, gpt-oss).
    SoftmaxWeight,
}

/// Whether a mixture's top-k probabilities are renormalised: llama.cpp's
/// graph fixes it per family (`norm_w` of `build_moe_ffn`), whatever
/// `config.json`'s `norm_topk_prob` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormTopK {
    /// Divided by their sum.
    Always,
    /// Used as they are.
    Never,
}

/// An FFN's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `x / (1 + e^-x)` (`ggml_swiglu` with the gate).
    Silu,
    /// ggml's `ggml_gelu`: the tanh approximation, through its f16 table.
    Gelu,
    /// gpt-oss's clamped SwiGLU (`ggml_swiglu_oai` with llama.cpp's α = 1.702,
    /// limit = 7): gate `x = min(g, 7)`, up `y = clamp(u, -7, 7)`,
    /// `x / (1 + e^(-α·x)) · (y + 1)`. Only as a gate's activation.
    SwigluOai,
}

/// How the sub-blocks are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// `x += attn(norm(x)); x += ffn(norm(x))`.
    PreNorm,
    /// `x = (ffn(norm₂(x)) + x) + attn(norm₁(x))`: both sub-blocks read the
    /// layer's input (`use_parallel_residual`).
    Parallel,
    /// `x += norm(attn(x)); x += norm(ffn(x))` (OLMo 2).
    PostNorm,
    /// Gemma 2's sandwich: `x += norm(attn(norm(x))); x += norm(ffn(norm(x)))`,
    /// both the pre and the post norms.
    Sandwich,
    /// BERT's: `x = norm(x + attn(x)); x = norm(x + ffn(x))` with the
    /// `attn_output_norm` and `layer_output_norm` tensors.
    PostLayerNorm,
}

impl Residual {
    /// Whether each sub-block's input is normed (`attn_norm`, `ffn_norm`).
    pub fn pre_norms(self) -> bool {
        matches!(
            self,
            Residual::PreNorm | Residual::Parallel | Residual::Sandwich
        )
    }

    /// Whether each sub-block's output is normed before its residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub fn post_norms(self) -> bool {
        matches!(self, Residual::PostNorm | Residual::Sandwich)
    }
}

/// Which activation a matmul multiplies: the forward pass taps each once
/// (the imatrix's Σx² per column), for every matmul reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// The attention norm's output (Q, K, V).
    AttnIn,
    /// The attention's output (the output projection).
    AttnOut,
    /// The FFN norm's output (gate, up; a mixture's router and shared expert).
    FfnIn,
    /// A mixture's FFN norm output, per expert: the rows of the tokens
    /// routed to it (the stacked gate and up, `ggml_mul_mat_id`).
    FfnInExps,
    /// The gated activation (down; per expert, of its tokens, in a mixture).
    FfnDown,
    /// A mixture's shared expert's gated activation (its down).
    FfnDownShexp,
}

/// One matmul of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matmul {
    /// Its weight's role.
    pub role: Role,
    /// HF base name after the layer prefix (`self_attn.q_proj`).
    pub hf: &'static str,
    /// The activation it reads (its imatrix statistic).
    pub input: Input,
}

impl BlockSpec {
    /// The index of the matmul of role `role` in [`BlockSpec::matmuls`].
    /// The layer function only asks for roles its block's variants use, so
    /// a spec missing one is a bug the registry test catches.
    pub fn index(&self, role: Role) -> usize {
        self.matmuls
            .iter()
            .position(|m| m.role == role)
            .unwrap_or_else(|| panic!("block spec has no {role:?} matmul"))
    }

    /// The distinct inputs of the matmuls, in order of first use.
    pub fn inputs(&self) -> Vec<Input> {
        let mut v: Vec<Input> = Vec::new();
        for m in self.matmuls {
            if !v.contains(&m.input) {
                v.push(m.input);
            }
        }
        v
    }

    /// The position of `input` in [`BlockSpec::inputs`].
    pub fn input_index(&self, input: Input) -> usize {
        self.inputs()
            .iter()
            .position(|&i| i == input)
            .unwrap_or_else(|| panic!("block spec has no matmul reading {input:?}"))
    }
}

/// The tensor and matmul tables of the Llama layout (`model.layers.N.…`),
/// shared by the families that keep it.
pub mod llama_layout {
    use super::*;

    /// The tensors outside the layers: embedding, final norm, output head.
    pub const GLOBAL: &[TensorRule] = &[
        TensorRule::plain("model.embed_tokens", Role::TokenEmbd),
        TensorRule::plain("model.norm", Role::OutputNorm),
        TensorRule {
            required: false,
            ..TensorRule::plain("lm_head", Role::Output)
        },
    ];

    /// What precedes a layer's index in its tensors' names.
    pub const LAYER_PREFIX: &str = "model.layers.";

    /// Name endings the converter drops (GPT-NeoX's attention masks, rotary caches).
    pub const SKIPPED: &[&str] = &[
        ".attention.masked_bias",
        ".attention.bias",
        ".rotary_emb.inv_freq",
    ];

    /// Q, K, V with their bias and transform rules, then the rest of the layer.
    pub const fn layer(qkv_bias: BiasRule, permute: bool) -> [TensorRule; 9] {
        let (tq, tk) = if permute {
            (
                TransformRule::PermuteHeads(Heads::Attention),
                TransformRule::PermuteHeads(Heads::KeyValue),
            )
        } else {
            (TransformRule::None, TransformRule::None)
        };
        [
            TensorRule::plain("input_layernorm", Role::AttnNorm),
            TensorRule::plain("post_attention_layernorm", Role::FfnNorm),
            TensorRule {
                bias: qkv_bias,
                transform: tq,
                ..TensorRule::plain("self_attn.q_proj", Role::AttnQ)
            },
            TensorRule {
                bias: qkv_bias,
                transform: tk,
                ..TensorRule::plain("self_attn.k_proj", Role::AttnK)
            },
            TensorRule {
                bias: qkv_bias,
                ..TensorRule::plain("self_attn.v_proj", Role::AttnV)
            },
            TensorRule {
                bias: BiasRule::IfAttentionBias,
                ..TensorRule::plain("self_attn.o_proj", Role::AttnOutput)
            },
            TensorRule::plain("mlp.gate_proj", Role::FfnGate),
            TensorRule::plain("mlp.up_proj", Role::FfnUp),
            TensorRule::plain("mlp.down_proj", Role::FfnDown),
        ]
    }

    /// [`layer`] with per-head Q and K norms after the output projection.
    pub const fn layer_qk_norm(qkv_bias: BiasRule, permute: bool) -> [TensorRule; 11] {
        let l = layer(qkv_bias, permute);
        [
            l[0],
            l[1],
            l[2],
            l[3],
            l[4],
            l[5],
            TensorRule::plain("self_attn.q_norm", Role::AttnQNorm),
            TensorRule::plain("self_attn.k_norm", Role::AttnKNorm),
            l[6],
            l[7],
            l[8],
        ]
    }

    /// A layer's matmuls, in the block's order.
    pub const MATMULS: &[Matmul] = &[
        Matmul {
            role: Role::AttnQ,
            hf: "self_attn.q_proj",
            input: Input::AttnIn,
        },
        Matmul {
            role: Role::AttnK,
            hf: "self_attn.k_proj",
            input: Input::AttnIn,
        },
        Matmul {
            role: Role::AttnV,
            hf: "self_attn.v_proj",
            input: Input::AttnIn,
        },
        Matmul {
            role: Role::AttnOutput,
            hf: "self_attn.o_proj",
            input: Input::AttnOut,
        },
        Matmul {
            role: Role::FfnGate,
            hf: "mlp.gate_proj",
            input: Input::FfnIn,
        },
        Matmul {
            role: Role::FfnUp,
            hf: "mlp.up_proj",
            input: Input::FfnIn,
        },
        Matmul {
            role: Role::FfnDown,
            hf: "mlp.down_proj",
            input: Input::FfnDown,
        },
    ];

    /// The Llama block: RMS norms, full RoPE, SwiGLU, pre-norm residuals.
    /// (`qk_norm`: per-head Q/K norms.)
    pub const fn block(qk_norm: bool, qkv_bias_always: bool) -> BlockSpec {
        BlockSpec {
            norm: Norm::Rms,
            positions: Positions::RopeFull,
            attention: Attention {
                kind: AttentionKind::CausalSeparateQkv,
                qk_norm: if qk_norm {
                    QkNorm::PerHead
                } else {
                    QkNorm::None
                },
                qkv_bias_always,
                query_scale: None,
                softcap: None,
                sliding: None,
                sinks: false,
            },
            ffn: Ffn::Gated { act: Act::Silu },
            residual: Residual::PreNorm,
            ffn_norm: Role::FfnNorm,
            scales: Scales::NONE,
            nope_every: None,
            matmuls: MATMULS,
        }
    }
}

/// The tensor and matmul tables of mixtures of experts on the Llama layout:
/// the attention rows of [`llama_layout`], a router, per-expert tensors
/// stacked by the converter, optionally a shared expert and its gate.
pub mod moe_layout {
    use super::*;

    /// The Qwen2-MoE / Qwen3-MoE / OLMoE experts (`mlp.experts.E.*_proj`),
    /// stacked down, gate, up (`Qwen2MoeModel.modify_tensors`).
    pub const QWEN_EXPERTS: ExpertRules = ExpertRules {
        prefix: "mlp.experts.",
        stacked: &[
            ("down_proj", Role::FfnDownExps),
            ("gate_proj", Role::FfnGateExps),
            ("up_proj", Role::FfnUpExps),
        ],
    };

    /// Mixtral's experts (`block_sparse_moe.experts.E.w1/w2/w3`), stacked
    /// w1 (gate), w2 (down), w3 (up) (`LlamaModel.modify_tensors`).
    pub const MIXTRAL_EXPERTS: ExpertRules = ExpertRules {
        prefix: "block_sparse_moe.experts.",
        stacked: &[
            ("w1", Role::FfnGateExps),
            ("w2", Role::FfnDownExps),
            ("w3", Role::FfnUpExps),
        ],
    };

    /// The router of the Qwen-style mixtures.
    pub const ROUTER: TensorRule = TensorRule::plain("mlp.gate", Role::FfnGateInp);

    /// Qwen2-MoE's shared expert and its gate.
    pub const SHARED: [TensorRule; 4] = [
        TensorRule::plain("mlp.shared_expert.gate_proj", Role::FfnGateShexp),
        TensorRule::plain("mlp.shared_expert.up_proj", Role::FfnUpShexp),
        TensorRule::plain("mlp.shared_expert.down_proj", Role::FfnDownShexp),
        TensorRule::plain("mlp.shared_expert_gate", Role::FfnGateInpShexp),
    ];

    const fn mm(role: Role, hf: &'static str, input: Input) -> Matmul {
        Matmul { role, hf, input }
    }

    /// Attention matmuls, the router and the stacked experts (`experts`: the
    /// per-expert prefix without its trailing dot).
    pub const fn matmuls(router: &'static str, experts: &'static str) -> [Matmul; 8] {
        let a = llama_layout::MATMULS;
        [
            a[0],
            a[1],
            a[2],
            a[3],
            mm(Role::FfnGateInp, router, Input::FfnIn),
            mm(Role::FfnGateExps, experts, Input::FfnInExps),
            mm(Role::FfnUpExps, experts, Input::FfnInExps),
            mm(Role::FfnDownExps, experts, Input::FfnDown),
        ]
    }

    /// [`matmuls`] of the Qwen layout with Qwen2-MoE's shared expert.
    pub const MATMULS_SHARED: [Matmul; 12] = {
        let m = matmuls("mlp.gate", "mlp.experts");
        [
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            m[6],
            m[7],
            mm(
                Role::FfnGateInpShexp,
                "mlp.shared_expert_gate",
                Input::FfnIn,
            ),
            mm(
                Role::FfnGateShexp,
                "mlp.shared_expert.gate_proj",
                Input::FfnIn,
            ),
            mm(Role::FfnUpShexp, "mlp.shared_expert.up_proj", Input::FfnIn),
            mm(
                Role::FfnDownShexp,
                "mlp.shared_expert.down_proj",
                Input::FfnDownShexp,
            ),
        ]
    };

    /// The block: the Llama block's attention with a mixture as its FFN.
    pub const fn block(
        qk_norm: bool,
        qkv_bias_always: bool,
        norm_top_k: NormTopK,
        shared_expert: bool,
        matmuls: &'static [Matmul],
    ) -> BlockSpec {
        BlockSpec {
            ffn: Ffn::Moe {
                act: Act::Silu,
                norm_top_k,
                shared_expert,
                gating: Gating::Softmax,
            },
            matmuls,
            ..llama_layout::block(qk_norm, qkv_bias_always)
        }
    }
}
