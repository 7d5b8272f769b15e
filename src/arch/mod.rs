//! Architecture tables: one [`ArchSpec`] per family (`src/arch/<family>.rs`)
//! registered in [`ARCHS`], and what the converter derives from them: HF
//! tensor names to llama.cpp's GGUF names, the `{arch}.*` hyperparameter
//! keys, the per-tensor transforms (the Llama Q/K row permutation) in both
//! directions. Knowledge is data here, as in gguf-py's `constants.py` /
//! `tensor_mapping.py`: no family is named outside this module.

pub mod bert;
pub mod gemma2;
pub mod gemma3;
pub mod gpt2;
pub mod gpt_oss;
pub mod gptneox;
pub mod granite;
pub mod llama;
pub mod moe;
pub mod olmo2;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod smollm3;
pub mod spec;
pub mod stablelm;
pub mod starcoder2;

pub use spec::*;

use crate::gguf::{Metadata, Value};
use crate::hf::{Config, RopeScaling};

/// Every family laquant converts, in the order its messages list them.
pub static ARCHS: &[&ArchSpec] = &[
    &llama::LLAMA,
    &llama::MISTRAL,
    &qwen2::QWEN2,
    &qwen3::QWEN3,
    &granite::GRANITE,
    &moe::QWEN3MOE,
    &moe::QWEN2MOE,
    &moe::MIXTRAL,
    &moe::OLMOE,
    &gemma2::GEMMA2,
    &gemma3::GEMMA3,
    &olmo2::OLMO2,
    &smollm3::SMOLLM3,
    &stablelm::STABLELM,
    &gptneox::GPTNEOX,
    &phi3::PHI3,
    &gpt2::GPT2,
    &starcoder2::STARCODER2,
    &gpt_oss::GPT_OSS,
    &bert::BERT,
    &bert::XLMR,
];

/// Encoder-only classes `convert_hf_to_gguf.py` converts that laquant refuses,
/// and why.
pub const ENCODER_ONLY: &[&str] = &[
    "BertForSequenceClassification",
    "RobertaModel",
    "NomicBertModel",
    "ModernBertModel",
];

/// Why an encoder-only model is refused.
pub const ENCODER_ONLY_REASON: &str = "it is an encoder-only model, and of those laquant \
     converts only BertModel, BertForMaskedLM, XLMRobertaModel and \
     XLMRobertaForSequenceClassification so far (to every output type, calibrated and measured \
     by their own encoder pass: an encoder has no next-token distribution, and laquant's decoder \
     pass does not run bidirectional attention)";

/// A tensor name's new name, `None` to drop the tensor.
pub type Rename = fn(&str) -> Option<String>;

/// The renames (`None`: dropped) a family's `filter_tensors` applies to every
/// HF tensor name before mapping it, if it has its own.
pub fn hf_rename(spec: &ArchSpec) -> Option<Rename> {
    let own: [(&ArchSpec, Rename); 2] = [
        (&bert::BERT, bert::bert_name),
        (&bert::XLMR, bert::xlmr_name),
    ];
    own.into_iter()
        .find(|(s, _)| std::ptr::eq(*s, spec))
        .map(|(_, f)| f)
}

/// How the checkpoint reader presents a family's stored tensors as its
/// converter reads them (gpt-oss's pre-stacked experts), if it does.
pub type Present = fn(&mut crate::hf::safetensors::Shards) -> Result<(), crate::hf::HfError>;

/// The family's [`Present`], if it has one.
pub fn hf_views(spec: &ArchSpec) -> Option<Present> {
    std::ptr::eq(spec, &gpt_oss::GPT_OSS).then_some(gpt_oss::present as Present)
}

/// The rows the converter drops from the front of the position embeddings
/// ([`TransformRule::SkipPaddingPositions`]: `pad_token_id + 1`), when the
/// family does so and `config.json` gives `pad_token_id`.
pub fn position_offset(spec: &ArchSpec, pad_token_id: Option<u64>) -> Option<u64> {
    let skips = spec
        .tensors
        .global
        .iter()
        .any(|r| r.transform == TransformRule::SkipPaddingPositions);
    pad_token_id.filter(|_| skips).map(|p| p + 1)
}

/// The spec converting HF class `hf_class`.
pub fn by_hf_class(hf_class: &str) -> Option<&'static ArchSpec> {
    ARCHS
        .iter()
        .copied()
        .find(|a| a.hf_classes.contains(&hf_class))
}

/// Every HF class laquant converts.
pub fn hf_classes() -> impl Iterator<Item = &'static str> {
    ARCHS.iter().flat_map(|a| a.hf_classes.iter().copied())
}

/// How a tensor's rows are rearranged on the way to GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Rows as stored.
    None,
    /// llama.cpp's `permute(w, n_head, n_head_kv)`: HF rotate-half rows to interleaved pairs.
    PermuteHeads {
        /// Heads of the tensor (Q's or K/V's count).
        n_head: usize,
    },
    /// `w + 1` on every value (in f32; see [`TransformRule::AddOne`]).
    AddOne,
    /// A fused QKV's rows from `[q, k, v]` per head (of `n_head` heads) to
    /// `[Q; K; V]`.
    QkvPerHead {
        /// The heads.
        n_head: usize,
    },
}

impl Transform {
    /// The rule under `cfg`'s head counts.
    pub fn for_config(rule: TransformRule, cfg: &Config) -> Transform {
        match rule {
            TransformRule::None => Transform::None,
            TransformRule::PermuteHeads(Heads::Attention) => Transform::PermuteHeads {
                n_head: cfg.num_attention_heads,
            },
            TransformRule::PermuteHeads(Heads::KeyValue) => Transform::PermuteHeads {
                n_head: cfg.num_key_value_heads,
            },
            TransformRule::AddOne => Transform::AddOne,
            TransformRule::QkvPerHead => Transform::QkvPerHead {
                n_head: cfg.num_attention_heads,
            },
            // The checkpoint reader transposes it as it reads it
            // ([`stored_transposed`]).
            TransformRule::Transpose => Transform::None,
            // The checkpoint reader slices it as it opens the checkpoint.
            TransformRule::SkipPaddingPositions => Transform::None,
        }
    }

    /// HF layout to GGUF layout, on a row-major `[rows, cols]` tensor (cols = 1 for biases).
    pub fn apply(self, data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        apply_transform(self, data, rows, cols)
    }

    /// GGUF layout back to HF layout: [`Transform::apply`]'s inverse.
    pub fn invert(self, data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        match self {
            Transform::AddOne => data.iter().map(|v| v - 1.0).collect(),
            _ => move_rows(self, data, rows, cols, true),
        }
    }

