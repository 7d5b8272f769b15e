//! Glue between a Hugging Face checkpoint ([`crate::hf::Checkpoint`]) and the
//! calibration forward pass: the decoder shape from `config.json`, weights read
//! through the checkpoint's memory-mapped shards, and [`run`], the library entry
//! point behind `laquant calibrate`.

use super::forward::{Family, ForwardConfig, Model, Rope, WeightSource};
use super::{
    run_model, thread_pool, tokenize_corpus, CalibError, CalibOptions, CorpusSource, Importance,
    Progress,
};
use crate::hf::{Arch, Checkpoint, Config, RopeScaling};

impl WeightSource for Checkpoint {
    fn weight(&self, hf_name: &str) -> Result<Vec<f32>, CalibError> {
        self.tensor_f32(hf_name)
            .map_err(|e| CalibError::Weights(format!("{hf_name}: {e}")))
    }
    fn has_weight(&self, hf_name: &str) -> bool {
        self.has_tensor(hf_name)
    }
}

impl ForwardConfig {
    /// The forward pass's view of `config.json`; an error for what it does not implement.
    pub fn from_hf(cfg: &Config) -> Result<ForwardConfig, CalibError> {
        let family = match cfg.arch {
            Arch::Llama => Family::Llama,
            Arch::Mistral => Family::Mistral,
            Arch::Qwen2 => Family::Qwen2,
            Arch::Qwen3 => Family::Qwen3,
        };
        let raw = &cfg.raw;
        if let Some(p) = raw.get("partial_rotary_factor").and_then(|v| v.as_f64()) {
            if p != 1.0 {
                return Err(CalibError::Unsupported(format!(
                    "partial_rotary_factor {p} (only full rotary embeddings)"
                )));
            }
        }
        if raw.get("mlp_bias").and_then(|v| v.as_bool()) == Some(true) {
            return Err(CalibError::Unsupported("mlp_bias = true".into()));
        }
        if let Some(act) = raw.get("hidden_act").and_then(|v| v.as_str()) {
            if act != "silu" {
                return Err(CalibError::Unsupported(format!(
                    "hidden_act {act:?} (only silu)"
                )));
            }
        }
        let rope = match &cfg.rope_scaling {
            None => Rope::Default,
            Some(RopeScaling::Linear { factor }) => Rope::Linear { factor: *factor },
            Some(RopeScaling::Llama3 { .. }) => Rope::Llama3 {
                factors: cfg
                    .llama3_rope_factors()
                    .ok_or_else(|| CalibError::Unsupported("llama3 rope factors".into()))?,
            },
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                beta_fast,
                beta_slow,
                ..
            }) => {
                Rope::Yarn {
                    factor: *factor,
                    original_max_position_embeddings: *original_max_position_embeddings as usize,
                    beta_fast: beta_fast.unwrap_or(32.0),
                    beta_slow: beta_slow.unwrap_or(1.0),
                    // HF scales cos/sin by attention_factor (default 0.1 ln(factor) + 1); ggml
                    // multiplies attn_factor by that same default, so pass the ratio.
                    attn_factor: attention_factor
                        .map(|a| a / (1.0 + 0.1 * factor.ln()))
                        .unwrap_or(1.0),
                }
            }
        };
        Ok(ForwardConfig {
            family,
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            n_layers: cfg.num_hidden_layers,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            rms_eps: cfg.rms_norm_eps as f32,
            rope_theta: cfg.rope_theta,
            rope,
            vocab: cfg.vocab_size,
            tied_embeddings: cfg.tie_word_embeddings,
            qkv_bias: cfg.attention_bias || family == Family::Qwen2,
        })
    }
}

/// What the imatrix file records as its dataset.
fn dataset_name(opts: &CalibOptions, langs: &[&str]) -> String {
    match &opts.corpus {
        CorpusSource::Embedded => format!("laquant-udhr-calibration-part:{}", langs.join(",")),
        CorpusSource::Dir(d) => format!("{}:{}", d.display(), langs.join(",")),
    }
}

/// Loads the model as f32 from the checkpoint (any tokenizer or weight problem is an error).
pub fn load_model(ckpt: &Checkpoint, threads: usize) -> Result<Model, CalibError> {
    let cfg = ForwardConfig::from_hf(&ckpt.config)?;
    Model::load(cfg, ckpt, threads)
}

/// Calibrates `ckpt` on the corpus in `opts`: tokenize every language, run the
/// forward pass over every chunk, and return the per-language statistics with
/// their balance weights. `progress` is called after every chunk.
pub fn run(
    ckpt: &Checkpoint,
    opts: &CalibOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Importance, CalibError> {
    let pool = thread_pool(opts.threads)?;
    let threads = pool.current_num_threads();
    pool.install(|| {
        let cfg = ForwardConfig::from_hf(&ckpt.config)?;
        let tok = super::TextTokenizer::from_dir(&ckpt.dir)?;
        let corpus = opts.corpus.load()?;
        let chunks = tokenize_corpus(&corpus, &tok, opts.ctx, opts.max_chunks)?;
        let langs: Vec<&str> = chunks.iter().map(|(l, _)| l.as_str()).collect();
        super::normalized_weights(&langs, &opts.lang_weights)?;
        // Load the weights only after the cheap checks above passed.
        let model = Model::load(cfg, ckpt, threads)?;
        let datasets = vec![dataset_name(opts, &langs)];
        run_model(&model, &chunks, opts, datasets, progress)
    })
}
