//! The encoder forward pass ([`laquant::calib::Encoder`]) against llama.cpp's
//! `llama-embedding` (interop stage, `#[ignore]`; run by `.ci/run`'s
//! `cargo test --release -- --ignored` with `LAQUANT_LLAMA_CPP` set). For each
//! encoder fixture (bert: mean pooling, xlmr: CLS pooling, xlmr-rerank: no
//! pooling as converted, and rank pooling with its classifier head), on seven
//! one-line prompts in seven languages of the embedded corpus:
//! - llama-embedding's token ids (`--verbose-prompt`) fed to our pass;
//! - our pooled embeddings on the HF weights equal llama-embedding's on our F32
//!   file, and our pass on the F16 and Q8_0 files (dequantized, matmul inputs
//!   rounded as ggml's CPU backend does) equal llama-embedding's on those
//!   files, within 1e-3 relative (max over prompts of max|Δ| / max|ref|: the
//!   GELU families' bound of `tests/calib_interop.rs`);
//! - the comparison is not degenerate: the prompts' embeddings differ;
//! - la-mix and `--target-bpw` files (types mixed per tensor, sensitivity
//!   measured as embedding drift) load in llama.cpp and match alike.
//!
//! llama-embedding runs with `--embd-normalize -1` (raw pooled values, printed
//! with 7 decimals) and `-fa off` (ggml_soft_max_ext, which our pass mirrors).

use laquant::calib::{Corpus, Encoder, Pooling, WeightSource};
use laquant::eval::GgufWeights;
use laquant::gguf::GgufFile;
use laquant::hf::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;

/// llama.cpp's bin folder and our harness folder.
fn tools() -> Option<(PathBuf, PathBuf)> {
    match (
        std::env::var_os("LAQUANT_LLAMA_CPP"),
        std::env::var_os("LAQUANT_HARNESS"),
    ) {
        (Some(d), Some(h)) => Some((PathBuf::from(d).join("bin"), PathBuf::from(h))),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
            assert!(
                !ci,
                "LAQUANT_LLAMA_CPP / LAQUANT_HARNESS unset under CI (scripts/llama-cpp.sh --env sets them)"
            );
            eprintln!("skipped: LAQUANT_LLAMA_CPP / LAQUANT_HARNESS unset");
            None
        }
    }
}

/// One line per language: the first `chars` characters of its embedded text,
/// whitespace collapsed.
fn prompts(chars: usize) -> Vec<String> {
    let corpus = Corpus::embedded();
    ["en", "de", "ru", "zh", "ar", "hi", "sw"]
        .iter()
        .filter_map(|l| corpus.docs.iter().find(|d| d.lang == *l))
        .map(|d| {
            let t: String = d.text.split_whitespace().collect::<Vec<_>>().join(" ");
            t.chars().take(chars).collect()
        })
        .collect()
}

/// Token ids per prompt and the output rows (pooled: one per prompt; none: one per token).
struct Theirs {
    ids: Vec<Vec<u32>>,
    rows: Vec<Vec<f32>>,
}