    /// The GGUF row (of a tensor of `rows` rows) holding HF row `r`: where
    /// [`Transform::apply`] moves it; `r` for transforms that
    /// move no rows.
    pub fn stored_row(self, r: usize, rows: usize) -> usize {
        match self {
            Transform::None | Transform::AddOne => r,
            Transform::PermuteHeads { n_head } => {
                // HF row (h, j, i) is GGUF row (h, i, j).
                let group = rows / n_head.max(1);
                let half = group / 2;
                if half == 0 {
                    return r;
                }
                let (h, l) = (r / group, r % group);
                let (j, i) = (l / half, l % half);
                h * group + i * 2 + j
            }
            Transform::QkvPerHead { n_head } => {
                // HF row (head, part, i) is GGUF row (part, head, i).
                let part_rows = rows / 3;
                let d = part_rows / n_head.max(1);
                if d == 0 {
                    return r;
                }
                let (head, within) = (r / (3 * d), r % (3 * d));
                let (part, i) = (within / d, within % d);
                part * part_rows + head * d + i
            }
        }
    }

    /// Whether the transform moves rows only (values unchanged).
    pub fn moves_rows_only(self) -> bool {
        !matches!(self, Transform::AddOne)
    }
}

/// What a tensor is, for type policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The token embedding (`token_embd`).
    TokenEmbd,
    /// Learned absolute positions (`position_embd`, [`Positions::Learned`]).
    PosEmbd,
    /// An encoder's token type (segment) embeddings and its embeddings' norm.
    TokenTypes,
    /// The embeddings' norm (`token_embd_norm`).
    TokenEmbdNorm,
    /// An encoder's post-LayerNorms ([`Residual::PostLayerNorm`]).
    AttnOutNorm,
    /// The FFN's post-LayerNorm (`layer_output_norm`).
    LayerOutNorm,
    /// A sequence classifier's dense layer and its output projection (an
    /// XLM-R reranker's `classifier.dense`, `classifier.out_proj`).
    Cls,
    /// The classifier's output projection (`cls.output`).
    ClsOut,
    /// The output head (`output`).
    Output,
    /// The final norm (`output_norm`).
    OutputNorm,
    /// Llama 3's RoPE frequency factors (`rope_freqs`).
    RopeFreqs,
    /// LongRoPE's long factors (`rope_factors_long`, generated from the config).
    RopeFactorsLong,
    /// LongRoPE's short factors (`rope_factors_short`).
    RopeFactorsShort,
    /// The attention's input norm (`attn_norm`).
    AttnNorm,
    /// The query projection (`attn_q`).
    AttnQ,
    /// The key projection (`attn_k`).
    AttnK,
    /// The value projection (`attn_v`).
    AttnV,
    /// The attention's output projection (`attn_output`).
    AttnOutput,
    /// Fused Q, K and V (`attn_qkv`).
    AttnQkv,
    /// The per-head query norm (`attn_q_norm`).
    AttnQNorm,
    /// The per-head key norm (`attn_k_norm`).
    AttnKNorm,
    /// The attention's output norm, sandwich layout (`post_attention_norm`).
    AttnPostNorm,
    /// The FFN's input norm (`ffn_norm`).
    FfnNorm,
    /// The FFN's gate projection (`ffn_gate`).
    FfnGate,
    /// The FFN's up projection (`ffn_up`).
    FfnUp,
    /// The FFN's down projection (`ffn_down`).
    FfnDown,
    /// A mixture's router.
    FfnGateInp,
    /// A mixture's experts, stacked `[n_expert, rows, cols]`: gate (`ffn_gate_exps`).
    FfnGateExps,
    /// Up (`ffn_up_exps`).
    FfnUpExps,
    /// Down (`ffn_down_exps`).
    FfnDownExps,
    /// A mixture's shared expert (Qwen2-MoE): gate (`ffn_gate_shexp`).
    FfnGateShexp,
    /// Its up projection (`ffn_up_shexp`).
    FfnUpShexp,
    /// Its down projection (`ffn_down_shexp`).
    FfnDownShexp,
    /// Its gate's scalar weight per token (`ffn_gate_inp_shexp`).
    FfnGateInpShexp,
    /// The FFN's output norm, sandwich layout (`post_ffw_norm`).
    FfnPostNorm,
    /// Per-head attention sinks (gpt-oss's `attn_sinks`).
    AttnSinks,
}

impl Role {
    /// The GGUF name stem (after `blk.N.` for per-layer tensors).
    pub fn gguf_stem(self) -> &'static str {
        match self {
            Role::TokenEmbd => "token_embd",
            Role::PosEmbd => "position_embd",
            Role::TokenTypes => "token_types",
            Role::TokenEmbdNorm => "token_embd_norm",
            Role::AttnOutNorm => "attn_output_norm",
            Role::LayerOutNorm => "layer_output_norm",
            Role::Cls => "cls",
            Role::ClsOut => "cls.output",
            Role::Output => "output",
            Role::OutputNorm => "output_norm",
            Role::RopeFreqs => "rope_freqs",
            Role::RopeFactorsLong => "rope_factors_long",
            Role::RopeFactorsShort => "rope_factors_short",
            Role::AttnNorm => "attn_norm",
            Role::AttnQ => "attn_q",
            Role::AttnK => "attn_k",
            Role::AttnV => "attn_v",
            Role::AttnOutput => "attn_output",
            Role::AttnQkv => "attn_qkv",
            Role::AttnQNorm => "attn_q_norm",
            Role::AttnKNorm => "attn_k_norm",
            Role::AttnPostNorm => "post_attention_norm",
            Role::FfnNorm => "ffn_norm",
            Role::FfnPostNorm => "post_ffw_norm",
            Role::FfnGate => "ffn_gate",
            Role::FfnUp => "ffn_up",
            Role::FfnDown => "ffn_down",
            Role::FfnGateInp => "ffn_gate_inp",
            Role::FfnGateExps => "ffn_gate_exps",
            Role::FfnUpExps => "ffn_up_exps",
            Role::FfnDownExps => "ffn_down_exps",
            Role::FfnGateShexp => "ffn_gate_shexp",
            Role::FfnUpShexp => "ffn_up_shexp",
            Role::FfnDownShexp => "ffn_down_shexp",
            Role::FfnGateInpShexp => "ffn_gate_inp_shexp",
            Role::AttnSinks => "attn_sinks",
        }
    }

    /// Whether this is a matrix multiplied by activations (an imatrix target).
    pub fn is_matmul(self) -> bool {
        matches!(
            self,
            Role::Output
                | Role::AttnQ
                | Role::AttnK
                | Role::AttnV
                | Role::AttnOutput
                | Role::AttnQkv
                | Role::FfnGate
                | Role::FfnUp
                | Role::FfnDown
                | Role::FfnGateInp
                | Role::FfnGateExps
                | Role::FfnUpExps
                | Role::FfnDownExps
                | Role::FfnGateShexp
                | Role::FfnUpShexp
                | Role::FfnDownShexp
                | Role::FfnGateInpShexp
        )
    }

    /// Whether this is a mixture's stacked expert tensor (3-D in GGUF).
    pub fn is_experts(self) -> bool {
        matches!(
            self,
            Role::FfnGateExps | Role::FfnUpExps | Role::FfnDownExps
        )
    }
}

