//! Architecture tables: HF tensor names to llama.cpp's GGUF names, the
//! `{arch}.*` hyperparameter keys, and the per-tensor transforms (the Llama
//! Q/K row permutation). Knowledge is data here, as in gguf-py's
//! `constants.py` / `tensor_mapping.py`: adding a family is adding rows.

use crate::gguf::{Metadata, Value};
use crate::hf::{Arch, Config, RopeScaling};

/// How a tensor's rows are rearranged on the way to GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None,
    /// llama.cpp's `permute(w, n_head, n_head_kv)`: HF rotate-half rows to interleaved pairs.
    PermuteHeads {
        n_head: usize,
    },
}

/// What a tensor is, for type policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    TokenEmbd,
    Output,
    OutputNorm,
    RopeFreqs,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    AttnQNorm,
    AttnKNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
}

impl Role {
    /// The GGUF name stem (after `blk.N.` for per-layer tensors).
    pub fn gguf_stem(self) -> &'static str {
        match self {
            Role::TokenEmbd => "token_embd",
            Role::Output => "output",
            Role::OutputNorm => "output_norm",
            Role::RopeFreqs => "rope_freqs",
            Role::AttnNorm => "attn_norm",
            Role::AttnQ => "attn_q",
            Role::AttnK => "attn_k",
            Role::AttnV => "attn_v",
            Role::AttnOutput => "attn_output",
            Role::AttnQNorm => "attn_q_norm",
            Role::AttnKNorm => "attn_k_norm",
            Role::FfnNorm => "ffn_norm",
            Role::FfnGate => "ffn_gate",
            Role::FfnUp => "ffn_up",
            Role::FfnDown => "ffn_down",
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
                | Role::FfnGate
                | Role::FfnUp
                | Role::FfnDown
        )
    }
}

/// Global (not per-layer) HF names.
const GLOBAL: &[(&str, Role)] = &[
    ("model.embed_tokens", Role::TokenEmbd),
    ("model.norm", Role::OutputNorm),
    ("lm_head", Role::Output),
];

/// Per-layer HF names after `model.layers.N.`.
const LAYER: &[(&str, Role)] = &[
    ("input_layernorm", Role::AttnNorm),
    ("post_attention_layernorm", Role::FfnNorm),
    ("self_attn.q_proj", Role::AttnQ),
    ("self_attn.k_proj", Role::AttnK),
    ("self_attn.v_proj", Role::AttnV),
    ("self_attn.o_proj", Role::AttnOutput),
    ("self_attn.q_norm", Role::AttnQNorm),
    ("self_attn.k_norm", Role::AttnKNorm),
    ("mlp.gate_proj", Role::FfnGate),
    ("mlp.up_proj", Role::FfnUp),
    ("mlp.down_proj", Role::FfnDown),
];

/// HF tensors the converter drops.
const SKIPPED_SUFFIXES: &[&str] = &[
    ".attention.masked_bias",
    ".attention.bias",
    ".rotary_emb.inv_freq",
];

/// Per-family facts.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// `general.architecture`.
    pub gguf_arch: &'static str,
    /// Whether Q/K rows are permuted (llama.cpp's `undo_permute`).
    pub permute_qk: bool,
    /// Whether `{arch}.vocab_size` and `{arch}.rope.dimension_count` are written.
    pub writes_vocab_and_rope_dim: bool,
    /// Roles this family may have beyond the Llama set.
    pub qk_norm: bool,
    pub qkv_bias: bool,
}

pub fn family(arch: Arch) -> Family {
    match arch {
        Arch::Llama | Arch::Mistral => Family {
            gguf_arch: "llama",
            permute_qk: true,
            writes_vocab_and_rope_dim: true,
            qk_norm: false,
            qkv_bias: false,
        },
        Arch::Qwen2 => Family {
            gguf_arch: "qwen2",
            permute_qk: false,
            writes_vocab_and_rope_dim: false,
            qk_norm: false,
            qkv_bias: true,
        },
        Arch::Qwen3 => Family {
            gguf_arch: "qwen3",
            permute_qk: false,
            writes_vocab_and_rope_dim: false,
            qk_norm: true,
            qkv_bias: false,
        },
    }
}