/// Our `llama-embed` harness (llama-embedding's computation, printed in full).
fn llama_embed(harness: &Path, gguf: &Path, prompts: &Path, pooling: Option<&str>) -> Theirs {
    let mut cmd = Command::new(harness.join("llama-embed"));
    cmd.arg(gguf).arg(prompts);
    if let Some(p) = pooling {
        cmd.args(["--pooling", p]);
    }
    let out = cmd.output().expect("run llama-embed");
    assert!(
        out.status.success(),
        "llama-embed failed on {}: {}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("llama-embed JSON");
    let mut t = Theirs {
        ids: Vec::new(),
        rows: Vec::new(),
    };
    let f = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    for p in json["prompts"].as_array().unwrap() {
        t.ids.push(
            p["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
        );
        t.rows.extend(p["rows"].as_array().unwrap().iter().map(&f));
    }
    t
}

/// llama-embedding itself (`--verbose-prompt` for its token ids, raw JSON):
/// its asynchronous logger loses the tail of stdout in most runs of a tiny
/// model, so it runs until one output is whole (at most 30 times).
fn llama_embedding(bin: &Path, gguf: &Path, prompts: &[String]) -> Theirs {
    for _ in 0..30 {
        let out = Command::new(bin.join("llama-embedding"))
            .arg("-m")
            .arg(gguf)
            .args(["-p", &prompts.join("\n")])
            .args(["--embd-normalize", "-1", "--embd-output-format", "json"])
            .args(["--verbose-prompt", "-t", "2", "-fa", "off"])
            .output()
            .expect("run llama-embedding");
        assert!(
            out.status.success(),
            "llama-embedding failed on {}: {}",
            gguf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(t) = parse(&String::from_utf8_lossy(&out.stdout), prompts.len()) {
            return t;
        }
    }
    panic!(
        "llama-embedding never printed its whole output on {} in 30 runs",
        gguf.display()
    );
}

/// Token lines (`%6d -> '%s'`, a blank line between prompts) then the JSON.
fn parse(text: &str, n_prompts: usize) -> Option<Theirs> {
    let start = text.find("{\n")?;
    let mut ids: Vec<Vec<u32>> = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for line in text[..start].lines() {
        let l = line.trim_start();
        match l.split_once(" -> '") {
            Some((id, _)) if !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) => {
                cur.push(id.parse().ok()?)
            }
            _ if l.is_empty() && !cur.is_empty() => ids.push(std::mem::take(&mut cur)),
            _ => {}
        }
    }
    if !cur.is_empty() {
        ids.push(cur);
    }
    let json: serde_json::Value = serde_json::from_str(text[start..].trim()).ok()?;
    let rows: Vec<Vec<f32>> = json["data"]
        .as_array()?
        .iter()
        .map(|d| {
            d["embedding"].as_array().map(|a| {
                a.iter()
                    .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
                    .collect()
            })
        })
        .collect::<Option<_>>()?;
    (ids.len() == n_prompts && rows.len() == n_prompts).then_some(Theirs { ids, rows })
}

fn convert(model: &Path, outtype: &str, out: &Path) {
    let st = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .arg("-q")
        .arg("convert")
        .arg(model)
        .args(["--outtype", outtype, "--calib", "none", "-o"])
        .arg(out)
        .status()
        .expect("run laquant");
    assert!(
        st.success(),
        "laquant convert {} {outtype}",
        model.display()
    );
}

/// Our rows (pooled per prompt, or every token's when not pooled) for
/// llama-embedding's ids, against its rows: max|Δ| / max|ref|.
fn compare(enc: &Encoder, src: &dyn WeightSource, theirs: &Theirs, label: &str) -> f64 {
    let mut ours: Vec<Vec<f32>> = Vec::new();
    for ids in &theirs.ids {
        let v = enc.embed(src, ids, None).expect("encoder forward");
        match enc.pooling {
            Pooling::None => ours.extend(v.chunks(enc.cfg.hidden).map(|r| r.to_vec())),
            _ => ours.push(v),
        }
    }
    assert_eq!(ours.len(), theirs.rows.len(), "{label}: row count");
    let (mut max_d, mut max_ref) = (0f64, 0f64);
    for (o, t) in ours.iter().zip(&theirs.rows) {
        // Rank pooling: llama-embedding prints n_embd values, the first n_cls_out are the scores.
        assert!(
            t.len() >= o.len(),
            "{label}: {} values, ours {}",
            t.len(),
            o.len()
        );
        for (a, b) in o.iter().zip(t) {
            assert!(a.is_finite() && b.is_finite(), "{label}: non-finite value");
            max_d = max_d.max((a - b).abs() as f64);
            max_ref = max_ref.max(b.abs() as f64);
        }
    }
    let rel = max_d / max_ref.max(1e-30);
    eprintln!(
        "{label} ({:?} pooling): max|Δ| {max_d:.3e}, max|ref| {max_ref:.3}, relative {rel:.3e}",
        enc.pooling
    );
    // Not degenerate: the first two outputs differ well beyond the bound.
    let (a, b) = (&ours[0], &ours[1]);
    let spread = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    assert!(
        spread > 10.0 * max_d.max(1e-6),
        "{label}: two prompts' outputs differ by {spread:.3e} only: a degenerate comparison"
    );
    rel
}

fn check_fixture(name: &str, pooling: Option<(&str, Pooling)>, chars: usize) {
    let Some((_, harness)) = tools() else { return };
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let tmp = tempfile::tempdir().unwrap();
    let ck = Checkpoint::open(model.to_str().unwrap()).unwrap();
    let prompts_file = tmp.path().join("prompts.txt");
    std::fs::write(&prompts_file, prompts(chars).join("\n")).unwrap();
    let mut worst = 0f64;
    for outtype in ["f32", "f16", "q8_0"] {
        let gguf = tmp.path().join(format!("{name}-{outtype}.gguf"));
        convert(&model, outtype, &gguf);
        let theirs = llama_embed(&harness, &gguf, &prompts_file, pooling.map(|p| p.0));
        assert!(
            theirs.ids.iter().all(|ids| ids.len() > 8),
            "{name}: prompts of a few tokens only: {:?}",
            theirs.ids
        );
        let over = pooling.map(|p| p.1);
        let label = format!("{name} {outtype}");
        let rel = if outtype == "f32" {
            // The HF weights, as calibration reads them.
            let enc = Encoder::load(&ck.config, &ck, over, 2).unwrap();
            compare(&enc, &ck, &theirs, &label)
        } else {
            let file = GgufFile::open(&gguf).unwrap();
            let src = GgufWeights::new(&file, &ck.config);
            let enc = Encoder::load(&ck.config, &src, over, 2).unwrap();
            compare(&enc, &src, &theirs, &label)
        };
        worst = worst.max(rel);
    }
    assert!(
        worst <= 1e-3,
        "{name}: our encoder differs from llama.cpp's by {worst:.3e} relative (bound 1e-3)"
    );
}

/// The harness computes what llama-embedding prints: same token ids, same
/// pooled values to llama-embedding's 7 decimals (bert's mean pooling, F32).
#[test]
#[ignore = "interop: needs llama.cpp (LAQUANT_LLAMA_CPP, LAQUANT_HARNESS)"]
fn harness_equals_llama_embedding() {
    let Some((bin, harness)) = tools() else {
        return;
    };
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bert");
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("bert-f32.gguf");
    convert(&model, "f32", &gguf);
    let prompts = prompts(80);
    let file = tmp.path().join("prompts.txt");
    std::fs::write(&file, prompts.join("\n")).unwrap();
    let ours = llama_embed(&harness, &gguf, &file, None);
    let theirs = llama_embedding(&bin, &gguf, &prompts);
    assert_eq!(ours.ids, theirs.ids, "token ids");
    assert_eq!(ours.rows.len(), theirs.rows.len());
    // llama-embedding decodes the prompts in one batch, the harness one by one:
    // ggml's matmuls then sum in another order (2.8e-7 measured).
    let mut worst = 0f32;
    for (a, b) in ours.rows.iter().zip(&theirs.rows) {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs() / scale);
        }
    }
    eprintln!("harness against llama-embedding: max|Δ|/max|row| {worst:.3e}");
    assert!(
        worst <= 1e-5,
        "the harness differs from llama-embedding by {worst:.3e}"
    );
}

