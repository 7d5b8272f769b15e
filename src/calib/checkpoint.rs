//! Glue between a Hugging Face checkpoint ([`crate::hf::Checkpoint`]) and the
//! calibration forward pass: the decoder shape from `config.json`, weights read
//! through the checkpoint's memory-mapped shards, and [`run`], the library entry
//! point behind `laquant calibrate`.

use super::forward::{ForwardConfig, Model, Rope, TapSums, WeightSource};
use super::{
    budget, cache, run_layered, tokenize_corpus, CalibError, CalibOptions, CorpusSource,
    Importance, Progress,
};
use crate::arch::{Act, AttentionKind, Ffn, NormTopK, Positions, Residual};
use crate::hf::{Checkpoint, Config, RopeScaling};

/// Calibration refuses non-finite weights as `convert` does: their statistics
/// would be NaN.
fn finite(hf_name: &str, row: usize, v: &[f32]) -> Result<(), CalibError> {
    crate::pipeline::rows::first_non_finite(v).map_err(|nf| {
        CalibError::Weights(format!(
            "tensor {hf_name}: value {} at row {row}, column {} is not finite",
            nf.value, nf.col
        ))
    })
}

impl WeightSource for Checkpoint {
    /// Widened from the map, whose pages are then dropped from the resident set
    /// (the f32 copy is what the caller keeps).
    fn weight(&self, hf_name: &str) -> Result<Vec<f32>, CalibError> {
        let err = |e: crate::hf::HfError| CalibError::Weights(format!("{hf_name}: {e}"));
        let v = self.tensor_f32(hf_name).map_err(err)?;
        if let Some(e) = self.shards.entry(hf_name) {
            self.shards.release(e);
            let shape = self.tensor_shape(hf_name).map_err(err)?;
            let width = shape.last().copied().unwrap_or(1).max(1);
            for (r, row) in v.chunks(width).enumerate() {
                finite(hf_name, r, row)?;
            }
        }
        Ok(v)
    }
    /// Only the rows asked for are widened (token embeddings of a calibration batch).
    fn rows(&self, hf_name: &str, width: usize, rows: &[usize]) -> Result<Vec<f32>, CalibError> {
        let e = self
            .shards
            .entry(hf_name)
            .ok_or_else(|| CalibError::Weights(format!("tensor {hf_name} is missing")))?;
        let mut out = vec![0f32; rows.len() * width];
        self.tensor_rows_f32(hf_name, width, rows, &mut out)
            .map_err(|e| CalibError::Weights(e.to_string()))?;
        for (o, &r) in out.chunks_exact(width.max(1)).zip(rows) {
            finite(hf_name, r, o)?;
        }
        self.shards.release(e);
        Ok(out)
    }
    fn has_weight(&self, hf_name: &str) -> bool {
        self.has_tensor(hf_name)
    }
    /// A tensor the checkpoint stores as MXFP4 (gpt-oss's experts) is written
    /// as such, so ggml's matmul rounds its input to MXFP4's `vec_dot_type`
    /// (Q8_0); every other tensor's input is left unchanged.
    fn activation(&self, hf_name: &str) -> super::actquant::ActQuant {
        if self
            .shards
            .entry(hf_name)
            .is_some_and(|e| e.mxfp4.is_some())
        {
            super::actquant::ActQuant::for_weight(crate::gguf::GgmlType::MXFP4)
        } else {
            super::actquant::ActQuant::F32
        }
    }
    /// Read 256 rows at a time from the map (their pages dropped after each
    /// block), so the layer never exists in f32.
    fn packed_bf16(
        &self,
        hf_name: &str,
        n: usize,
        k: usize,
    ) -> Result<crate::calib::amx::PackedBf16, CalibError> {
        let e = self
            .shards
            .entry(hf_name)
            .ok_or_else(|| CalibError::Weights(format!("tensor {hf_name} is missing")))?;
        super::forward::check_len(hf_name, e.shape.iter().product(), n * k)?;
        crate::calib::amx::PackedBf16::pack_by_rows(n, k, 256, |r0, count| {
            let rows: Vec<usize> = (r0..r0 + count).collect();
            self.rows(hf_name, k, &rows)
        })
    }
}