/// The HF weights llama.cpp cannot load a model without (`llm_load_tensors`
/// requires them; `lm_head` is optional there, since it falls back to the token
/// embeddings): the embeddings, the final norm, and in every layer both norms,
/// the four attention projections, the three FFN projections, and Q/K norms for
/// families that have them. A checkpoint missing one would convert into a file
/// llama.cpp refuses, so the converter checks this list first.
pub fn required_tensors(cfg: &Config) -> Vec<String> {
    let fam = family(cfg.arch);
    let mut v = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    for l in 0..cfg.num_hidden_layers {
        for (stem, role) in LAYER {
            if matches!(role, Role::AttnQNorm | Role::AttnKNorm) && !fam.qk_norm {
                continue;
            }
            v.push(format!("model.layers.{l}.{stem}.weight"));
        }
    }
    v
}

/// One HF tensor mapped to GGUF.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub gguf_name: String,
    pub role: Role,
    pub layer: Option<usize>,
    pub is_bias: bool,
    pub transform: Transform,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MapError {
    #[error("tensor {0}: laquant does not know where it goes in a {1} GGUF")]
    Unknown(String, &'static str),
    #[error("tensor {name}: layer {layer} is beyond num_hidden_layers ({n})")]
    Layer {
        name: String,
        layer: usize,
        n: usize,
    },
}

/// Maps an HF tensor name; `Ok(None)` for tensors the converter drops.
pub fn map_name(cfg: &Config, hf_name: &str) -> Result<Option<Mapped>, MapError> {
    let fam = family(cfg.arch);
    if SKIPPED_SUFFIXES.iter().any(|s| hf_name.ends_with(s)) {
        return Ok(None);
    }
    let unknown = || MapError::Unknown(hf_name.to_string(), fam.gguf_arch);
    let (base, is_bias) = if let Some(b) = hf_name.strip_suffix(".weight") {
        (b, false)
    } else if let Some(b) = hf_name.strip_suffix(".bias") {
        (b, true)
    } else {
        return Err(unknown());
    };
    let (role, layer) = if let Some(r) = GLOBAL.iter().find(|g| g.0 == base) {
        (r.1, None)
    } else if let Some(rest) = base.strip_prefix("model.layers.") {
        let (num, sub) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = num.parse().map_err(|_| unknown())?;
        if layer >= cfg.num_hidden_layers {
            return Err(MapError::Layer {
                name: hf_name.into(),
                layer,
                n: cfg.num_hidden_layers,
            });
        }
        let r = LAYER.iter().find(|l| l.0 == sub).ok_or_else(unknown)?;
        (r.1, Some(layer))
    } else {
        return Err(unknown());
    };
    let allowed = match role {
        Role::AttnQNorm | Role::AttnKNorm => fam.qk_norm && !is_bias,
        Role::AttnQ | Role::AttnK | Role::AttnV => !is_bias || fam.qkv_bias || cfg.attention_bias,
        Role::AttnOutput => !is_bias || cfg.attention_bias,
        _ => !is_bias,
    };
    if !allowed {
        return Err(unknown());
    }
    let transform = match role {
        Role::AttnQ if fam.permute_qk => Transform::PermuteHeads {
            n_head: cfg.num_attention_heads,
        },
        Role::AttnK if fam.permute_qk => Transform::PermuteHeads {
            n_head: cfg.num_key_value_heads,
        },
        _ => Transform::None,
    };
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
    }))
}