/// The roles of the tensors the converter generates from the config rather than
/// maps from a HF tensor ([`Config::generated_tensors`]).
pub const GENERATED_ROLES: &[Role] = &[
    Role::RopeFreqs,
    Role::RopeFactorsLong,
    Role::RopeFactorsShort,
];

/// Every role a GGUF of architecture `gguf_arch` (`general.architecture`) can
/// hold a tensor of: the global, per-layer and stacked-expert roles of the
/// tensor tables of the specs written as that architecture (Mixtral is a
/// `llama`), then [`GENERATED_ROLES`]; empty for an architecture no spec writes.
pub fn gguf_roles(gguf_arch: &str) -> Vec<Role> {
    let mut roles: Vec<Role> = Vec::new();
    let specs = ARCHS.iter().filter(|s| s.gguf_arch == gguf_arch);
    if specs.clone().next().is_none() {
        return roles;
    }
    let tables = specs.flat_map(|s| {
        let t = &s.tensors;
        let stacked = t.experts.map_or(&[][..], |x| x.stacked).iter();
        (t.global.iter().chain(t.layer).map(|r| r.role)).chain(stacked.map(|e| e.1))
    });
    for r in tables.chain(GENERATED_ROLES.iter().copied()) {
        if !roles.contains(&r) {
            roles.push(r);
        }
    }
    roles
}

/// The HF weights llama.cpp cannot load a model without (`llm_load_tensors`
/// requires them; `lm_head` is optional there, since it falls back to the token
/// embeddings): the spec's required global and per-layer tensors. A checkpoint
/// missing one would convert into a file llama.cpp refuses, so the converter
/// checks this list first.
pub fn required_tensors(cfg: &Config) -> Vec<String> {
    let t = &cfg.arch.tensors;
    let mut v: Vec<String> = t
        .global
        .iter()
        .filter(|r| r.required)
        .map(|r| format!("{}.weight", r.hf))
        .collect();
    for l in 0..cfg.num_hidden_layers {
        for r in t.layer.iter().filter(|r| r.required) {
            v.push(t.layer_tensor(l, r.hf, "weight"));
        }
        for &(_, role) in t.experts.map_or(&[][..], |x| x.stacked) {
            v.extend(expert_names(cfg, l, role));
        }
    }
    v
}

/// Whether HF tensor `hf_name` is stored transposed (a `Conv1D` weight,
/// [`TransformRule::Transpose`]): the checkpoint reader then transposes it
/// on each read, presenting it as an `nn.Linear` weight would be.
pub fn stored_transposed(cfg: &Config, hf_name: &str) -> bool {
    let t = &cfg.arch.tensors;
    let Some(base) = hf_name.strip_suffix(".weight") else {
        return false;
    };
    let sub = base
        .strip_prefix(t.layer_prefix)
        .and_then(|rest| rest.split_once('.'))
        .map(|(_, sub)| sub);
    t.global
        .iter()
        .filter(|r| r.hf == base)
        .chain(t.layer.iter().filter(|r| Some(r.hf) == sub))
        .any(|r| r.transform == TransformRule::Transpose)
}

/// One HF tensor mapped to GGUF.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The GGUF name.
    pub gguf_name: String,
    /// What it is.
    pub role: Role,
    /// Its layer, for a block's tensors.
    pub layer: Option<usize>,
    /// Whether it is a bias (`.bias`), not a weight.
    pub is_bias: bool,
    /// What converting it takes.
    pub transform: Transform,
    /// For one expert's tensor of a mixture: the expert; `gguf_name` is then
    /// the stacked tensor it is a slice of.
    pub expert: Option<usize>,
}

/// An HF tensor name that does not map.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MapError {
    /// No rule of the family matches it (the tensor, the family's GGUF architecture).
    #[error("tensor {0}: laquant does not know where it goes in a {1} GGUF")]
    Unknown(String, &'static str),
    /// Its layer index is out of range.
    #[error("tensor {name}: layer {layer} is beyond num_hidden_layers ({n})")]
    Layer {
        /// The tensor.
        name: String,
        /// Its layer index.
        layer: usize,
        /// The config's layer count.
        n: usize,
    },
    /// Its expert index is out of range.
    #[error("tensor {name}: expert {expert} is beyond the config's expert count ({n})")]
    Expert {
        /// The tensor.
        name: String,
        /// Its expert index.
        expert: usize,
        /// The config's expert count.
        n: usize,
    },
}

/// Maps an HF tensor name; `Ok(None)` for tensors the converter drops.
pub fn map_name(cfg: &Config, hf_name: &str) -> Result<Option<Mapped>, MapError> {
    let spec = cfg.arch;
    let rules = &spec.tensors;
    if rules.skipped_suffixes.iter().any(|s| hf_name.ends_with(s)) {
        return Ok(None);
    }
    let unknown = || MapError::Unknown(hf_name.to_string(), spec.gguf_arch);
    let (base, is_bias) = if let Some(b) = hf_name.strip_suffix(".weight") {
        (b, false)
    } else if let Some(b) = hf_name.strip_suffix(".bias") {
        (b, true)
    } else {
        return Err(unknown());
    };
    let (rule, layer) = if let Some(r) = rules.global.iter().find(|g| g.hf == base) {
        (r, None)
    } else if let Some(rest) = base.strip_prefix(rules.layer_prefix) {
        let (num, sub) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = num.parse().map_err(|_| unknown())?;
        if layer >= cfg.num_hidden_layers {
            return Err(MapError::Layer {
                name: hf_name.into(),
                layer,
                n: cfg.num_hidden_layers,
            });
        }
        if let Some(x) = &rules.experts {
            if let Some(m) = map_expert(cfg, hf_name, x, layer, sub, is_bias)? {
                return Ok(Some(m));
            }
        }
        let r = rules
            .layer
            .iter()
            .find(|l| l.hf == sub)
            .ok_or_else(unknown)?;
        (r, Some(layer))
    } else {
        return Err(unknown());
    };
    let allowed = !is_bias
        || match rule.bias {
            BiasRule::Never => false,
            BiasRule::IfAttentionBias => cfg.attention_bias,
            BiasRule::Always => true,
        };
    if !allowed {
        return Err(unknown());
    }
    let role = rule.role;
    let transform = Transform::for_config(rule.transform, cfg);
    let suffix = if is_bias { "bias" } else { "weight" };
    let gguf_name = match layer {
        Some(l) => format!("blk.{l}.{}.{suffix}", role.gguf_stem()),
        None => format!("{}.{suffix}", role.gguf_stem()),
    };
    Ok(Some(Mapped {
        gguf_name,
        role,
        layer,
        is_bias,
        transform,
        expert: None,
    }))
}

