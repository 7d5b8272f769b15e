//! llama-quantize's presets (`Q4_K_M`, `Q3_K_S`, `IQ4_XS`, ...): the default
//! type of each file type, the category rules (attention V and FFN down get
//! more bits on the `use_more_bits` layers, the output head Q6_K, ...), the
//! fallbacks when a row width does not fit a block, and the overrides.
//! Mirrors `llama_tensor_get_type`, `llama_tensor_get_type_impl`,
//! `tensor_type_fallback` and `tensor_allows_quantization` for the
//! architectures laquant converts (no Falcon), with the expert-count rules of
//! mixtures of experts (`n_expert == 8`: attention K, V and output get more
//! bits; the stacked experts are FFN tensors of their layer).

use crate::gguf::{FileType, GgmlType};
use regex::Regex;

/// A llama-quantize file type laquant can produce; the flag is llama-quantize's
/// `only_copy` (its `COPY`, file type F32): every tensor kept in its input type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset(pub FileType, pub bool);

impl Preset {
    /// llama-quantize's `COPY`: `ALL_F32` with `only_copy`, so no tensor is
    /// quantized (`tensor_allows_quantization`) and `general.file_type` is the
    /// input's.
    pub const COPY: Preset = Preset(FileType::AllF32, true);

    /// The preset of file type `ft` (quantizing as its rules say).
    pub fn of(ft: FileType) -> Preset {
        Preset(ft, false)
    }
    /// The preset of a `llama-quantize` name (`Q4_K_M`, case-insensitive as it).
    pub fn parse(s: &str) -> Option<Preset> {
        FileType::from_name(s).map(Preset::of)
    }
    /// Whether it is [`Preset::COPY`].
    pub fn is_copy(self) -> bool {
        self.1
    }
    /// Its llama-quantize name (`Q4_K_M`, `COPY`).
    pub fn name(self) -> &'static str {
        if self.1 {
            "COPY"
        } else {
            self.0.name()
        }
    }
    /// `llama_ftype_get_default_type`.
    pub fn default_type(self) -> GgmlType {
        self.0.base_type()
    }
}

/// The user's overrides, as llama-quantize's `--tensor-type`, `--output-tensor-type`,
/// `--token-embedding-type` and `--pure`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--tensor-type REGEX=TYPE`, in order: the first match wins.
    pub tensor_types: Vec<(Regex, GgmlType)>,
    /// `--output-tensor-type`.
    pub output_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub embedding_type: Option<GgmlType>,
    /// `--pure`: the preset's base type everywhere its rules would differ.
    pub pure: bool,
}

/// A `--tensor-type REGEX=TYPE` argument that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TensorTypeError {
    /// No `=`.
    #[error("--tensor-type {arg}: expected REGEX=TYPE")]
    Syntax {
        /// The argument.
        arg: String,
    },
    /// The type is not a ggml type's name.
    #[error("--tensor-type {arg}: unknown type `{ty}`")]
    UnknownType {
        /// The argument.
        arg: String,
        /// The type named.
        ty: String,
    },
    /// The regular expression does not compile.
    #[error("--tensor-type {arg}: bad regex")]
    Regex {
        /// The argument.
        arg: String,
        /// The regex crate's error.
        source: regex::Error,
    },
}

impl Overrides {
    /// Parses one `REGEX=TYPE` argument.
    pub fn parse_tensor_type(arg: &str) -> Result<(Regex, GgmlType), TensorTypeError> {
        let (re, ty) = arg
            .rsplit_once('=')
            .ok_or_else(|| TensorTypeError::Syntax { arg: arg.into() })?;
        let t = GgmlType::from_name(ty).ok_or_else(|| TensorTypeError::UnknownType {
            arg: arg.into(),
            ty: ty.into(),
        })?;
        let r = Regex::new(re).map_err(|source| TensorTypeError::Regex {
            arg: arg.into(),
            source,
        })?;
        Ok((r, t))
    }
}

/// llama-quantize's refusal to quantize a tensor to an IQ type without an
/// importance matrix ([`PresetPlanner::check_imatrix`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{preset} requires an importance matrix, as llama-quantize's: tensor {tensor} would be \
     {ty} (give --imatrix FILE or --calib DIR)"
)]
pub struct ImatrixRequired {
    /// The preset's name.
    pub preset: &'static str,
    /// The tensor.
    pub tensor: String,
    /// The type it would be.
    pub ty: &'static str,
}

/// What the planner needs to know of a tensor.
#[derive(Debug, Clone)]
pub struct TensorDesc<'a> {
    /// The GGUF name.
    pub name: &'a str,
    /// GGUF dims, row width first.
    pub dims: &'a [u64],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