/// The HF shape (torch order) a mapped tensor must have under `cfg`.
pub fn expected_shape(cfg: &Config, m: &Mapped) -> Vec<usize> {
    let h = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let ff = cfg.intermediate_size;
    let rows = match m.role {
        Role::TokenEmbd | Role::Output => return vec![cfg.vocab_size, h],
        Role::OutputNorm | Role::AttnNorm | Role::FfnNorm => return vec![h],
        Role::AttnQNorm | Role::AttnKNorm => return vec![cfg.head_dim],
        Role::RopeFreqs => return vec![cfg.head_dim / 2],
        Role::AttnQ => (q, h),
        Role::AttnK | Role::AttnV => (kv, h),
        Role::AttnOutput => (h, q),
        Role::FfnGate | Role::FfnUp => (ff, h),
        Role::FfnDown => (h, ff),
    };
    if m.is_bias {
        vec![rows.0]
    } else {
        vec![rows.0, rows.1]
    }
}

/// Applies a transform to a row-major [rows, cols] tensor (cols = 1 for biases).
pub fn apply_transform(t: Transform, data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    match t {
        Transform::None => data.to_vec(),
        Transform::PermuteHeads { n_head } => {
            // reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2): output row
            // (h, i, j) takes input row (h, j, i).
            let half = rows / n_head / 2;
            let mut out = vec![0f32; data.len()];
            for h in 0..n_head {
                for i in 0..half {
                    for j in 0..2 {
                        let dst = h * 2 * half + i * 2 + j;
                        let src = h * 2 * half + j * half + i;
                        out[dst * cols..(dst + 1) * cols]
                            .copy_from_slice(&data[src * cols..(src + 1) * cols]);
                    }
                }
            }
            out
        }
    }
}

/// The `{arch}.*` hyperparameters and `general.file_type`, as llama.cpp's
/// converter writes them (TextModel.set_gguf_parameters plus the family's additions).
pub fn hparams_metadata(cfg: &Config, file_type: u32) -> Metadata {
    let fam = family(cfg.arch);
    let a = fam.gguf_arch;
    let k = |s: &str| format!("{a}.{s}");
    let mut m: Metadata = vec![(k("block_count"), Value::U32(cfg.num_hidden_layers as u32))];
    if let Some(ctx) = cfg.max_position_embeddings {
        m.push((k("context_length"), Value::U32(ctx as u32)));
    }
    m.push((k("embedding_length"), Value::U32(cfg.hidden_size as u32)));
    m.push((
        k("feed_forward_length"),
        Value::U32(cfg.intermediate_size as u32),
    ));
    m.push((
        k("attention.head_count"),
        Value::U32(cfg.num_attention_heads as u32),
    ));
    m.push((
        k("attention.head_count_kv"),
        Value::U32(cfg.num_key_value_heads as u32),
    ));
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
        Some(RopeScaling::Llama3 { .. }) | None => {}
    }
    m.push((k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)));
    m.push((
        k("attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.rms_norm_eps as f32),
    ));
    // convert_hf_to_gguf.py reads hparams through transformers' AutoConfig; LlamaConfig
    // derives head_dim = hidden / heads when config.json has none, so Llama always
    // gets the key/value lengths (MistralConfig leaves it unset).
    if cfg.head_dim_explicit || cfg.arch == Arch::Llama {
        m.push((k("attention.key_length"), Value::U32(cfg.head_dim as u32)));
        m.push((k("attention.value_length"), Value::U32(cfg.head_dim as u32)));
    }
    m.push(("general.file_type".into(), Value::U32(file_type)));
    if fam.writes_vocab_and_rope_dim {
        m.push((k("vocab_size"), Value::U32(cfg.vocab_size as u32)));
        m.push((k("rope.dimension_count"), Value::U32(cfg.head_dim as u32)));
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

    #[test]
    fn permutation_matches_the_converters_reshape() {
        // 2 heads of 4 rows (head_dim 4), 1 column: rows within a head go 0,2,1,3.
        let data: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let out = apply_transform(Transform::PermuteHeads { n_head: 2 }, &data, 8, 1);
        assert_eq!(out, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }
}