/// One expert's tensor (`sub`: the name after `{layer_prefix}{layer}.`,
/// without `.weight`), or `None` when `sub` is not under the experts' prefix.
fn map_expert(
    cfg: &Config,
    hf_name: &str,
    x: &ExpertRules,
    layer: usize,
    sub: &str,
    is_bias: bool,
) -> Result<Option<Mapped>, MapError> {
    let Some(rest) = sub.strip_prefix(x.prefix) else {
        return Ok(None);
    };
    let unknown = || MapError::Unknown(hf_name.to_string(), cfg.arch.gguf_arch);
    let (num, base) = rest.split_once('.').ok_or_else(unknown)?;
    let expert: usize = num.parse().map_err(|_| unknown())?;
    let &(_, role) = x
        .stacked
        .iter()
        .find(|(b, _)| *b == base)
        .ok_or_else(unknown)?;
    if is_bias {
        return Err(unknown());
    }
    let n = cfg.n_expert.unwrap_or(0);
    if expert >= n {
        return Err(MapError::Expert {
            name: hf_name.into(),
            expert,
            n,
        });
    }
    Ok(Some(Mapped {
        gguf_name: format!("blk.{layer}.{}.weight", role.gguf_stem()),
        role,
        layer: Some(layer),
        is_bias: false,
        transform: Transform::None,
        expert: Some(expert),
    }))
}

/// The HF names of the per-expert tensors stacked into layer `layer`'s tensor
/// of role `role`, expert by expert (empty when the family has no experts).
pub fn expert_names(cfg: &Config, layer: usize, role: Role) -> Vec<String> {
    let t = &cfg.arch.tensors;
    let Some(x) = &t.experts else {
        return Vec::new();
    };
    let Some((base, _)) = x.stacked.iter().find(|(_, r)| *r == role) else {
        return Vec::new();
    };
    (0..cfg.n_expert.unwrap_or(0))
        .map(|e| t.layer_tensor(layer, &format!("{}{e}.{base}", x.prefix), "weight"))
        .collect()
}

/// The HF shape (torch order) a mapped tensor must have under `cfg` (one
/// expert's, for an expert's tensor).
pub fn expected_shape(cfg: &Config, m: &Mapped) -> Vec<usize> {
    let h = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let ff = cfg.intermediate_size;
    let ff_exp = cfg.moe_intermediate_size.unwrap_or(ff);
    let ff_sh = cfg.shared_expert_intermediate_size.unwrap_or(ff);
    let rows = match m.role {
        Role::TokenEmbd | Role::Output => return vec![cfg.vocab_size, h],
        Role::PosEmbd => {
            return vec![cfg.max_position_embeddings.unwrap_or(0) as usize, h];
        }
        Role::TokenTypes => return vec![cfg.u32_param("type_vocab_size").unwrap_or(1) as usize, h],
        Role::TokenEmbdNorm | Role::AttnOutNorm | Role::LayerOutNorm => return vec![h],
        Role::Cls => (h, h),
        Role::ClsOut => (cfg.classifier_labels.len(), h),
        Role::OutputNorm
        | Role::AttnNorm
        | Role::FfnNorm
        | Role::AttnPostNorm
        | Role::FfnPostNorm => return vec![h],
        Role::AttnQNorm | Role::AttnKNorm => {
            return vec![match (cfg.arch.block.attention.qk_norm, m.role) {
                (QkNorm::Whole, Role::AttnQNorm) => q,
                (QkNorm::Whole, _) => kv,
                _ => cfg.head_dim,
            }]
        }
        Role::RopeFreqs => return vec![cfg.head_dim / 2],
        Role::RopeFactorsLong | Role::RopeFactorsShort => return vec![cfg.rope_dim / 2],
        Role::AttnQ => (q, h),
        Role::AttnK | Role::AttnV => (kv, h),
        Role::AttnOutput => (h, q),
        Role::AttnQkv => (q + 2 * kv, h),
        Role::FfnUp if matches!(cfg.arch.block.ffn, Ffn::GatedFused { .. }) => (2 * ff, h),
        Role::FfnGate | Role::FfnUp => (ff, h),
        Role::FfnDown => (h, ff),
        Role::AttnSinks => return vec![cfg.num_attention_heads],
        Role::FfnGateInp => (cfg.n_expert.unwrap_or(0), h),
        Role::FfnGateExps | Role::FfnUpExps => (ff_exp, h),
        Role::FfnDownExps => (h, ff_exp),
        Role::FfnGateShexp | Role::FfnUpShexp => (ff_sh, h),
        Role::FfnDownShexp => (h, ff_sh),
        Role::FfnGateInpShexp => (1, h),
    };
    // Experts stored stacked (gpt-oss): one tensor `[n_expert, rows, cols]`.
    let stacked = (m.role.is_experts() && m.expert.is_none()).then(|| cfg.n_expert.unwrap_or(0));
    match (stacked, m.is_bias) {
        (None, true) => vec![rows.0],
        (None, false) => vec![rows.0, rows.1],
        (Some(n), true) => vec![n, rows.0],
        (Some(n), false) => vec![n, rows.0, rows.1],
    }
}

/// Applies a transform to a row-major [rows, cols] tensor (cols = 1 for biases).
pub fn apply_transform(t: Transform, data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    match t {
        Transform::AddOne => data.iter().map(|v| v + 1.0).collect(),
        _ => move_rows(t, data, rows, cols, false),
    }
}