impl ForwardConfig {
    /// The forward pass's view of `config.json`; an error for what it does not implement.
    pub fn from_hf(cfg: &Config) -> Result<ForwardConfig, CalibError> {
        check_supported(cfg)?;
        Ok(ForwardConfig {
            arch: cfg.arch,
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            n_layers: cfg.num_hidden_layers,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            rope_dim: cfg.rope_dim,
            rms_eps: cfg.rms_norm_eps as f32,
            rope_theta: cfg.rope_theta,
            rope: rope_from_hf(cfg)?,
            vocab: cfg.vocab_size,
            tied_embeddings: cfg.tie_word_embeddings,
            qkv_bias: cfg.attention_bias || cfg.arch.block.attention.qkv_bias_always,
            scales: scales_from_hf(cfg),
            swa: cfg.arch.block.attention.sliding.and_then(|s| {
                Some(super::forward::Swa {
                    window: cfg.u32_param(s.window)? as usize,
                    period: s.period,
                    rope_theta: s.rope_base.and_then(|k| cfg.f32_param(k)).map(f64::from),
                })
            }),
            moe: moe_from_hf(cfg),
        })
    }
}

/// What the forward pass does not implement in a config its family's
/// converter accepts: a partial rotary embedding in a full-RoPE family, MLP
/// biases, an activation other than the one llama.cpp's graph applies, a
/// sequential residual in a parallel-residual family.
fn check_supported(cfg: &Config) -> Result<(), CalibError> {
    let raw = &cfg.raw;
    if cfg.rope_dim != cfg.head_dim && cfg.arch.block.positions == Positions::RopeFull {
        return Err(CalibError::Unsupported(format!(
            "a partial rotary embedding ({} of {} dimensions) in a {} model (only full rotary embeddings)",
            cfg.rope_dim, cfg.head_dim, cfg.arch.gguf_arch
        )));
    }
    if raw.get("mlp_bias").and_then(|v| v.as_bool()) == Some(true) {
        return Err(CalibError::Unsupported("mlp_bias = true".into()));
    }
    // The activation llama.cpp's graph applies for the family (GELU: its
    // tanh approximation, whatever GELU the config names).
    let (Ffn::Gated { act } | Ffn::GatedFused { act } | Ffn::Plain { act } | Ffn::Moe { act, .. }) =
        cfg.arch.block.ffn;
    let want = match act {
        // gpt-oss's config names silu for its clamped SwiGLU.
        Act::Silu | Act::SwigluOai => "silu",
        Act::Gelu => "gelu",
    };
    for key in ["hidden_act", "activation_function"] {
        if let Some(a) = raw.get(key).and_then(|v| v.as_str()) {
            if !a.starts_with(want) {
                return Err(CalibError::Unsupported(format!(
                    "{key} {a:?} in a {} model (its graph in llama.cpp applies {want})",
                    cfg.arch.gguf_arch
                )));
            }
        }
    }
    if cfg.arch.block.residual == Residual::Parallel && !cfg.parallel_residual {
        return Err(CalibError::Unsupported(format!(
            "use_parallel_residual = false in a {} model (only the parallel residual)",
            cfg.arch.gguf_arch
        )));
    }
    Ok(())
}

