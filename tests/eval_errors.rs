//! Bad input to `laquant eval`: a GGUF of another model (architecture, tensor
//! names or shapes differ), a tensor type laquant cannot dequantize, missing
//! files, bad evaluation text and options. Each exits with code 1, names the
//! file and what is wrong, and does not panic.

mod common;

use laquant::gguf::{GgmlType, GgufFile, GgufWriter, TensorSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn convert(model: &Path, out: &Path, ty: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(["convert", model.to_str().unwrap(), "--outtype", ty])
        .args([
            "--calib",
            "none",
            "-q",
            "--force",
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// fixtures/llama-bpe at f16, made once.
fn llama_bpe_f16() -> &'static (tempfile::TempDir, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("llama-bpe-f16.gguf");
        convert(&fixture("llama-bpe"), &p, "f16");
        (d, p)
    })
}

/// A short evaluation folder (English from the embedded corpus).
fn text_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let en = laquant::calib::Corpus::embedded().docs;
    let en = en.iter().find(|d| d.lang == "en").unwrap();
    std::fs::write(d.path().join("en.txt"), &en.text).unwrap();
    d
}

fn eval(model: &Path, files: &[&Path], extra: &[&str]) -> (i32, String) {
    let dir = text_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_laquant"));
    cmd.args(["eval", model.to_str().unwrap()]);
    cmd.args(files.iter().map(|f| f.to_str().unwrap()));
    // Defaults for the flags the case does not set.
    for (flag, value) in [
        ("--eval", dir.path().to_str().unwrap()),
        ("--ctx", "32"),
        ("--chunks", "1"),
    ] {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.arg("-q").args(extra);
    let o = cmd.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn expect_failure(model: &Path, files: &[&Path], extra: &[&str], needles: &[&str]) {
    let (code, err) = eval(model, files, extra);
    assert_eq!(code, 1, "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

#[test]
fn a_good_file_passes_the_checks() {
    let (_, f16) = llama_bpe_f16();
    let (code, err) = eval(&fixture("llama-bpe"), &[f16], &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn missing_file() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.gguf");
    expect_failure(
        &fixture("llama-bpe"),
        &[&missing],
        &[],
        &["nope.gguf", "no such file"],
    );
}

#[test]
fn not_a_gguf_file() {
    let d = tempfile::tempdir().unwrap();
    let junk = d.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file at all, just text").unwrap();
    expect_failure(
        &fixture("llama-bpe"),
        &[&junk],
        &[],
        &["junk.gguf", "not a GGUF"],
    );
}

#[test]
fn gguf_of_a_model_with_other_shapes() {
    let d = tempfile::tempdir().unwrap();
    let other = d.path().join("other");
    common::write_llama(&other);
    let gguf = d.path().join("other-f16.gguf");
    convert(&other, &gguf, "f16");
    expect_failure(
        &fixture("llama-bpe"),
        &[&gguf],
        &[],
        &[
            "other-f16.gguf",
            "is not a quantization of",
            "llama-bpe",
            "token_embd.weight is [96, 64]",
            "[1024, 256]",
        ],
    );
}

#[test]
fn gguf_of_another_architecture() {
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("qwen2.gguf");
    convert(&fixture("qwen2-tied"), &gguf, "f16");
    expect_failure(
        &fixture("llama-bpe"),
        &[&gguf],
        &[],
        &["qwen2.gguf", "`qwen2` model", "`llama`"],
    );
}

/// Copies `src` to `dst`, dropping `drop` and changing tensors' types by `retype`
/// (data replaced by zeros of the right size).
fn rewrite(src: &Path, dst: &Path, drop: Option<&str>, retype: Option<(&str, GgmlType)>) {
    let f = GgufFile::open(src).unwrap();
    let mut specs = Vec::new();
    let mut datas = Vec::new();
    for t in &f.tensors {
        if Some(t.name.as_str()) == drop {
            continue;
        }
        let ty = match retype {
            Some((n, ty)) if n == t.name => ty,
            _ => t.ty,
        };
        let spec = TensorSpec {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty,
        };
        let data = if ty == t.ty {
            f.tensor_data(t).to_vec()
        } else {
            vec![0u8; spec.n_bytes().unwrap() as usize]
        };
        specs.push(spec);
        datas.push(data);
    }
    let out = std::fs::File::create(dst).unwrap();
    let mut w = GgufWriter::new(out, &f.metadata, specs.clone()).unwrap();
    for (s, d) in specs.iter().zip(&datas) {
        w.write_tensor(&s.name, d).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn gguf_missing_a_tensor() {
    let (_, f16) = llama_bpe_f16();
    let d = tempfile::tempdir().unwrap();
    let cut = d.path().join("cut.gguf");
    rewrite(f16, &cut, Some("blk.1.ffn_down.weight"), None);
    expect_failure(
        &fixture("llama-bpe"),
        &[&cut],
        &[],
        &[
            "cut.gguf",
            "blk.1.ffn_down.weight",
            "model.layers.1.mlp.down_proj.weight",
            "missing",
        ],
    );
}

#[test]
fn tensor_type_laquant_cannot_dequantize() {
    let (_, f16) = llama_bpe_f16();
    let d = tempfile::tempdir().unwrap();
    // Q8_K is ggml's activation type: no weight kernel in laquant (nor in ggml's CPU matmul).
    let odd = d.path().join("q8k.gguf");
    rewrite(
        f16,
        &odd,
        None,
        Some(("blk.0.ffn_up.weight", GgmlType::Q8K)),
    );
    expect_failure(
        &fixture("llama-bpe"),
        &[&odd],
        &[],
        &[
            "q8k.gguf",
            "blk.0.ffn_up.weight",
            "Q8_K",
            "cannot dequantize",
        ],
    );
}

#[test]
fn bad_text_and_options() {
    let (_, f16) = llama_bpe_f16();
    let m = fixture("llama-bpe");
    let d = tempfile::tempdir().unwrap();
    let none = d.path().join("no-such-dir");
    expect_failure(
        &m,
        &[f16],
        &["--eval", none.to_str().unwrap()],
        &["evaluation text", "no-such-dir"],
    );
    let bad = d.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("english.txt"), "text").unwrap();
    expect_failure(
        &m,
        &[f16],
        &["--eval", bad.to_str().unwrap()],
        &["english.txt", "ISO 639-1"],
    );
    let short = d.path().join("short");
    std::fs::create_dir_all(&short).unwrap();
    std::fs::write(short.join("de.txt"), "Alle Menschen sind frei.").unwrap();
    expect_failure(
        &m,
        &[f16],
        &["--eval", short.to_str().unwrap()],
        &["de", "tokens", "2 × --ctx = 64", "smaller --ctx"],
    );
    expect_failure(&m, &[f16], &["--ctx", "2"], &["--ctx", "too small"]);
    expect_failure(&m, &[f16], &["--chunks", "0"], &["--chunks"]);
    let missing_model = d.path().join("no-model");
    expect_failure(&missing_model, &[f16], &[], &["no-model"]);
}