/// The rows of `data` moved as `t` moves them (`back`: the other way).
fn move_rows(t: Transform, data: &[f32], rows: usize, cols: usize, back: bool) -> Vec<f32> {
    match t {
        Transform::None | Transform::AddOne => data.to_vec(),
        Transform::PermuteHeads { n_head } => {
            // reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2): GGUF row
            // (h, i, j) is HF row (h, j, i).
            let half = rows / n_head / 2;
            let mut out = vec![0f32; data.len()];
            for h in 0..n_head {
                for i in 0..half {
                    for j in 0..2 {
                        let gguf = h * 2 * half + i * 2 + j;
                        let hf = h * 2 * half + j * half + i;
                        let (dst, src) = if back { (hf, gguf) } else { (gguf, hf) };
                        out[dst * cols..(dst + 1) * cols]
                            .copy_from_slice(&data[src * cols..(src + 1) * cols]);
                    }
                }
            }
            out
        }
        Transform::QkvPerHead { n_head } => {
            let mut out = vec![0f32; data.len()];
            for gguf in 0..rows {
                let hf = qkv_per_head_source_row(gguf, rows, n_head);
                let (dst, src) = if back { (hf, gguf) } else { (gguf, hf) };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
            out
        }
    }
}

/// The HF row of GGUF row `r` of a fused QKV of `rows` rows over `n_head`
/// heads ([`Transform::QkvPerHead`]): GGUF row `(part, head, i)` is HF row
/// `(head, part, i)`.
pub fn qkv_per_head_source_row(r: usize, rows: usize, n_head: usize) -> usize {
    let part_rows = rows / 3;
    let d = part_rows / n_head.max(1);
    let (part, within) = (r / part_rows, r % part_rows);
    let (head, i) = (within / d, within % d);
    head * 3 * d + part * d + i
}

/// The `{arch}.*` hyperparameters and `general.file_type`, as llama.cpp's
/// converter writes them: a family's own key layout (`layout_hparam`) or
/// TextModel.set_gguf_parameters's keys plus the family's additions
/// (`text_model_hparams`).
pub fn hparams_metadata(cfg: &Config, file_type: u32) -> Metadata {
    match cfg.arch.hparams.layout {
        Some(layout) => layout
            .iter()
            .filter_map(|hp| layout_hparam(cfg, hp, file_type))
            .collect(),
        None => text_model_hparams(cfg, file_type),
    }
}

/// Where a `{arch}.*` key that [`hparams_metadata`] writes comes from in
/// `config.json`: what reads a GGUF file's hyperparameters back into a
/// `config.json` (a checkpoint rebuilt from the file) takes each key's value
/// from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HparamSource {
    /// An integer of this config key (0 written for an absent one:
    /// [`Hp::SlidingWindowOrZero`]).
    Count(&'static str),
    /// A number of this config key.
    Number(&'static str),
    /// A boolean of this config key.
    Flag(&'static str),
}

impl HparamSource {
    /// The `config.json` key.
    pub fn config_key(self) -> &'static str {
        match self {
            HparamSource::Count(k) | HparamSource::Number(k) | HparamSource::Flag(k) => k,
        }
    }
}

/// The `{arch}.*` keys (without the prefix) [`hparams_metadata`] writes from
/// one `config.json` key each, whatever the family, with that key (under the
/// name [`crate::hf::Config`] reads first). The rest it writes are derived
/// (`vocab_size`, `rope.dimension_count`, `attention.value_length`, the
/// `rope.scaling.*` keys) or the family's own ([`hparam_sources`]).
pub const HPARAM_SOURCES: &[(&str, HparamSource)] = &[
    (
        "context_length",
        HparamSource::Count("max_position_embeddings"),
    ),
    ("embedding_length", HparamSource::Count("hidden_size")),
    ("block_count", HparamSource::Count("num_hidden_layers")),
    (
        "feed_forward_length",
        HparamSource::Count("intermediate_size"),
    ),
    (
        "attention.head_count",
        HparamSource::Count("num_attention_heads"),
    ),
    (
        "attention.head_count_kv",
        HparamSource::Count("num_key_value_heads"),
    ),
    ("attention.key_length", HparamSource::Count("head_dim")),
    ("rope.freq_base", HparamSource::Number("rope_theta")),
    (
        "attention.layer_norm_rms_epsilon",
        HparamSource::Number("rms_norm_eps"),
    ),
    (
        "attention.layer_norm_epsilon",
        HparamSource::Number("rms_norm_eps"),
    ),
    (
        "use_parallel_residual",
        HparamSource::Flag("use_parallel_residual"),
    ),
    ("expert_count", HparamSource::Count("num_experts")),
    (
        "expert_used_count",
        HparamSource::Count("num_experts_per_tok"),
    ),
    (
        "attention.sliding_window",
        HparamSource::Count("sliding_window"),
    ),
    (
        "rope.scaling.original_context_length",
        HparamSource::Count("original_max_position_embeddings"),
    ),
];

/// The `{arch}.*` keys `spec`'s family writes from a `config.json` key,
/// with that key: its own (the extra f32 and u32 keys, the sliding layers'
/// RoPE base), then [`HPARAM_SOURCES`].
pub fn hparam_sources(spec: &ArchSpec) -> Vec<(String, HparamSource)> {
    let h = &spec.hparams;
    let own = h
        .extra_f32
        .iter()
        .map(|&(c, g)| (g.to_string(), HparamSource::Number(c)))
        .chain(
            h.extra_u32
                .iter()
                .map(|&(c, g)| (g.to_string(), HparamSource::Count(c))),
        )
        .chain(
            h.rope_freq_base_swa
                .map(|c| ("rope.freq_base_swa".to_string(), HparamSource::Number(c))),
        );
    own.chain(HPARAM_SOURCES.iter().map(|&(g, s)| (g.to_string(), s)))
        .collect()
}

/// The `config.json` keys `spec`'s forward pass reads beyond the shape and
/// RoPE (constant factors, caps, the query scalar, the sliding window and
/// its RoPE base).
pub fn block_config_keys(spec: &ArchSpec) -> Vec<&'static str> {
    let b = &spec.block;
    let s = b.scales;
    let sliding = b.attention.sliding;
    [
        s.embedding,
        s.attention,
        s.residual,
        s.logit_divisor,
        s.final_softcap,
        b.attention.query_scale.map(|q| q.key),
        b.attention.softcap,
        sliding.map(|w| w.window),
        sliding.and_then(|w| w.rope_base),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The key and value of hyperparameter `hp` of a family's own layout; `None`
/// when the config has no value for it.
fn layout_hparam(cfg: &Config, hp: &Hp, file_type: u32) -> Option<(String, Value)> {
    let a = cfg.arch.gguf_arch;
    let k = |s: &str| format!("{a}.{s}");
    let u = |key: &str, v: usize| Some((k(key), Value::U32(v as u32)));
    match hp {
        Hp::ContextLength => cfg
            .max_position_embeddings
            .and_then(|c| u("context_length", c as usize)),
        Hp::EmbeddingLength => u("embedding_length", cfg.hidden_size),
        Hp::BlockCount => u("block_count", cfg.num_hidden_layers),
        Hp::FeedForwardLength => u("feed_forward_length", cfg.intermediate_size),
        Hp::RopeDimensionCount => u("rope.dimension_count", cfg.rope_dim),
        Hp::HeadCount => u("attention.head_count", cfg.num_attention_heads),
        Hp::HeadCountKv => u("attention.head_count_kv", cfg.num_key_value_heads),
        Hp::ParallelResidual => Some((
            k("use_parallel_residual"),
            Value::Bool(cfg.parallel_residual),
        )),
        Hp::LayerNormEps => Some((
            k("attention.layer_norm_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        )),
        Hp::FileType => Some(("general.file_type".into(), Value::U32(file_type))),
        Hp::RopeScalingOrigCtx => cfg
            .u32_param("original_max_position_embeddings")
            .and_then(|c| u("rope.scaling.original_context_length", c as usize)),
        Hp::LayerNormRmsEps => Some((
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        )),
        Hp::RopeFreqBase => Some((k("rope.freq_base"), Value::F32(cfg.rope_theta as f32))),
        Hp::RopeScalingAttnFactor => match &cfg.rope_scaling {
            Some(RopeScaling::LongRope { attn_factor, .. }) => {
                Some((k("rope.scaling.attn_factor"), Value::F32(*attn_factor)))
            }
            _ => None,
        },
        Hp::SlidingWindowOrZero => u(
            "attention.sliding_window",
            cfg.u32_param("sliding_window").unwrap_or(0) as usize,
        ),
        Hp::FeedForwardFourfold => u("feed_forward_length", 4 * cfg.hidden_size),
        Hp::NonCausal => Some((k("attention.causal"), Value::Bool(false))),
        Hp::PoolingType => cfg.pooling_type.and_then(|p| u("pooling_type", p as usize)),
        Hp::ClassifierOutputLabels => {
            let labels = cfg.classifier_output_labels()?;
            Some((k("classifier.output_labels"), Value::strings(labels)))
        }
    }
}

/// TextModel.set_gguf_parameters's keys in its order (the shape, RoPE
/// scaling and base, norm epsilon, experts, head size, file type), then the
/// family's additions its spec declares.
fn text_model_hparams(cfg: &Config, file_type: u32) -> Metadata {
    let spec = cfg.arch;
    let a = spec.gguf_arch;
    let k = |s: &str| format!("{a}.{s}");
    let u = |key: &str, v: usize| (k(key), Value::U32(v as u32));
    let mut m: Metadata = vec![u("block_count", cfg.num_hidden_layers)];
    if let Some(ctx) = cfg.max_position_embeddings {
        m.push(u("context_length", ctx as usize));
    }
    m.push(u("embedding_length", cfg.hidden_size));
    m.push(u("feed_forward_length", cfg.intermediate_size));
    m.push(u("attention.head_count", cfg.num_attention_heads));
    m.push(u("attention.head_count_kv", cfg.num_key_value_heads));
    m.extend(rope_scaling_hparams(cfg));
    if spec.hparams.rope_freq_base {
        m.push((k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)));
    }
    if let Some(v) = spec
        .hparams
        .rope_freq_base_swa
        .and_then(|key| cfg.f32_param(key))
    {
        m.push((k("rope.freq_base_swa"), Value::F32(v)));
    }
    let eps = spec.hparams.rms_norm_eps_fixed.unwrap_or(cfg.rms_norm_eps);
    m.push((
        k("attention.layer_norm_rms_epsilon"),
        Value::F32(eps as f32),
    ));
    if let Some(n) = cfg.n_expert {
        m.push(u("expert_count", n));
    }
    if let Some(n) = cfg.n_expert_used {
        m.push(u("expert_used_count", n));
    }
    // convert_hf_to_gguf.py reads hparams through transformers' AutoConfig; some
    // config classes derive head_dim when config.json has none (`head_dim_always`).
    if cfg.head_dim_explicit || spec.hparams.head_dim_always {
        m.push(u("attention.key_length", cfg.head_dim));
        m.push(u("attention.value_length", cfg.head_dim));
    }
    m.push(("general.file_type".into(), Value::U32(file_type)));
    if spec.hparams.vocab_and_rope_dim {
        m.push(u("vocab_size", cfg.vocab_size));
        m.push(u("rope.dimension_count", cfg.head_dim));
    }
    for (key, gguf) in spec.hparams.extra_f32 {
        if let Some(v) = cfg.f32_param(key) {
            m.push((k(gguf), Value::F32(v)));
        }
    }
    for (key, gguf) in spec.hparams.extra_u32 {
        if let Some(v) = cfg.u32_param(key) {
            m.push((k(gguf), Value::U32(v)));
        }
    }
    m
}

/// The `rope.scaling.*` keys of the config's RoPE scaling (none for Llama
/// 3's and for factors given as such, which go into `rope_freqs.weight`).
fn rope_scaling_hparams(cfg: &Config) -> Metadata {
    let a = cfg.arch.gguf_arch;
    let k = |s: &str| format!("{a}.{s}");
    let mut m = Metadata::new();
    match &cfg.rope_scaling {
        Some(RopeScaling::Linear { factor }) => {
            m.push((k("rope.scaling.type"), Value::str("linear")));
            m.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
        }
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            extrapolation_factor,
            attention_factor,
            beta_fast,
            beta_slow,
        }) => {
            m.push((k("rope.scaling.type"), Value::str("yarn")));
            m.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
            m.push((
                k("rope.scaling.original_context_length"),
                Value::U32(*original_max_position_embeddings as u32),
            ));
            for (key, v) in [
                ("rope.scaling.yarn_ext_factor", extrapolation_factor),
                ("rope.scaling.yarn_attn_factor", attention_factor),
                ("rope.scaling.yarn_beta_fast", beta_fast),
                ("rope.scaling.yarn_beta_slow", beta_slow),
            ] {
                if let Some(v) = v {
                    m.push((k(key), Value::F32(*v as f32)));
                }
            }
        }
        Some(RopeScaling::LongRope { .. }) => {
            m.push((k("rope.scaling.type"), Value::str("longrope")));
        }
        Some(RopeScaling::Llama3 { .. } | RopeScaling::Frequencies { .. }) | None => {}
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(arch: &str) -> Config {
        Config::from_json(
            json!({"architectures": [arch], "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}),
            "config.json".into(),
        )
        .unwrap()
    }

    #[test]
    fn names_map_per_family() {
        let c = cfg("LlamaForCausalLM");
        let m = map_name(&c, "model.layers.1.self_attn.k_proj.weight")
            .unwrap()
            .unwrap();
        assert_eq!(m.gguf_name, "blk.1.attn_k.weight");
        assert_eq!(m.transform, Transform::PermuteHeads { n_head: 1 });
        assert!(map_name(&c, "model.layers.0.self_attn.q_norm.weight").is_err());
        assert!(map_name(&c, "model.layers.0.self_attn.q_proj.bias").is_err());
        assert!(map_name(&c, "model.layers.2.mlp.up_proj.weight").is_err());
        assert_eq!(
            map_name(&c, "model.layers.0.self_attn.rotary_emb.inv_freq").unwrap(),
            None
        );
        let q2 = cfg("Qwen2ForCausalLM");
        let m = map_name(&q2, "model.layers.0.self_attn.q_proj.bias")
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.gguf_name.as_str(), m.transform),
            ("blk.0.attn_q.bias", Transform::None)
        );
        let q3 = cfg("Qwen3ForCausalLM");
        assert_eq!(
            map_name(&q3, "model.layers.0.self_attn.k_norm.weight")
                .unwrap()
                .unwrap()
                .gguf_name,
            "blk.0.attn_k_norm.weight"
        );
    }

    /// Every registered spec is complete for what reads it: its HF classes
    /// belong to it alone, the layer function finds every matmul role it asks
    /// for and each matmul is a tensor of the spec's layer with the same role,
    /// the forward pass finds its global tensors, and norm/bias/transform
    /// rules name tensors the converter maps.
    /// `Act::SwigluOai` is only a mixture's experts' gate (gpt-oss).
    #[test]
    fn swiglu_oai_is_only_an_experts_gate() {
        // The forward pass computes `Act::SwigluOai` only as a gate
        // (`glu_in_place`); llama.cpp applies it only in build_moe_ffn.
        let mut found = 0;
        for spec in ARCHS {
            match spec.block.ffn {
                Ffn::Moe { act, .. } => found += usize::from(act == Act::SwigluOai),
                Ffn::Gated { act } | Ffn::GatedFused { act } | Ffn::Plain { act } => {
                    assert_ne!(act, Act::SwigluOai, "{}", spec.gguf_arch)
                }
            }
        }
        assert_eq!(found, 1, "gpt-oss's experts");
        assert!(matches!(
            gpt_oss::GPT_OSS.block.ffn,
            Ffn::Moe {
                act: Act::SwigluOai,
                ..
            }
        ));
    }

    #[test]
    fn registry_specs_are_complete() {
        let mut seen = std::collections::HashSet::new();
        for spec in ARCHS {
            for c in spec.hf_classes {
                assert!(seen.insert(*c), "{c} is in two specs");
                assert!(std::ptr::eq(by_hf_class(c).unwrap(), *spec));
                assert!(!ENCODER_ONLY.contains(c));
            }
            let b = &spec.block;
            let attn: &[Role] = match b.attention.kind {
                AttentionKind::CausalSeparateQkv | AttentionKind::BidirectionalSeparateQkv => {
                    &[Role::AttnQ, Role::AttnK, Role::AttnV, Role::AttnOutput]
                }
                AttentionKind::CausalFusedQkv { .. } => &[Role::AttnQkv, Role::AttnOutput],
            };
            let (ffn, stacked, mut inputs): (&[Role], &[Role], _) = match b.ffn {
                Ffn::Gated { .. } => (
                    &[Role::FfnGate, Role::FfnUp, Role::FfnDown],
                    &[],
                    vec![Input::AttnIn, Input::AttnOut, Input::FfnIn, Input::FfnDown],
                ),
                Ffn::Plain { .. } | Ffn::GatedFused { .. } => (
                    &[Role::FfnUp, Role::FfnDown],
                    &[],
                    vec![Input::AttnIn, Input::AttnOut, Input::FfnIn, Input::FfnDown],
                ),
                Ffn::Moe { shared_expert, .. } => {
                    // Per-expert tensors stacked by the converter, or stored
                    // stacked (gpt-oss: its layer rules name the stacked roles).
                    match spec.tensors.experts {
                        Some(x) => assert_eq!(x.stacked.len(), 3, "{}", spec.gguf_arch),
                        None => assert!(
                            spec.tensors
                                .layer
                                .iter()
                                .filter(|r| r.role.is_experts())
                                .count()
                                == 3,
                            "{}",
                            spec.gguf_arch
                        ),
                    }
                    let shared: &[Role] = if shared_expert {
                        &[
                            Role::FfnGateInp,
                            Role::FfnGateInpShexp,
                            Role::FfnGateShexp,
                            Role::FfnUpShexp,
                            Role::FfnDownShexp,
                        ]
                    } else {
                        &[Role::FfnGateInp]
                    };
                    let mut inputs = vec![
                        Input::AttnIn,
                        Input::AttnOut,
                        Input::FfnIn,
                        Input::FfnInExps,
                        Input::FfnDown,
                    ];
                    if shared_expert {
                        inputs.push(Input::FfnDownShexp);
                    }
                    (
                        shared,
                        &[Role::FfnGateExps, Role::FfnUpExps, Role::FfnDownExps],
                        inputs,
                    )
                }
            };
            if !matches!(b.ffn, Ffn::Moe { .. }) {
                assert!(spec.tensors.experts.is_none(), "{}", spec.gguf_arch);
            }
            for &role in stacked {
                // Each stacked role is one of the experts' tensors, and its
                // matmul names their prefix.
                let m = b.matmuls[b.index(role)];
                match spec.tensors.experts {
                    Some(x) => {
                        assert!(x.stacked.iter().any(|&(_, r)| r == role), "{role:?}");
                        assert_eq!(format!("{}.", m.hf), x.prefix, "{}", spec.gguf_arch);
                    }
                    None => assert!(
                        spec.tensors
                            .layer
                            .iter()
                            .any(|r| r.role == role && r.hf.starts_with(&format!("{}.", m.hf))),
                        "{role:?} of {}",
                        spec.gguf_arch
                    ),
                }
                assert!(role.is_matmul() && role.is_experts());
            }
            inputs.sort_by_key(|i| b.input_index(*i));
            for role in attn.iter().chain(ffn).copied() {
                let m = b.matmuls[b.index(role)];
                let rule = spec.tensors.layer.iter().find(|r| r.hf == m.hf);
                assert_eq!(
                    rule.map(|r| r.role),
                    Some(role),
                    "{}: {}",
                    spec.gguf_arch,
                    m.hf
                );
                assert!(role.is_matmul());
            }
            // An encoder: normed embeddings, post-LayerNorms, no head.
            let encoder = b.attention.kind == AttentionKind::BidirectionalSeparateQkv;
            assert_eq!(encoder, b.residual == Residual::PostLayerNorm);
            let last_norm = if encoder {
                Role::TokenEmbdNorm
            } else {
                Role::OutputNorm
            };
            for role in [Role::TokenEmbd, last_norm] {
                assert!(spec.tensors.global_name(role).is_some(), "{role:?}");
            }
            for role in [Role::AttnOutNorm, Role::LayerOutNorm] {
                assert_eq!(spec.tensors.layer_name(0, role).is_some(), encoder);
            }
            // No output head: the converter drops `lm_head` and llama.cpp
            // multiplies by the embeddings, whatever `tie_word_embeddings` says.
            if spec.tensors.global_name(Role::Output).is_none() && !encoder {
                assert!(
                    spec.tensors.skipped_suffixes.contains(&"lm_head.weight"),
                    "{}",
                    spec.gguf_arch
                );
            }
            // Unit-offset norms exactly when every norm tensor gets its +1.
            let norms: Vec<&TensorRule> = spec
                .tensors
                .global
                .iter()
                .chain(spec.tensors.layer)
                .filter(|r| {
                    matches!(
                        r.role,
                        Role::OutputNorm
                            | Role::TokenEmbdNorm
                            | Role::AttnOutNorm
                            | Role::LayerOutNorm
                            | Role::AttnNorm
                            | Role::FfnNorm
                            | Role::AttnPostNorm
                            | Role::FfnPostNorm
                            | Role::AttnQNorm
                            | Role::AttnKNorm
                    )
                })
                .collect();
            assert!(!norms.is_empty());
            for r in norms {
                assert_eq!(
                    r.transform == TransformRule::AddOne,
                    b.norm == Norm::RmsUnitOffset,
                    "{}: {}",
                    spec.gguf_arch,
                    r.hf
                );
            }
            // The FFN's pre-norm is `ffn_norm`, or (gpt-oss) the post-attention
            // norm standing in for it, never a post-norm the block also applies.
            let ffn_norm = b.ffn_norm;
            assert!(
                ffn_norm == Role::FfnNorm
                    || (ffn_norm == Role::AttnPostNorm
                        && b.residual.pre_norms()
                        && !b.residual.post_norms()),
                "{}: ffn_norm {ffn_norm:?}",
                spec.gguf_arch
            );
            let post: Vec<Role> = [Role::AttnPostNorm, Role::FfnPostNorm]
                .into_iter()
                .filter(|&r| r != ffn_norm)
                .collect();
            for (roles, want) in [
                (vec![Role::AttnNorm, ffn_norm], b.residual.pre_norms()),
                (post, b.residual.post_norms()),
                (
                    vec![Role::AttnQNorm, Role::AttnKNorm],
                    b.attention.qk_norm != QkNorm::None,
                ),
            ] {
                for role in roles {
                    let has = spec.tensors.layer_name(0, role).is_some();
                    assert_eq!(has, want, "{}: {role:?}", spec.gguf_arch);
                }
            }
            assert_eq!(b.inputs(), inputs, "{}", spec.gguf_arch);
        }
    }

    #[test]
    fn experts_map_to_their_stacked_tensor() {
        let moe = |arch: &str, extra: serde_json::Value| {
            let mut j = json!({"architectures": [arch], "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 10,
                "moe_intermediate_size": 4});
            for (k, v) in extra.as_object().unwrap() {
                j[k] = v.clone();
            }
            Config::from_json(j, "config.json".into())
        };
        let c = moe(
            "MixtralForCausalLM",
            json!({"num_local_experts": 8, "num_experts_per_tok": 2}),
        )
        .unwrap();
        let m = map_name(&c, "model.layers.1.block_sparse_moe.experts.7.w2.weight")
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.gguf_name.as_str(), m.role, m.expert, m.transform),
            (
                "blk.1.ffn_down_exps.weight",
                Role::FfnDownExps,
                Some(7),
                Transform::None
            )
        );
        // Mixtral's experts are `intermediate_size` wide (no moe_intermediate_size key of its own).
        assert_eq!(expected_shape(&c, &m), vec![8, 4]);
        let e = map_name(&c, "model.layers.0.block_sparse_moe.experts.8.w1.weight").unwrap_err();
        assert!(e.to_string().contains("expert count (8)"), "{e}");
        for bad in [
            "model.layers.0.block_sparse_moe.experts.0.w1.bias",
            "model.layers.0.block_sparse_moe.experts.0.w4.weight",
            "model.layers.0.block_sparse_moe.experts.x.w1.weight",
        ] {
            assert!(map_name(&c, bad).is_err(), "{bad}");
        }
        assert_eq!(
            expert_names(&c, 1, Role::FfnUpExps)[7],
            "model.layers.1.block_sparse_moe.experts.7.w3.weight"
        );
        let q = moe(
            "Qwen2MoeForCausalLM",
            json!({"num_experts": 4, "num_experts_per_tok": 2, "shared_expert_intermediate_size": 12}),
        )
        .unwrap();
        for (hf, gguf, shape) in [
            ("mlp.gate", "ffn_gate_inp", vec![4, 8]),
            ("mlp.experts.3.gate_proj", "ffn_gate_exps", vec![4, 8]),
            ("mlp.shared_expert.down_proj", "ffn_down_shexp", vec![8, 12]),
            ("mlp.shared_expert_gate", "ffn_gate_inp_shexp", vec![1, 8]),
        ] {
            let m = map_name(&q, &format!("model.layers.0.{hf}.weight"))
                .unwrap()
                .unwrap();
            assert_eq!(m.gguf_name, format!("blk.0.{gguf}.weight"));
            assert_eq!(expected_shape(&q, &m), shape, "{hf}");
        }
        let md = hparams_metadata(&q, 1);
        let get = |k: &str| md.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("qwen2moe.expert_count"), Some(Value::U32(4)));
        assert_eq!(get("qwen2moe.expert_used_count"), Some(Value::U32(2)));
        assert_eq!(
            get("qwen2moe.expert_feed_forward_length"),
            Some(Value::U32(4))
        );
        assert_eq!(
            get("qwen2moe.expert_shared_feed_forward_length"),
            Some(Value::U32(12))
        );
        // A mixture without its counts, or choosing more experts than it has, is refused by name.
        let e = moe("Qwen3MoeForCausalLM", json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_experts") && e.contains("missing"), "{e}");
        let e = moe(
            "OlmoeForCausalLM",
            json!({"num_experts": 2, "num_experts_per_tok": 3}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("num_experts_per_tok") && e.contains("(3)"),
            "{e}"
        );
        // OLMoE's whole-projection K norm: llama.cpp loads it as wide as the hidden state.
        let mut j = json!({"num_experts": 2, "num_experts_per_tok": 1});
        j["num_key_value_heads"] = json!(1);
        let e = moe("OlmoeForCausalLM", j).unwrap_err().to_string();
        assert!(
            e.contains("num_key_value_heads") && e.contains("olmoe"),
            "{e}"
        );
        let o = moe(
            "OlmoeForCausalLM",
            json!({"num_experts": 2, "num_experts_per_tok": 1, "rms_norm_eps": 1e-6}),
        )
        .unwrap();
        let md = hparams_metadata(&o, 1);
        assert!(md.contains(&(
            "olmoe.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5)
        )));
    }

    #[test]
    fn encoder_only_models_are_refused_with_the_reason() {
        let mut j = json!({"architectures": ["BertForSequenceClassification"], "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 10});
        let e = Config::from_json(j.clone(), "config.json".into())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("BertForSequenceClassification")
                && e.contains("encoder-only")
                && e.contains("XLMRobertaModel"),
            "{e}"
        );
        j["architectures"] = json!(["NoSuchForCausalLM"]);
        let e = Config::from_json(j, "config.json".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("laquant converts LlamaForCausalLM"), "{e}");
    }

    /// GPT-NeoX's fused QKV: 2 heads of head_dim 2, HF rows `q k v` per head
    /// go to `[Q; K; V]` (the converter's reshape to `(n_head, 3, d, ·)`),
    /// whole rows of any width, and back.
    #[test]
    fn qkv_per_head_matches_the_converters_reshape() {
        let t = Transform::QkvPerHead { n_head: 2 };
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let out = t.apply(&data, 12, 1);
        assert_eq!(out, vec![0., 1., 6., 7., 2., 3., 8., 9., 4., 5., 10., 11.]);
        assert_eq!(t.invert(&out, 12, 1), data);
        let wide: Vec<f32> = (0..36).map(|x| x as f32).collect();
        let out = t.apply(&wide, 12, 3);
        assert_eq!(&out[3..6], &[3., 4., 5.]);
        assert_eq!(&out[6..9], &[18., 19., 20.]);
        assert_eq!(t.invert(&out, 12, 3), wide);
    }

    #[test]
    fn permutation_matches_the_converters_reshape() {
        // 2 heads of 4 rows (head_dim 4), 1 column: rows within a head go 0,2,1,3.
        let data: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let out = apply_transform(Transform::PermuteHeads { n_head: 2 }, &data, 8, 1);
        assert_eq!(out, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    /// `stored_row` says where `apply` puts each row, for every row-moving transform.
    #[test]
    fn stored_row_is_where_apply_moves_each_row() {
        let rows = 24;
        let data: Vec<f32> = (0..rows).map(|x| x as f32).collect();
        for t in [
            Transform::None,
            Transform::PermuteHeads { n_head: 1 },
            Transform::PermuteHeads { n_head: 3 },
            Transform::PermuteHeads { n_head: 6 },
            Transform::QkvPerHead { n_head: 2 },
            Transform::QkvPerHead { n_head: 4 },
        ] {
            let out = t.apply(&data, rows, 1);
            for r in 0..rows {
                assert_eq!(out[t.stored_row(r, rows)], data[r], "{t:?} row {r}");
            }
        }
    }
}