/// The RoPE variant of the config's `rope_scaling`, with the values ggml takes.
fn rope_from_hf(cfg: &Config) -> Result<Rope, CalibError> {
    Ok(match &cfg.rope_scaling {
        None => Rope::Default,
        Some(RopeScaling::Linear { factor }) => Rope::Linear { factor: *factor },
        Some(RopeScaling::LongRope {
            long_factor,
            short_factor,
            original_max_position_embeddings,
            attn_factor,
        }) => Rope::LongRope {
            short: short_factor.clone(),
            long: long_factor.clone(),
            original: *original_max_position_embeddings as usize,
            attn_factor: *attn_factor,
        },
        Some(RopeScaling::Llama3 { .. } | RopeScaling::Frequencies { .. }) => Rope::Llama3 {
            factors: cfg
                .rope_freqs()
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
    })
}

/// The scales the family's block applies, from the config keys its spec names.
fn scales_from_hf(cfg: &Config) -> super::forward::Scales {
    let b = &cfg.arch.block;
    let s = b.scales;
    let get = |k: Option<&str>| k.and_then(|k| cfg.f32_param(k));
    // llama.cpp's `ggml_scale(inpL, sqrtf(n_embd))`.
    let sqrt_hidden = s
        .embedding_sqrt_hidden
        .then(|| (cfg.hidden_size as f32).sqrt());
    super::forward::Scales {
        embedding: get(s.embedding).or(sqrt_hidden),
        attention: get(s.attention),
        residual: get(s.residual),
        logit_divisor: get(s.logit_divisor),
        query: get(b.attention.query_scale.map(|q| q.key)).map(|v| 1.0 / v.sqrt()),
        attn_softcap: get(b.attention.softcap),
        final_softcap: get(s.final_softcap),
    }
}

/// A mixture of experts' shape (`None` for a dense block).
fn moe_from_hf(cfg: &Config) -> Option<super::forward::MoeShape> {
    let Ffn::Moe {
        norm_top_k,
        shared_expert,
        ..
    } = cfg.arch.block.ffn
    else {
        return None;
    };
    Some(super::forward::MoeShape {
        n_expert: cfg.n_expert.unwrap_or(0),
        n_used: cfg.n_expert_used.unwrap_or(0),
        ff: cfg.moe_intermediate_size.unwrap_or(cfg.intermediate_size),
        shared_ff: if shared_expert {
            cfg.shared_expert_intermediate_size
                .unwrap_or(cfg.intermediate_size)
        } else {
            0
        },
        norm_top_k: norm_top_k == NormTopK::Always,
    })
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
    let size = budget::Size {
        max_chunks: opts.max_chunks,
        rule: "as asked".into(),
    };
    let run = run_cached(ckpt, opts, size, None, &mut |e| {
        if let Event::Progress(p) = e {
            progress(p)
        }
    })?;
    Ok(run.importance)
}

/// What [`run_cached`] says as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The cost, before the forward pass; again with the time once the first
    /// part of it ran ([`budget::warm`]).
    Estimate(&'a budget::Estimate),
    /// Another step of the forward pass.
    Progress(&'a Progress<'a>),
    /// A cache entry was unusable (why), and the calibration runs again.
    Warning(&'a str),
}

/// A calibration and what it cost.
#[derive(Debug, Clone)]
pub struct Calibrated {
    /// The per-language statistics.
    pub importance: Importance,
    /// The cost (with the measured time when the forward pass ran long enough).
    pub estimate: budget::Estimate,
    /// What the cache did.
    pub cache: cache::Outcome,
}

/// [`run`] sized by `size` (`opts.max_chunks` is ignored), reusing the
/// statistics in `store` when it holds them and storing them otherwise
/// ([`cache`]); `on` hears the estimate before the forward pass runs.
pub fn run_cached(
    ckpt: &Checkpoint,
    opts: &CalibOptions,
    size: budget::Size,
    store: Option<&cache::Store>,
    on: &mut (dyn FnMut(Event) + Send),
) -> Result<Calibrated, CalibError> {
    super::in_pool(opts.threads, |threads| {
        let cfg = ForwardConfig::from_hf(&ckpt.config)?;
        let tok = super::TextTokenizer::from_dir(&ckpt.dir)?;
        let corpus = opts.corpus.load()?;
        let chunks = tokenize_corpus(&corpus, &tok, opts.ctx, size.max_chunks)?;
        let langs: Vec<&str> = chunks.iter().map(|(l, _)| l.as_str()).collect();
        let weights = super::normalized_weights(&langs, &opts.lang_weights)?;
        let datasets = vec![dataset_name(opts, &langs)];
        let mut estimate = budget::Estimate::new(&cfg, &chunks, opts.ctx, size);
        on(Event::Estimate(&estimate));
        let matmul = opts.matmul.resolve()?;
        let key = match store {
            Some(s) => {
                let key = cache::Key {
                    model: cache::model_fingerprint(ckpt)?,
                    chunks: &chunks,
                    datasets: &datasets,
                    process_output: opts.process_output,
                    matmul: matmul.name(),
                }
                .hash();
                // An encoder's pass taps no output head (`encoder::calibrate`).
                let head = opts.process_output && !crate::eval::embed::is_encoder(&ckpt.config);
                let fresh = TapSums::new(&cfg, head);
                let why = match s.get(&key, &fresh) {
                    cache::Lookup::Hit(stats) if cache::matches(&stats, &chunks) => {
                        let importance = Importance {
                            langs: stats,
                            weights,
                            ctx: opts.ctx,
                            datasets,
                        };
                        let file = s.path(&key);
                        return Ok(Calibrated {
                            importance,
                            estimate,
                            cache: cache::Outcome::Reused { file },
                        });
                    }
                    cache::Lookup::Hit(_) => {
                        Some("it does not fit the model or the text".to_string())
                    }
                    cache::Lookup::Corrupt(why) => Some(crate::error_chain(&why)),
                    cache::Lookup::Miss => None,
                };
                if let Some(why) = why {
                    on(Event::Warning(&format!(
                        "ignoring the cached calibration {}: {why}; calibrating again",
                        s.path(&key).display()
                    )));
                }
                Some((s, key))
            }
            None => None,
        };
        // Layer by layer: one layer's weights widened at a time, read from the map.
        let mut announced = false;
        let mut step = |p: &Progress| {
            let share = p.tokens_done as f64 / p.tokens_total.max(1) as f64;
            let elapsed = p.elapsed.as_secs_f64();
            if !announced && budget::warm(elapsed, share) {
                announced = true;
                estimate.measured(elapsed, share);
                on(Event::Estimate(&estimate));
            }
            on(Event::Progress(p))
        };
        let importance = if cfg.block().attention.kind == AttentionKind::BidirectionalSeparateQkv {
            // An encoder: its own pass, sequence by sequence (calib::encoder).
            let c = &ckpt.config;
            super::encoder::calibrate(c, ckpt, &chunks, opts, datasets, threads, &mut step)?
        } else {
            run_layered(&cfg, ckpt, &chunks, opts, datasets, threads, &mut step)?
        };
        check_statistics(&importance)?;
        let cache = match key {
            None => cache::Outcome::Off,
            Some((s, key)) => match s.put(&key, &importance.langs) {
                Ok(file) => cache::Outcome::Stored { file },
                Err(e) => cache::Outcome::NotStored {
                    file: s.path(&key),
                    error: e.to_string(),
                },
            },
        };
        Ok(Calibrated {
            importance,
            estimate,
            cache,
        })
    })?
}

/// Refuses statistics that are not finite (activations that overflowed): an
/// imatrix of NaN would make every quantizer and policy choose blindly.
fn check_statistics(imp: &Importance) -> Result<(), CalibError> {
    for (name, e) in imp.to_imatrix().entries {
        if let Some(j) = e.sums.iter().position(|x| !x.is_finite()) {
            return Err(CalibError::Weights(format!(
                "the statistics of {name} are not finite ({} at column {j}): the forward pass \
                 overflowed; check the weights and config.json's norm and rope settings",
                e.sums[j]
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::actquant::ActQuant;
    use super::super::forward::{ForwardConfig, Layer, WeightSource};
    use crate::arch::Role;
    use crate::hf::Checkpoint;

    fn fixture(name: &str) -> Checkpoint {
        Checkpoint::open(&format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// gpt-oss as openai ships it: the experts stored as MXFP4 are written as
    /// such, so their matmuls' inputs are rounded to Q8_0 as ggml's are; every
    /// other matmul's (and every matmul of the same model stored in bf16) is not.
    #[test]
    fn mxfp4_experts_round_their_inputs_to_q8_0() {
        for (name, experts) in [
            ("gpt-oss-mxfp4", ActQuant::Q8_0),
            ("gpt-oss", ActQuant::F32),
        ] {
            let ck = fixture(name);
            let cfg = ForwardConfig::from_hf(&ck.config).unwrap();
            for i in 0..cfg.n_layers {
                let layer = Layer::load(&cfg, &ck, i).unwrap();
                for (m, act) in cfg.block().matmuls.iter().zip(layer.acts()) {
                    let want = match m.role.is_experts() {
                        true => experts,
                        false => ActQuant::F32,
                    };
                    assert_eq!(act, want, "{name} layer {i} {:?}", m.role);
                }
                let gate = cfg.stacked_tensor(i, Role::FfnGateExps, "weight").unwrap();
                assert_eq!(ck.activation(&gate), experts, "{name} {gate}");
            }
        }
    }
}