/// `tensor_get_category`.
fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight") {
        Category::AttnQkv
    } else if name.contains("attn_v.weight") {
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_q.weight") {
        Category::AttnQ
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_up") {
        Category::FfnUp
    } else if name.contains("ffn_gate") {
        Category::FfnGate
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// `tensor_allows_quantization` for the tensors of dense Llama-family models.
pub fn allows_quantization(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("position_embd")
        && name != "token_types.weight"
}

/// The layer of `blk.N.` names.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama-quantize's tensor order (its `weights_map` comparator): tensors outside
/// blocks first, then by layer, by name within each.
pub fn quantize_order(a: &str, b: &str) -> std::cmp::Ordering {
    let la = layer_of(a).map(|l| l as i64).unwrap_or(-1);
    let lb = layer_of(b).map(|l| l as i64).unwrap_or(-1);
    la.cmp(&lb).then_with(|| a.cmp(b))
}

/// Stateful planner: llama-quantize counts attention-V tensors as it goes, so
/// tensors must be given in [`quantize_order`].
pub struct PresetPlanner {
    preset: Preset,
    ov: Overrides,
    has_imatrix: bool,
    n_gqa: usize,
    n_layer: usize,
    is_70b: bool,
    /// `hparams.n_expert` (0 for dense models).
    n_expert: usize,
    has_tied_embeddings: bool,
    n_attention_wv: usize,
    i_attention_wv: usize,
    /// `qs.i_ffn_down`: FFN-down tensors seen so far (the low i-quants count them, not layers).
    i_ffn_down: usize,
}

use FileType as F;
use GgmlType as T;

fn use_more_bits(i: usize, n: usize) -> bool {
    // i_layer < n/8 || i_layer >= 7n/8 || (i_layer - n/8) % 3 == 2, in C int arithmetic.
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl PresetPlanner {
    /// `names` are all tensor names of the model (to count attention-V tensors and
    /// detect tied embeddings, as `init_quantize_state_counters`).
    pub fn new(
        preset: Preset,
        ov: Overrides,
        has_imatrix: bool,
        n_head: usize,
        n_head_kv: usize,
        n_layer: usize,
        names: &[&str],
    ) -> PresetPlanner {
        let n_attention_wv = names
            .iter()
            .filter(|n| matches!(category(n), Category::AttnV | Category::AttnQkv))
            .count();
        let has_tied_embeddings = !names.iter().any(|n| category(n) == Category::Output);
        PresetPlanner {
            preset,
            ov,
            has_imatrix,
            n_gqa: n_head / n_head_kv.max(1),
            n_layer,
            is_70b: n_layer == 80,
            n_expert: 0,
            has_tied_embeddings,
            n_attention_wv,
            i_attention_wv: 0,
            i_ffn_down: 0,
        }
    }

    /// A mixture of `n_expert` experts (its `{arch}.expert_count`).
    pub fn with_experts(mut self, n_expert: usize) -> PresetPlanner {
        self.n_expert = n_expert;
        self
    }

    /// The type of one tensor and why (`llama_tensor_get_type`); `current` is its type in the input.
    pub fn choose(&mut self, t: &TensorDesc, current: GgmlType) -> (GgmlType, String) {
        // ggml_n_dims: trailing dimensions of 1 do not count (Qwen2-MoE's
        // shared-expert gate, [n_embd, 1], is 1-D to llama-quantize).
        let n_dims = t.dims.iter().rposition(|&d| d != 1).map_or(1, |p| p + 1);
        if self.preset.is_copy() {
            return (current, "COPY: kept in its input type".into());
        }
        if !allows_quantization(t.name, n_dims) {
            return (
                current,
                "not quantized (1-D, norm or excluded tensor)".into(),
            );
        }
        let cat = category(t.name);
        if let (Some(e), Category::TokenEmbd) = (self.ov.embedding_type, cat) {
            return (e, "--embedding-type".into());
        }
        if let (Some(o), Category::Output) = (self.ov.output_type, cat) {
            return (o, "--output-type".into());
        }
        let default = self.preset.default_type();
        let mut ty = default;
        let mut reason = format!("{} default", self.preset.0.name());
        if default.is_quantized() {
            let mut manual = false;
            for (re, q) in &self.ov.tensor_types {
                if re.is_match(t.name) {
                    ty = *q;
                    reason = format!("--tensor-type {}={}", re.as_str(), q.name());
                    manual = true;
                    break;
                }
            }
            if !manual && !self.ov.pure {
                let (nt, why) = self.rules(ty, t, cat);
                if nt != ty || why.is_some() {
                    reason = why.unwrap_or_else(|| format!("{} rule", self.preset.0.name()));
                }
                ty = nt;
            } else if self.ov.pure && !manual {
                reason = format!("--pure {}", ty.name());
            }
            let (fb, note) = fallback(ty, t.dims[0]);
            if let Some(n) = note {
                reason = format!("{reason}; {n}");
            }
            ty = fb;
        }
        (ty, reason)
    }

    /// `llama_tensor_get_type_impl` for dense models (n_expert = 0, not Falcon):
    /// its decisions in its order, the output head's first, then MXFP4_MOE's,
    /// the token embeddings', the low i-quants' and each role's.
    fn rules(&mut self, ty: GgmlType, t: &TensorDesc, cat: Category) -> (GgmlType, Option<String>) {
        let ft = self.preset.0;
        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            return self.output_rule(ty, t, cat);
        }
        if ft == F::MostlyMXFP4Moe {
            // A mixture's stacked experts (ne[2] > 1) are MXFP4, every other tensor Q8_0.
            if t.dims.get(2).is_some_and(|&e| e > 1) {
                return (T::MXFP4, Some("MXFP4_MOE: expert tensor, MXFP4".into()));
            }
            return (
                T::Q8_0,
                Some("MXFP4_MOE: not an expert tensor, Q8_0".into()),
            );
        }
        if cat == Category::TokenEmbd {
            return self.token_embd_rule(ty);
        }
        if is_low_iquant(ft) {
            return self.low_iquant_rules(ty, cat);
        }
        match cat {
            // category_is_attn_v: fused QKV takes the attention-V rules too.
            Category::AttnV | Category::AttnQkv => self.attn_v_rule(ty),
            Category::FfnDown => self.ffn_down_rule(ty, t),
            Category::AttnK | Category::AttnQ | Category::AttnOutput => self.attn_qko_rule(ty, cat),
            Category::FfnGate | Category::FfnUp if ft == F::MostlyIQ3XS => {
                let (i, n) = (layer_of(t.name).unwrap_or(0), self.n_layer);
                match i >= n / 8 && i < 7 * n / 8 {
                    true => (T::IQ3XXS, None),
                    false => (ty, None),
                }
            }
            _ => (ty, None),
        }
    }

    /// The output head, or the token embeddings tied to it: `--output-type`,
    /// else Q8_0 when its width does not fit the type's blocks, Q5_K for the
    /// lowest i-quants, Q6_K otherwise (Q8_0 kept).
    fn output_rule(
        &self,
        ty: GgmlType,
        t: &TensorDesc,
        cat: Category,
    ) -> (GgmlType, Option<String>) {
        let ft = self.preset.0;
        if let Some(o) = self.ov.output_type {
            return (o, Some("--output-type".into()));
        }
        if ft == F::MostlyMXFP4Moe {
            return (T::Q8_0, Some("MXFP4_MOE: output head Q8_0".into()));
        }
        let qk = ty.block_size() as u64;
        if !t.dims[0].is_multiple_of(qk) {
            return (
                T::Q8_0,
                Some(format!(
                    "output head: width {} does not fit {}: Q8_0",
                    t.dims[0], ty
                )),
            );
        }
        if is_low_iquant(ft) || ft == F::MostlyIQ3XXS {
            return (T::Q5K, Some(format!("output head of {}: Q5_K", ft.name())));
        }
        if ty != T::Q8_0 {
            let why = if cat == Category::Output {
                "output head gets Q6_K"
            } else {
                "tied embeddings/output get Q6_K"
            };
            return (T::Q6K, Some(why.into()));
        }
        (ty, None)
    }

    /// Untied token embeddings: `--embedding-type`, else a type of their
    /// own for the 1- to 3-bit presets.
    fn token_embd_rule(&self, ty: GgmlType) -> (GgmlType, Option<String>) {
        if let Some(e) = self.ov.embedding_type {
            return (e, None);
        }
        let e = match self.preset.0 {
            F::MostlyIQ2XXS | F::MostlyIQ2XS | F::MostlyIQ1S | F::MostlyIQ1M => T::Q2K,
            F::MostlyIQ2S | F::MostlyIQ2M | F::MostlyIQ3XXS => T::IQ3S,
            F::MostlyTQ1_0 | F::MostlyTQ2_0 | F::MostlyQ2_0 => T::Q4K,
            _ => return (ty, None),
        };
        (e, Some(format!("token_embd: {}", e.name())))
    }

    /// Attention V (and fused QKV), counted in `i_attention_wv`: more bits by
    /// preset, grouped-query ratio and layer, then the 70B and 8-expert rules.
    fn attn_v_rule(&mut self, mut ty: GgmlType) -> (GgmlType, Option<String>) {
        let (i, n) = (self.i_attention_wv, self.n_attention_wv);
        let gqa4 = self.n_gqa >= 4;
        let mut why = None;
        match self.preset.0 {
            F::MostlyQ2K => {
                ty = if gqa4 { T::Q4K } else { T::Q3K };
                why = Some("attn_v: Q2_K rule");
            }
            F::MostlyQ2KS if gqa4 => {
                ty = T::Q4K;
                why = Some("attn_v with GQA >= 4: Q4_K");
            }
            F::MostlyIQ3XXS => {
                ty = if gqa4 {
                    T::Q4K
                } else if !self.has_imatrix {
                    T::IQ3S
                } else {
                    T::IQ3XXS
                };
                why = Some("attn_v: IQ3_XXS rule");
            }
            F::MostlyIQ3XS | F::MostlyIQ3S if gqa4 => {
                ty = T::Q4K;
                why = Some("attn_v with GQA >= 4: Q4_K");
            }
            F::MostlyIQ3M => {
                ty = T::Q4K;
                why = Some("attn_v: Q4_K");
            }
            F::MostlyQ3KM => {
                ty = if i < 2 { T::Q5K } else { T::Q4K };
                why = Some("attn_v: first two layers Q5_K, then Q4_K");
            }
            F::MostlyQ3KL => {
                ty = T::Q5K;
                why = Some("attn_v: Q5_K");
            }
            F::MostlyIQ4NL | F::MostlyIQ4XS if gqa4 => {
                ty = T::Q5K;
                why = Some("attn_v with GQA >= 4: Q5_K");
            }
            F::MostlyQ4KM | F::MostlyQ5KM if use_more_bits(i, n) => {
                ty = T::Q6K;
                why = Some("attn_v on a use_more_bits layer: Q6_K");
            }
            F::MostlyQ4KS if i < 4 => {
                ty = T::Q5K;
                why = Some("attn_v in the first 4 layers: Q5_K");
            }
            _ => {}
        }
        if self.is_70b && (ty == T::Q3K || ty == T::Q4K) {
            ty = T::Q5K;
            why = Some("attn_v of a 70B model: Q5_K");
        }
        if self.n_expert == 8 {
            ty = T::Q8_0;
            why = Some("attn_v of an 8-expert model: Q8_0");
        }
        self.i_attention_wv += 1;
        (ty, why.map(String::from))
    }

    /// The FFN's down projection: more bits by preset and layer (its index
    /// from the name), named when the type changes.
    fn ffn_down_rule(&self, ty: GgmlType, t: &TensorDesc) -> (GgmlType, Option<String>) {
        let ft = self.preset.0;
        let (i, n) = (layer_of(t.name).unwrap_or(0), self.n_layer);
        let more = self.n_expert == 8 && use_more_bits(i, n);
        let first = i < n / 8;
        let new = match ft {
            F::MostlyQ2K => T::Q3K,
            F::MostlyQ2KS if first => T::Q4K,
            F::MostlyIQ3XXS if !self.has_imatrix => match first {
                true => T::Q4K,
                false => T::Q3K,
            },
            F::MostlyQ3KM => match i < n / 16 {
                true => T::Q5K,
                false => T::Q4K,
            },
            F::MostlyIQ3M if first || more => T::Q4K,
            F::MostlyQ3KL => T::Q5K,
            F::MostlyQ4KM if use_more_bits(i, n) => T::Q6K,
            F::MostlyIQ4NL | F::MostlyIQ4XS if first && !self.has_imatrix => T::Q5K,
            F::MostlyQ5KM if use_more_bits(i, n) => T::Q6K,
            F::MostlyQ4KS if first => T::Q5K,
            F::MostlyQ4_0 if self.has_imatrix && first => T::Q4_1,
            F::MostlyQ5_0 if self.has_imatrix && first => T::Q5_1,
            _ => ty,
        };
        if new == ty {
            return (ty, None);
        }
        let why = format!("ffn_down of layer {i}/{n}: {}", new.name());
        (new, Some(why))
    }

    /// Attention Q, K and output: the 8-expert rules (K Q8_0, output Q5_K
    /// for the low presets), else the output's and Q/K's by preset.
    fn attn_qko_rule(&self, ty: GgmlType, cat: Category) -> (GgmlType, Option<String>) {
        let ft = self.preset.0;
        match cat {
            Category::AttnK if self.n_expert == 8 => {
                (T::Q8_0, Some("attn_k of an 8-expert model: Q8_0".into()))
            }
            Category::AttnOutput if self.n_expert == 8 => {
                let low = matches!(
                    ft,
                    F::MostlyQ2K
                        | F::MostlyQ3KS
                        | F::MostlyQ3KM
                        | F::MostlyIQ4NL
                        | F::MostlyQ4KS
                        | F::MostlyQ4KM
                        | F::MostlyIQ4XS
                        | F::MostlyIQ3XS
                        | F::MostlyIQ3XXS
                        | F::MostlyIQ3S
                        | F::MostlyIQ3M
                );
                match low {
                    true => (
                        T::Q5K,
                        Some("attn_output of an 8-expert model: Q5_K".into()),
                    ),
                    false => (ty, None),
                }
            }
            Category::AttnOutput => match ft {
                F::MostlyQ2K => (T::Q3K, None),
                F::MostlyIQ3XXS => (T::IQ3S, None),
                F::MostlyQ3KM => (T::Q4K, None),
                F::MostlyQ3KL => (T::Q5K, None),
                F::MostlyIQ3M => (T::Q4K, None),
                _ => (ty, None),
            },
            _ => match ft {
                F::MostlyIQ3XS => (T::IQ3XXS, None),
                F::MostlyIQ3XXS => (T::IQ2S, None),
                _ => (ty, None),
            },
        }
    }

    /// The branch of `llama_tensor_get_type_impl` for IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M, IQ1_S
    /// and IQ1_M, with its expert-count rules.
    fn low_iquant_rules(&mut self, ty: GgmlType, cat: Category) -> (GgmlType, Option<String>) {
        let ft = self.preset.0;
        let iq2_sm = matches!(ft, F::MostlyIQ2S | F::MostlyIQ2M);
        let small = if iq2_sm { T::IQ3S } else { T::Q2K };
        match cat {
            Category::AttnV | Category::AttnQkv => {
                self.i_attention_wv += 1;
                if self.n_gqa >= 4 || self.n_expert >= 4 {
                    let why = "attn_v with GQA >= 4 or >= 4 experts: Q4_K";
                    (T::Q4K, Some(why.into()))
                } else {
                    (small, Some(format!("attn_v: {}", small.name())))
                }
            }
            Category::AttnK if self.n_expert == 8 => {
                (T::Q4K, Some("attn_k of an 8-expert model: Q4_K".into()))
            }
            Category::FfnDown => {
                // A count of FFN-down tensors (a shared expert's count too), not the layer.
                let i = self.i_ffn_down;
                self.i_ffn_down += 1;
                if i < self.n_layer / 8 {
                    let why = format!("ffn_down #{i} of {}: {}", self.n_layer, small.name());
                    (small, Some(why))
                } else {
                    (ty, None)
                }
            }
            Category::AttnOutput if self.n_expert == 8 => (
                T::Q5K,
                Some("attn_output of an 8-expert model: Q5_K".into()),
            ),
            Category::AttnOutput => match ft {
                F::MostlyIQ1S | F::MostlyIQ1M => (T::IQ2XXS, Some("attn_output: IQ2_XXS".into())),
                _ if iq2_sm => (T::IQ3S, Some("attn_output: IQ3_S".into())),
                _ => (ty, None),
            },
            _ => (ty, None),
        }
    }

    /// llama-quantize's refusal (`tensor_requires_imatrix`): without an importance matrix,
    /// a quantized tensor whose type would be IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S or
    /// IQ3_XXS (or Q2_K in a Q2_K_S file) is an error, but for the token embeddings and the
    /// output head. `ty` is the type [`Self::choose`] gave.
    pub fn check_imatrix(
        &self,
        name: &str,
        n_dims: usize,
        ty: GgmlType,
    ) -> Result<(), ImatrixRequired> {
        if self.has_imatrix
            || !allows_quantization(name, n_dims)
            || matches!(
                name,
                "token_embd.weight" | "per_layer_token_embd.weight" | "output.weight"
            )
        {
            return Ok(());
        }
        let needs = match ty {
            T::IQ3XXS | T::IQ2XXS | T::IQ2XS | T::IQ2S | T::IQ1M | T::IQ1S => true,
            T::Q2K => self.preset.0 == F::MostlyQ2KS,
            _ => false,
        };
        if needs {
            return Err(ImatrixRequired {
                preset: self.preset.0.name(),
                tensor: name.into(),
                ty: ty.name(),
            });
        }
        Ok(())
    }
}

/// The file types of `llama_tensor_get_type_impl`'s low i-quant branch.
fn is_low_iquant(ft: FileType) -> bool {
    matches!(
        ft,
        F::MostlyIQ2XXS
            | F::MostlyIQ2XS
            | F::MostlyIQ1S
            | F::MostlyIQ2S
            | F::MostlyIQ2M
            | F::MostlyIQ1M
    )
}

/// `tensor_type_fallback`: a type whose block does not divide the row width
/// falls back to a 32-block type, or F16 when even that does not fit.
pub fn fallback(ty: GgmlType, ncols: u64) -> (GgmlType, Option<String>) {
    let qk = ty.block_size() as u64;
    if ncols.is_multiple_of(qk) {
        return (ty, None);
    }
    let mut r = match ty {
        T::IQ1S | T::IQ1M | T::IQ2XXS | T::IQ2XS | T::IQ2S | T::IQ3XXS | T::IQ3S | T::IQ4XS => {
            T::IQ4NL
        }
        T::Q2_0 | T::Q2K | T::Q3K | T::TQ1_0 | T::TQ2_0 => T::Q4_0,
        T::Q4K => T::Q5_0,
        T::Q5K => T::Q5_1,
        T::Q6K => T::Q8_0,
        // A block of 32 or less: F16 below. Larger blocks without a fallback (Q1_0): llama-quantize
        // stops ("no tensor type fallback is defined"); the type stays, and the plan refuses its width.
        other if other.block_size() <= 32 => other,
        other => {
            return (
                other,
                Some(format!(
                    "width {ncols} is not a multiple of {qk} ({}), which has no fallback",
                    other.name()
                )),
            )
        }
    };
    if !ncols.is_multiple_of(r.block_size() as u64) {
        r = T::F16;
    }
    (
        r,
        Some(format!(
            "width {ncols} is not a multiple of {qk} ({}): falls back to {}",
            ty.name(),
            r.name()
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-layer matmul weights' stems, in the converter's order.
    const MATMULS: &[&str] = &[
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];

    fn names(n_layer: usize, tied: bool) -> Vec<String> {
        let mut v = vec![
            "token_embd.weight".to_string(),
            "output_norm.weight".to_string(),
        ];
        if !tied {
            v.push("output.weight".into());
        }
        for l in 0..n_layer {
            for s in MATMULS.iter().chain(&["attn_norm", "ffn_norm"]) {
                v.push(format!("blk.{l}.{s}.weight"));
            }
        }
        v.sort_by(|a, b| quantize_order(a, b));
        v
    }

    fn plan(ft: &str, n_layer: usize, width: u64, tied: bool) -> Vec<(String, GgmlType)> {
        let ns = names(n_layer, tied);
        let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
        let mut p = PresetPlanner::new(
            Preset::parse(ft).unwrap(),
            Overrides::default(),
            false,
            8,
            2,
            n_layer,
            &refs,
        );
        ns.iter()
            .map(|n| {
                let dims: Vec<u64> = if n.contains("norm") {
                    vec![width]
                } else {
                    vec![width, width]
                };
                let (t, _) = p.choose(
                    &TensorDesc {
                        name: n,
                        dims: &dims,
                    },
                    GgmlType::F32,
                );
                (n.clone(), t)
            })
            .collect()
    }

    fn ty(p: &[(String, GgmlType)], name: &str) -> GgmlType {
        p.iter().find(|x| x.0 == name).unwrap().1
    }

    /// llama-quantize's 8-expert rules (Mixtral): attention K and V at Q8_0,
    /// attention output Q5_K under Q4_K_M; other expert counts keep the dense rules.
    #[test]
    fn eight_expert_models_get_more_bits_in_attention() {
        let ns = names(8, false);
        let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
        for (n_expert, k, v3, out) in [(8, T::Q8_0, T::Q8_0, T::Q5K), (4, T::Q4K, T::Q4K, T::Q4K)] {
            let mut p = PresetPlanner::new(
                Preset::parse("q4_k_m").unwrap(),
                Overrides::default(),
                false,
                8,
                2,
                8,
                &refs,
            )
            .with_experts(n_expert);
            let mut got = std::collections::HashMap::new();
            for n in &ns {
                let dims = [256u64, 256, n_expert as u64];
                let (t, _) = p.choose(
                    &TensorDesc {
                        name: n,
                        dims: &dims,
                    },
                    T::F32,
                );
                got.insert(n.clone(), t);
            }
            assert_eq!(got["blk.3.attn_k.weight"], k, "{n_expert}");
            // Layer 2 is not a use_more_bits layer: Q4_K unless the 8-expert rule applies.
            assert_eq!(got["blk.2.attn_v.weight"], v3, "{n_expert}");
            assert_eq!(got["blk.3.attn_output.weight"], out, "{n_expert}");
        }
        // A [n_embd, 1] tensor is 1-D to llama-quantize: never quantized.
        let mut p = PresetPlanner::new(
            Preset::parse("q4_k_m").unwrap(),
            Overrides::default(),
            false,
            8,
            2,
            8,
            &refs,
        );
        let d = TensorDesc {
            name: "blk.0.ffn_gate_inp_shexp.weight",
            dims: &[256, 1],
        };
        assert_eq!(p.choose(&d, T::F32).0, T::F32);
    }

    #[test]
    fn q4_k_m_schedule() {
        let p = plan("q4_k_m", 8, 256, false);
        assert_eq!(ty(&p, "output.weight"), T::Q6K);
        assert_eq!(ty(&p, "token_embd.weight"), T::Q4K);
        assert_eq!(ty(&p, "output_norm.weight"), T::F32);
        // use_more_bits(i, 8): layers 0, 7 and (i-1)%3==2 -> 3, 6.
        let more: Vec<usize> = (0..8).filter(|&i| use_more_bits(i, 8)).collect();
        assert_eq!(more, vec![0, 3, 6, 7]);
        for i in 0..8 {
            let want = if more.contains(&i) { T::Q6K } else { T::Q4K };
            assert_eq!(
                ty(&p, &format!("blk.{i}.attn_v.weight")),
                want,
                "attn_v {i}"
            );
            assert_eq!(
                ty(&p, &format!("blk.{i}.ffn_down.weight")),
                want,
                "ffn_down {i}"
            );
            assert_eq!(ty(&p, &format!("blk.{i}.attn_q.weight")), T::Q4K);
        }
    }

    #[test]
    fn tied_embeddings_follow_the_output_rule() {
        let p = plan("q4_k_m", 4, 256, true);
        assert_eq!(ty(&p, "token_embd.weight"), T::Q6K);
    }

    #[test]
    fn fallbacks_when_width_does_not_fit() {
        let p = plan("q4_k_m", 8, 384, false);
        assert_eq!(ty(&p, "blk.1.attn_q.weight"), T::Q5_0);
        assert_eq!(ty(&p, "blk.0.attn_v.weight"), T::Q8_0); // Q6_K -> Q8_0
        assert_eq!(ty(&p, "output.weight"), T::Q8_0);
        assert_eq!(fallback(T::Q4K, 100), (T::F16, fallback(T::Q4K, 100).1));
        assert_eq!(fallback(T::IQ4XS, 96).0, T::IQ4NL);
        assert_eq!(fallback(T::Q2_0, 96).0, T::Q4_0);
        assert_eq!(fallback(T::Q2_0, 48).0, T::F16);
        assert_eq!(fallback(T::TQ1_0, 384).0, T::Q4_0);
        assert_eq!(fallback(T::Q1_0, 384), (T::Q1_0, None));
        assert_eq!(fallback(T::Q1_0, 320).0, T::Q1_0); // no fallback: the width is refused
    }

    #[test]
    fn ternary_and_low_bit_presets() {
        for (ft, base) in [
            ("tq1_0", T::TQ1_0),
            ("tq2_0", T::TQ2_0),
            ("q2_0", T::Q2_0),
            ("q1_0", T::Q1_0),
        ] {
            let p = plan(ft, 8, 256, false);
            assert_eq!(ty(&p, "output.weight"), T::Q6K, "{ft}");
            let embd = if base == T::Q1_0 { T::Q1_0 } else { T::Q4K };
            assert_eq!(ty(&p, "token_embd.weight"), embd, "{ft}");
            for i in 0..8 {
                for s in MATMULS {
                    assert_eq!(ty(&p, &format!("blk.{i}.{s}.weight")), base, "{ft} {s} {i}");
                }
            }
            let tied = plan(ft, 2, 256, true);
            assert_eq!(ty(&tied, "token_embd.weight"), T::Q6K, "{ft} tied");
        }
        // Rows of 384 do not fit the 256-blocks: Q4_0 as llama-quantize.
        let p = plan("tq2_0", 2, 384, false);
        assert_eq!(ty(&p, "blk.0.attn_q.weight"), T::Q4_0);
        assert_eq!(ty(&p, "output.weight"), T::Q8_0);
    }

    /// COPY (`only_copy`) keeps every tensor's input type, whatever the
    /// overrides say, where the F32 preset widens a quantized input.
    #[test]
    fn copy_keeps_every_input_type() {
        let ns = names(4, false);
        let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
        let ov = Overrides {
            tensor_types: vec![(Regex::new("ffn").unwrap(), GgmlType::Q4_0)],
            output_type: Some(GgmlType::Q8_0),
            embedding_type: Some(GgmlType::Q8_0),
            pure: false,
        };
        let mut copy = PresetPlanner::new(Preset::COPY, ov, false, 8, 8, 4, &refs);
        let mut f32 = PresetPlanner::new(
            Preset::parse("f32").unwrap(),
            Overrides::default(),
            false,
            8,
            8,
            4,
            &refs,
        );
        assert_eq!(Preset::COPY.name(), "COPY");
        assert!(!Preset::parse("f32").unwrap().is_copy());
        for (i, n) in ns.iter().enumerate() {
            let dims = [256u64, 256];
            let d = TensorDesc {
                name: n,
                dims: &dims,
            };
            let input = [GgmlType::MXFP4, GgmlType::Q4K, GgmlType::F16, GgmlType::F32][i % 4];
            assert_eq!(copy.choose(&d, input).0, input, "{n}");
            let widened = f32.choose(&d, input).0;
            assert!(
                widened == GgmlType::F32 || !allows_quantization(n, 2),
                "{n}: {widened}"
            );
        }
    }

    /// Every tensor's type under `ft` for a 16-layer model with rows of 256, and whether
    /// llama-quantize's imatrix rule refuses the plan.
    fn plan_with(ft: &str, n_head_kv: usize, imatrix: bool) -> (Vec<(String, GgmlType)>, bool) {
        let ns = names(16, false);
        let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
        let preset = Preset::parse(ft).unwrap();
        let ov = Overrides::default();
        let mut p = PresetPlanner::new(preset, ov, imatrix, 8, n_head_kv, 16, &refs);
        let mut refused = false;
        let plan = ns
            .iter()
            .map(|n| {
                let dims: Vec<u64> = if n.contains("norm") {
                    vec![256]
                } else {
                    vec![256, 256]
                };
                let d = TensorDesc {
                    name: n,
                    dims: &dims,
                };
                let (t, _) = p.choose(&d, GgmlType::F32);
                refused |= p.check_imatrix(n, dims.len(), t).is_err();
                (n.clone(), t)
            })
            .collect();
        (plan, refused)
    }

    /// The i-quant presets against llama_tensor_get_type_impl's branches (16 layers:
    /// n/8 = 2, 7n/8 = 14), without GQA unless said.
    #[test]
    fn iquant_presets_follow_llama_quantize() {
        let layer =
            |p: &[(String, GgmlType)], s: &str, i: usize| ty(p, &format!("blk.{i}.{s}.weight"));
        for (ft, base, embd, small, out_proj) in [
            ("iq2_xxs", T::IQ2XXS, T::Q2K, T::Q2K, T::IQ2XXS),
            ("iq2_xs", T::IQ2XS, T::Q2K, T::Q2K, T::IQ2XS),
            ("iq2_s", T::IQ2XS, T::IQ3S, T::IQ3S, T::IQ3S),
            ("iq2_m", T::IQ2S, T::IQ3S, T::IQ3S, T::IQ3S),
            ("iq1_s", T::IQ1S, T::Q2K, T::Q2K, T::IQ2XXS),
            ("iq1_m", T::IQ1M, T::Q2K, T::Q2K, T::IQ2XXS),
        ] {
            let (p, refused) = plan_with(ft, 8, true);
            assert!(!refused, "{ft}");
            assert_eq!(ty(&p, "output.weight"), T::Q5K, "{ft}");
            assert_eq!(ty(&p, "token_embd.weight"), embd, "{ft}");
            for i in 0..16 {
                assert_eq!(layer(&p, "attn_v", i), small, "{ft} attn_v {i}");
                let down = if i < 2 { small } else { base };
                assert_eq!(layer(&p, "ffn_down", i), down, "{ft} ffn_down {i}");
                assert_eq!(layer(&p, "attn_output", i), out_proj, "{ft} {i}");
                for s in ["attn_q", "attn_k", "ffn_gate", "ffn_up"] {
                    assert_eq!(layer(&p, s, i), base, "{ft} {s} {i}");
                }
            }
            // GQA >= 4: attention V gets Q4_K.
            let (p, _) = plan_with(ft, 2, true);
            assert_eq!(layer(&p, "attn_v", 5), T::Q4K, "{ft} gqa");
            // Without an imatrix llama-quantize refuses every one of them.
            assert!(plan_with(ft, 8, false).1, "{ft} without imatrix");
        }

        let (p, _) = plan_with("iq3_xxs", 8, true);
        assert_eq!(ty(&p, "output.weight"), T::Q5K);
        assert_eq!(ty(&p, "token_embd.weight"), T::IQ3S);
        assert_eq!(layer(&p, "attn_v", 3), T::IQ3XXS);
        assert_eq!(layer(&p, "attn_k", 3), T::IQ2S);
        assert_eq!(layer(&p, "attn_q", 3), T::IQ2S);
        assert_eq!(layer(&p, "attn_output", 3), T::IQ3S);
        assert_eq!(layer(&p, "ffn_down", 0), T::IQ3XXS);
        assert_eq!(layer(&p, "ffn_up", 0), T::IQ3XXS);
        let (p, refused) = plan_with("iq3_xxs", 8, false);
        assert!(refused);
        assert_eq!(layer(&p, "attn_v", 3), T::IQ3S);
        assert_eq!(layer(&p, "ffn_down", 1), T::Q4K);
        assert_eq!(layer(&p, "ffn_down", 2), T::Q3K);
        assert_eq!(layer(&plan_with("iq3_xxs", 2, true).0, "attn_v", 3), T::Q4K);

        let (p, refused) = plan_with("iq3_xs", 8, true);
        assert!(!refused);
        assert_eq!(ty(&p, "output.weight"), T::Q6K);
        assert_eq!(layer(&p, "attn_v", 0), T::IQ3S);
        assert_eq!(layer(&p, "attn_k", 0), T::IQ3XXS);
        assert_eq!(layer(&p, "attn_q", 0), T::IQ3XXS);
        for i in 0..16 {
            let mid = if (2..14).contains(&i) {
                T::IQ3XXS
            } else {
                T::IQ3S
            };
            assert_eq!(layer(&p, "ffn_gate", i), mid, "ffn_gate {i}");
            assert_eq!(layer(&p, "ffn_up", i), mid, "ffn_up {i}");
            assert_eq!(layer(&p, "ffn_down", i), T::IQ3S, "ffn_down {i}");
        }
        assert_eq!(layer(&plan_with("iq3_xs", 2, true).0, "attn_v", 0), T::Q4K);
        // IQ3_XS puts IQ3_XXS on attention Q and K: refused without an imatrix.
        assert!(plan_with("iq3_xs", 8, false).1);

        let (p, refused) = plan_with("iq3_m", 8, false);
        assert!(!refused);
        assert_eq!(layer(&p, "attn_v", 9), T::Q4K);
        assert_eq!(layer(&p, "attn_output", 9), T::Q4K);
        assert_eq!(layer(&p, "ffn_down", 1), T::Q4K);
        assert_eq!(layer(&p, "ffn_down", 2), T::IQ3S);
        assert_eq!(layer(&p, "attn_q", 2), T::IQ3S);
        let (p, refused) = plan_with("iq3_s", 8, false);
        assert!(!refused);
        assert!(p
            .iter()
            .filter(|x| x.0.starts_with("blk.") && !x.0.contains("norm"))
            .all(|x| x.1 == T::IQ3S));

        let (p, _) = plan_with("q2_k_s", 2, true);
        assert_eq!(layer(&p, "attn_v", 9), T::Q4K);
        assert_eq!(layer(&p, "ffn_down", 1), T::Q4K);
        assert_eq!(layer(&p, "ffn_down", 2), T::Q2K);
        assert_eq!(layer(&p, "attn_output", 2), T::Q2K);
        assert_eq!(ty(&p, "output.weight"), T::Q6K);
        assert_eq!(layer(&plan_with("q2_k_s", 8, true).0, "attn_v", 9), T::Q2K);
        assert!(plan_with("q2_k_s", 8, false).1);
        assert!(!plan_with("q2_k", 8, false).1);

        let (p, refused) = plan_with("mxfp4_moe", 8, false);
        assert!(!refused);
        for (n, t) in &p {
            let want = if n.contains("norm") { T::F32 } else { T::Q8_0 };
            assert_eq!(*t, want, "mxfp4_moe {n}");
        }
    }

    /// The edge presets' expert-count rules (llama_tensor_get_type_impl) and MXFP4_MOE's
    /// MXFP4 on stacked experts only.
    #[test]
    fn edge_presets_follow_the_expert_rules() {
        let ns = names(16, false);
        let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
        let plan = |ft: &str, n_expert: usize| {
            let mut p = PresetPlanner::new(
                Preset::parse(ft).unwrap(),
                Overrides::default(),
                true,
                8,
                8,
                16,
                &refs,
            )
            .with_experts(n_expert);
            let mut got = std::collections::HashMap::new();
            for n in &ns {
                let stacked = n.contains("ffn_") && n_expert > 0;
                let dims: Vec<u64> = match (n.contains("norm"), stacked) {
                    (true, _) => vec![256],
                    (false, true) => vec![256, 256, n_expert as u64],
                    (false, false) => vec![256, 256],
                };
                let d = TensorDesc {
                    name: n,
                    dims: &dims,
                };
                got.insert(n.clone(), p.choose(&d, T::F32).0);
            }
            got
        };
        for ft in ["iq2_xxs", "iq2_m", "iq1_s"] {
            let g = plan(ft, 8);
            assert_eq!(g["blk.3.attn_v.weight"], T::Q4K, "{ft}");
            assert_eq!(g["blk.3.attn_k.weight"], T::Q4K, "{ft}");
            assert_eq!(g["blk.3.attn_output.weight"], T::Q5K, "{ft}");
            let g = plan(ft, 4);
            assert_eq!(g["blk.3.attn_v.weight"], T::Q4K, "{ft}");
            assert_ne!(g["blk.3.attn_k.weight"], T::Q4K, "{ft}");
            assert_ne!(g["blk.3.attn_output.weight"], T::Q5K, "{ft}");
        }
        for ft in ["iq3_xxs", "iq3_xs", "iq3_s", "iq3_m"] {
            assert_eq!(plan(ft, 8)["blk.3.attn_output.weight"], T::Q5K, "{ft}");
            assert_eq!(plan(ft, 8)["blk.3.attn_v.weight"], T::Q8_0, "{ft}");
        }
        // IQ3_M with 8 experts: ffn_down on the use_more_bits layers too (layer 4: (4-2)%3 == 2).
        assert_eq!(plan("iq3_m", 8)["blk.4.ffn_down.weight"], T::Q4K);
        assert_eq!(plan("iq3_m", 8)["blk.5.ffn_down.weight"], T::IQ3S);
        assert_eq!(plan("iq3_m", 0)["blk.4.ffn_down.weight"], T::IQ3S);
        let g = plan("mxfp4_moe", 4);
        assert_eq!(g["blk.3.ffn_up.weight"], T::MXFP4);
        assert_eq!(g["blk.3.attn_q.weight"], T::Q8_0);
        assert_eq!(g["token_embd.weight"], T::Q8_0);
        assert_eq!(g["output.weight"], T::Q8_0);
    }

    #[test]
    fn overrides_win() {
        let ns = names(2, false);
        let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
        let ov = Overrides {
            tensor_types: vec![Overrides::parse_tensor_type("attn_.*=q8_0").unwrap()],
            output_type: Some(T::F16),
            embedding_type: Some(T::Q8_0),
            pure: false,
        };
        let mut p = PresetPlanner::new(Preset::parse("q4_k_m").unwrap(), ov, false, 8, 2, 2, &refs);
        let d = [256u64, 256];
        assert_eq!(
            p.choose(
                &TensorDesc {
                    name: "blk.0.attn_v.weight",
                    dims: &d
                },
                T::F32
            )
            .0,
            T::Q8_0
        );
        assert_eq!(
            p.choose(
                &TensorDesc {
                    name: "output.weight",
                    dims: &d
                },
                T::F32
            )
            .0,
            T::F16
        );
        assert_eq!(
            p.choose(
                &TensorDesc {
                    name: "token_embd.weight",
                    dims: &d
                },
                T::F32
            )
            .0,
            T::Q8_0
        );
        assert_eq!(
            p.choose(
                &TensorDesc {
                    name: "blk.0.ffn_up.weight",
                    dims: &d
                },
                T::F32
            )
            .0,
            T::Q4K
        );
        assert!(Overrides::parse_tensor_type("nonsense").is_err());
        assert!(Overrides::parse_tensor_type("x=q9_9").is_err());
    }

    #[test]
    fn q3_k_m_and_q2_k_rules() {
        let p = plan("q3_k_m", 16, 256, false);
        assert_eq!(ty(&p, "blk.0.attn_v.weight"), T::Q5K);
        assert_eq!(ty(&p, "blk.1.attn_v.weight"), T::Q5K);
        assert_eq!(ty(&p, "blk.2.attn_v.weight"), T::Q4K);
        assert_eq!(ty(&p, "blk.0.ffn_down.weight"), T::Q5K);
        assert_eq!(ty(&p, "blk.1.ffn_down.weight"), T::Q4K);
        assert_eq!(ty(&p, "blk.3.attn_output.weight"), T::Q4K);
        let p = plan("q2_k", 4, 256, false);
        assert_eq!(ty(&p, "blk.0.attn_v.weight"), T::Q4K); // n_gqa = 4
        assert_eq!(ty(&p, "blk.0.ffn_down.weight"), T::Q3K);
        assert_eq!(ty(&p, "blk.0.attn_q.weight"), T::Q2K);
    }
}
