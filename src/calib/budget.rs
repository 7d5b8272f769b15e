//! What a calibration will cost, said before it is paid, and how much text it
//! reads by default.
//!
//! Cost. A calibration runs every chunk through every decoder layer: per token
//! the layer's products (`h·(q + 2kv) + q·h + 3·h·ff` multiply-adds, the
//! model's *per-token size* `P` over all layers), and per chunk of `c` tokens
//! the attention's `2·c²·q` per layer. [`Estimate`] counts both from the
//! model's shape and the tokenized text, and the time on this machine is
//! extrapolated from the first part of the run ([`Estimate::seconds`]).
//!
//! Default size (sub-linear compute). Tokens per language
//! `T(P) = max(FLOOR_TOKENS, REF_TOKENS · √(REF_MACS / P))`, at most all the
//! text, in whole chunks of `--ctx` (at least one). Compute is `T · P ∝ √P`:
//! a model 100x larger calibrates 10x longer, not 100x. polyglot-25m
//! (P = 12.6M) and anything below ~50M per token read all the embedded text
//! (3,500 tokens per language on average), SmolLM2-135M (P = 106M) 2,810 tokens
//! per language (5 chunks of 512), an 8B (P = 7.0G) the floor, 512 (one chunk). The floor is
//! where the statistics stop moving much: measured by `scripts/calib-floor.sh`
//! (on polyglot-25m the imatrix moves by 2% at 512 tokens per language and the
//! la-mix plan not at all; CHANGELOG.md). `--chunks N` or `--calib-tokens N`
//! (tokens per language, 0 = all the text) set the size instead. The measured
//! sensitivity of la-mix and `--target-bpw` is sized as a share of the
//! calibration's multiply-adds ([`crate::policy::sensitivity`]), so it follows
//! the same rule.

use super::forward::ForwardConfig;
use super::LangChunks;
use serde::Serialize;

/// Fewest tokens per language the default keeps (see the module doc).
pub const FLOOR_TOKENS: usize = 512;
/// Tokens per language at the reference per-token size [`REF_MACS`].
pub const REF_TOKENS: f64 = 4096.0;
/// The reference per-token size: 50M multiply-adds.
pub const REF_MACS: f64 = 5e7;

/// Multiply-adds of the decoder layers' products per token (`P`).
pub fn macs_per_token(cfg: &ForwardConfig) -> f64 {
    // A mixture's: the router, and the experts a token runs through.
    let (h, q, kv, ff) = (
        cfg.hidden,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.ffn_active_width(),
    );
    (h * (q + 2 * kv) + q * h + 3 * h * ff + h * cfg.n_expert()) as f64 * cfg.n_layers as f64
}

/// Multiply-adds of the attention scores and mix on one chunk of `len` tokens.
pub fn attention_macs(cfg: &ForwardConfig, len: usize) -> f64 {
    2.0 * (len * len) as f64 * cfg.q_dim() as f64 * cfg.n_layers as f64
}

/// How the calibration size was chosen.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Size {
    /// At most this many chunks per language (`None`: all the text).
    pub max_chunks: Option<usize>,
    /// The rule, as the report says it (`auto: ...`, `--chunks 4`).
    pub rule: String,
}

/// The calibration size: `chunks` (`--chunks`) or `tokens` per language
/// (`--calib-tokens`, 0 = all) when given, else the default rule for `cfg`.
pub fn size(cfg: &ForwardConfig, ctx: usize, chunks: Option<usize>, tokens: Option<usize>) -> Size {
    let ctx = ctx.max(1);
    match (chunks, tokens) {
        (Some(c), _) => Size {
            max_chunks: Some(c.max(1)),
            rule: format!("--chunks {c}"),
        },
        (None, Some(0)) => Size {
            max_chunks: None,
            rule: "--calib-tokens 0: all the text".into(),
        },
        (None, Some(t)) => Size {
            max_chunks: Some(t.div_ceil(ctx).max(1)),
            rule: format!(
                "--calib-tokens {t}: {} chunk(s) of {ctx}",
                t.div_ceil(ctx).max(1)
            ),
        },
        (None, None) => {
            let p = macs_per_token(cfg).max(1.0);
            let t = default_tokens(p);
            Size {
                max_chunks: Some((t / ctx).max(1)),
                rule: format!(
                    "auto: {t} tokens per language for {:.1}M multiply-adds per token \
                     (max({FLOOR_TOKENS}, {REF_TOKENS} x sqrt({:.0}M / P))), {} chunk(s) of {ctx}",
                    p / 1e6,
                    REF_MACS / 1e6,
                    (t / ctx).max(1)
                ),
            }
        }
    }
}