#[test]
#[ignore = "interop: needs llama.cpp (LAQUANT_LLAMA_CPP)"]
fn bert_mean_pooling_matches_llama_embedding() {
    check_fixture("bert", None, 80);
}

#[test]
#[ignore = "interop: needs llama.cpp (LAQUANT_LLAMA_CPP)"]
fn xlmr_cls_pooling_matches_llama_embedding() {
    check_fixture("xlmr", None, 80);
}

#[test]
#[ignore = "interop: needs llama.cpp (LAQUANT_LLAMA_CPP)"]
fn xlmr_reranker_token_rows_match_llama_embedding() {
    check_fixture("xlmr-rerank", None, 40);
}

#[test]
#[ignore = "interop: needs llama.cpp (LAQUANT_LLAMA_CPP)"]
fn xlmr_reranker_rank_scores_match_llama_embedding() {
    check_fixture("xlmr-rerank", Some(("rank", Pooling::Rank)), 40);
}

/// Encoder calibration (`calib::encoder::calibrate`, what `laquant calibrate`
/// runs on an encoder): per language, Σx²/N of every matmul's input, balanced
/// over the 29 languages of the embedded corpus (one chunk of 64 tokens
/// each), equal to the same statistic from transformers' forward pass
/// (`scripts/encoder-taps-ref.py`: hooks on the HF model's Linear inputs).
/// `llama-imatrix` does not run encoders, hence this reference. 1e-3 of each
/// weight's largest column; transformers' exact GELU against ggml's tanh
/// table moves ffn_down's input most.
#[test]
#[ignore = "interop: needs transformers (the interop stage's Python)"]
fn encoder_calibration_equals_transformers_statistic() {
    use laquant::calib::{self, CalibOptions, TextTokenizer};
    if tools().is_none() {
        return;
    }
    for name in ["bert", "xlmr"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        let ck = Checkpoint::open(dir.to_str().unwrap()).unwrap();
        let tok = TextTokenizer::from_dir(&dir).unwrap();
        let opts = CalibOptions {
            ctx: 64,
            max_chunks: Some(1),
            threads: 2,
            ..CalibOptions::default()
        };
        let chunks = calib::tokenize_corpus(&Corpus::embedded(), &tok, 64, Some(1)).unwrap();
        assert_eq!(chunks.len(), 29);
        let imp =
            calib::encoder::calibrate(&ck.config, &ck, &chunks, &opts, vec![], 2, &mut |_| {})
                .unwrap();
        let ours = imp.balanced();
        let input: serde_json::Map<String, serde_json::Value> = chunks
            .iter()
            .map(|(l, c)| (l.clone(), serde_json::json!(c)))
            .collect();
        let mut child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/encoder-taps-ref.py"))
            .arg(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run python3");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(serde_json::Value::Object(input).to_string().as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "encoder-taps-ref.py failed on {name}");
        let theirs: std::collections::BTreeMap<String, Vec<f64>> =
            serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{name}: weights"
        );
        let mut worst = (0f64, String::new());
        for (k, a) in &ours {
            let b = &theirs[k];
            assert_eq!(a.len(), b.len(), "{name} {k}");
            let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f64, f64::max)
                / scale;
            if d > worst.0 {
                worst = (d, k.clone());
            }
        }
        eprintln!(
            "{name}: balanced statistic against transformers': worst {:.3e} ({})",
            worst.0, worst.1
        );
        assert!(
            worst.0 <= 1e-3,
            "{name}: {} differs from transformers' by {:.3e}",
            worst.1,
            worst.0
        );
    }
}