/// `T(P)` of the module doc, in tokens per language.
pub fn default_tokens(macs_per_token: f64) -> usize {
    let t = REF_TOKENS * (REF_MACS / macs_per_token.max(1.0)).sqrt();
    (t as usize).max(FLOOR_TOKENS)
}

/// The calibration's cost, from the model's shape and the text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// Languages calibrated on.
    pub languages: usize,
    /// Chunks over all languages.
    pub chunks: usize,
    /// Tokens over all languages.
    pub tokens: u64,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Multiply-adds of the layers' products.
    pub matmul_macs: f64,
    /// Multiply-adds of the attention.
    pub attention_macs: f64,
    /// Estimated wall time on this machine, once the first part ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// The share of the work the time was measured on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_share: Option<f64>,
    /// How the size was chosen.
    pub size: Size,
}

/// How a user bounds the calibration (said with the estimate).
pub const BOUND_HINT: &str = "bound it with --chunks N or --calib-tokens N (per language)";

impl Estimate {
    /// The cost of running `chunks` through the model of `cfg`.
    pub fn new(cfg: &ForwardConfig, chunks: &[LangChunks], ctx: usize, size: Size) -> Estimate {
        let lens = || chunks.iter().flat_map(|(_, c)| c.iter().map(Vec::len));
        let tokens: u64 = lens().map(|l| l as u64).sum();
        Estimate {
            languages: chunks.len(),
            chunks: lens().count(),
            tokens,
            ctx,
            matmul_macs: tokens as f64 * macs_per_token(cfg),
            attention_macs: lens().map(|l| attention_macs(cfg, l)).sum(),
            seconds: None,
            measured_share: None,
            size,
        }
    }

    /// All multiply-adds.
    pub fn macs(&self) -> f64 {
        self.matmul_macs + self.attention_macs
    }

    /// Records the time: `elapsed` seconds for `share` (0-1] of the work.
    pub fn measured(&mut self, elapsed: f64, share: f64) {
        if share > 0.0 {
            self.seconds = Some(elapsed / share);
            self.measured_share = Some(share);
        }
    }

    /// The line said before calibrating (and, with the time, after the warm-up).
    pub fn describe(&self) -> String {
        match self.seconds {
            None => format!(
                "calibration: {} tokens ({} languages, {} chunks of up to {}), {} multiply-adds \
                 (matmuls {}, attention {}); {}; {BOUND_HINT}",
                self.tokens,
                self.languages,
                self.chunks,
                self.ctx,
                si(self.macs()),
                si(self.matmul_macs),
                si(self.attention_macs),
                self.size.rule,
            ),
            Some(s) => format!(
                "calibration: about {} on this machine (measured on the first {:.1}% of its {} \
                 multiply-adds); {BOUND_HINT}",
                duration(s),
                100.0 * self.measured_share.unwrap_or(0.0),
                si(self.macs()),
            ),
        }
    }
}

/// `1.9T`, `340G`.
fn si(x: f64) -> String {
    let (v, u) = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(s, _)| x >= *s)
        .map_or((x, ""), |(s, u)| (x / s, u));
    format!("{v:.1}{u}")
}

/// `42 s`, `3 min 5 s`, `2 h 10 min`.
fn duration(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// When a warm-up is long enough to extrapolate from: a second of work or 2% of it.
pub fn warm(elapsed: f64, share: f64) -> bool {
    share > 0.0 && (elapsed >= 1.0 || share >= 0.02)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::forward::Rope;

    fn shape(hidden: usize, ff: usize, layers: usize, heads: usize, kv: usize) -> ForwardConfig {
        ForwardConfig {
            arch: &crate::arch::llama::LLAMA,
            hidden,
            intermediate: ff,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: hidden / heads,
            rope_dim: hidden / heads,
            rms_eps: 1e-5,
            rope_theta: 1e4,
            rope: Rope::Default,
            vocab: 1000,
            tied_embeddings: false,
            qkv_bias: false,
            scales: Default::default(),
            swa: None,
            moe: None,
        }
    }

    #[test]
    fn the_default_size_grows_sublinearly_with_the_model() {
        let polyglot = shape(384, 1024, 8, 6, 2);
        let smol = shape(576, 1536, 30, 9, 3);
        let llama8b = shape(4096, 14336, 32, 32, 8);
        let (p0, p1, p2) = (
            macs_per_token(&polyglot),
            macs_per_token(&smol),
            macs_per_token(&llama8b),
        );
        assert!((p0 / 1e6 - 12.58).abs() < 0.01, "{p0}");
        assert!((p2 / 1e9 - 6.98).abs() < 0.01, "{p2}");
        // polyglot-25m reads more than its longest language (all the text).
        assert!(default_tokens(p0) > 5120);
        assert_eq!(size(&polyglot, 512, None, None).max_chunks, Some(15));
        assert_eq!(default_tokens(p1), 2810);
        assert_eq!(size(&smol, 512, None, None).max_chunks, Some(5));
        // The 8B is at the floor: one chunk of 512.
        assert_eq!(default_tokens(p2), FLOOR_TOKENS);
        assert_eq!(size(&llama8b, 512, None, None).max_chunks, Some(1));
        assert_eq!(size(&llama8b, 128, None, None).max_chunks, Some(4));
        // Compute per language T·P grows as √P above the floor's reach.
        let c = |p: f64| default_tokens(p) as f64 * p;
        let r = c(4.0 * p1) / c(p1);
        assert!((r - 2.0).abs() < 0.01, "{r}");
        // Given sizes win.
        assert_eq!(size(&llama8b, 512, Some(3), Some(9999)).max_chunks, Some(3));
        assert_eq!(size(&llama8b, 512, None, Some(0)).max_chunks, None);
        assert_eq!(size(&llama8b, 512, None, Some(1000)).max_chunks, Some(2));
    }

    #[test]
    fn the_estimate_counts_matmuls_and_attention() {
        let cfg = shape(64, 96, 3, 4, 2);
        let chunks: Vec<LangChunks> = vec![
            ("en".into(), vec![vec![1; 10], vec![2; 4]]),
            ("zh".into(), vec![vec![3; 10]]),
        ];
        let size = Size {
            max_chunks: None,
            rule: "all".into(),
        };
        let mut e = Estimate::new(&cfg, &chunks, 10, size);
        assert_eq!((e.languages, e.chunks, e.tokens), (2, 3, 24));
        // Per token: 64·(64+64) + 64·64 + 3·64·96 = 30720, 3 layers.
        assert_eq!(e.matmul_macs, 24.0 * 30720.0 * 3.0);
        assert_eq!(e.attention_macs, 2.0 * (100 + 16 + 100) as f64 * 64.0 * 3.0);
        assert!(e.describe().contains("24 tokens (2 languages, 3 chunks"));
        e.measured(3.0, 0.05);
        assert_eq!(e.seconds, Some(60.0));
        assert!(e.describe().contains("about 1 min 0 s"), "{}", e.describe());
        assert!(!warm(0.1, 0.01) && warm(0.1, 0.03) && warm(1.5, 0.001));
    }
}