/// `laquant eval`'s side of an embedding model's evaluation against
/// llama.cpp: the windows eval makes of the embedded held-out text (seven
/// languages, four lines each) are llama.cpp's token ids for those lines, and
/// the pooled embeddings eval computes for a Q4_K_M file (k-quants: Q8_K
/// matmul inputs; Q6_K and Q5_K where the preset bumps) equal llama.cpp's on
/// that file within the bound above.
/// Fixture `name`'s folder, its checkpoint and a temporary folder.
fn open_fixture(name: &str) -> (PathBuf, Checkpoint, tempfile::TempDir) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let ck = Checkpoint::open(model.to_str().unwrap()).unwrap();
    (model, ck, tempfile::tempdir().unwrap())
}

fn check_eval_windows(name: &str) {
    use laquant::eval::embed;
    use laquant::eval::EvalText;
    let Some((_, harness)) = tools() else { return };
    let (model, ck, tmp) = open_fixture(name);
    let gguf = tmp.path().join(format!("{name}-q4_k_m.gguf"));
    convert(&model, "q4_k_m", &gguf);
    let mut corpus = EvalText::EmbeddedHoldout.load().unwrap();
    corpus
        .docs
        .retain(|d| ["en", "de", "ru", "zh", "ar", "hi", "ta"].contains(&d.lang.as_str()));
    let tok = laquant::calib::TextTokenizer::from_dir(&model).unwrap();
    let texts = embed::windows(&corpus, &tok, 512, Some(4), true).unwrap();
    let lines: Vec<String> = corpus
        .docs
        .iter()
        .flat_map(|d| {
            d.text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(4)
                .map(|l| l.trim_end().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let prompts_file = tmp.path().join("prompts.txt");
    std::fs::write(&prompts_file, lines.join("\n")).unwrap();
    let theirs = llama_embed(&harness, &gguf, &prompts_file, None);
    let ours_ids: Vec<Vec<u32>> = texts.iter().flat_map(|t| t.ids.clone()).collect();
    assert_eq!(texts.iter().map(|t| t.truncated).sum::<usize>(), 0);
    assert_eq!(
        ours_ids, theirs.ids,
        "{name}: eval's windows are not llama.cpp's tokens"
    );
    let file = GgufFile::open(&gguf).unwrap();
    let src = GgufWeights::new(&file, &ck.config);
    let enc = Encoder::load(&ck.config, &src, None, 2).unwrap();
    let mut done = 0;
    let emb = embed::embed_all(&enc, &src, &texts, &mut done, 0, &mut |_| {}).unwrap();
    let ours: Vec<&Vec<f32>> = emb.iter().flatten().collect();
    assert_eq!(ours.len(), theirs.rows.len());
    let (mut max_d, mut max_ref) = (0f64, 0f64);
    for (o, t) in ours.iter().zip(&theirs.rows) {
        assert_eq!(o.len(), t.len(), "{name}: embedding width");
        for (a, b) in o.iter().zip(t) {
            max_d = max_d.max((a - b).abs() as f64);
            max_ref = max_ref.max(b.abs() as f64);
        }
    }
    let rel = max_d / max_ref.max(1e-30);
    eprintln!("{name} q4_k_m, eval's windows: max|Δ| {max_d:.3e}, relative {rel:.3e}");
    assert!(
        rel <= 1e-3,
        "{name}: eval's Q4_K_M embeddings differ from llama.cpp's by {rel:.3e} relative"
    );
}

#[test]
#[ignore = "interop: needs llama.cpp (LAQUANT_LLAMA_CPP)"]
fn bert_eval_windows_match_llama_embedding_q4_k_m() {
    check_eval_windows("bert");
}

#[test]
#[ignore = "interop: needs llama.cpp (LAQUANT_LLAMA_CPP)"]
fn xlmr_eval_windows_match_llama_embedding_q4_k_m() {
    check_eval_windows("xlmr");
}

/// la-mix and `--target-bpw` files of an encoder (sensitivity measured as
/// embedding drift, types chosen per tensor): llama.cpp's harness loads
/// them, and its embeddings equal our pass on them within the presets' bound.
fn check_mixed(name: &str) {
    let Some((_, harness)) = tools() else { return };
    let (model, ck, tmp) = open_fixture(name);
    let prompts_file = tmp.path().join("prompts.txt");
    std::fs::write(&prompts_file, prompts(80).join("\n")).unwrap();
    for (label, policy) in [
        ("la-mix", &["--outtype", "la-mix"][..]),
        ("target-bpw-6", &["--target-bpw", "6"][..]),
    ] {
        let gguf = tmp.path().join(format!("{name}-{label}.gguf"));
        let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
            .args(["-q", "convert"])
            .arg(&model)
            .args(policy)
            .args(["--chunks", "1", "--ctx", "64", "--no-cache", "-o"])
            .arg(&gguf)
            .output()
            .expect("run laquant");
        assert!(
            o.status.success(),
            "{name} {label}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let file = GgufFile::open(&gguf).unwrap();
        let mut types: Vec<_> = file.tensors.iter().map(|t| t.ty.name()).collect();
        types.sort();
        types.dedup();
        assert!(types.len() >= 3, "{name} {label}: types {types:?}");
        let theirs = llama_embed(&harness, &gguf, &prompts_file, None);
        let src = GgufWeights::new(&file, &ck.config);
        let enc = Encoder::load(&ck.config, &src, None, 2).unwrap();
        let rel = compare(&enc, &src, &theirs, &format!("{name} {label} {types:?}"));
        assert!(
            rel <= 1e-3,
            "{name} {label}: our pass differs from llama.cpp's by {rel:.3e} relative (bound 1e-3)"
        );
    }
}

#[test]
#[ignore = "interop: needs llama.cpp (LAQUANT_LLAMA_CPP)"]
fn bert_mixed_files_match_llama_embedding() {
    check_mixed("bert");
}

#[test]
#[ignore = "interop: needs llama.cpp (LAQUANT_LLAMA_CPP)"]
fn xlmr_mixed_files_match_llama_embedding() {
    check_mixed("xlmr");
}
