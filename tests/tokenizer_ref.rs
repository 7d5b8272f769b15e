//! Interop: our `tokenizer.*` metadata against llama.cpp's own converter code,
//! run by scripts/tokenizer-ref.py (needs python3 with numpy, transformers
//! 4.57.6, sentencepiece and the llama.cpp source tree). Ignored by default;
//! `.ci/run` runs them with `--ignored`.
//!
//! Every key convert writes must be present with the same type and value, in
//! the same order; `tokenizer.chat_templates` is compared as a set (convert
//! builds it from a Python set).

mod tokenizer_fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;

use laquant::gguf::{Metadata, Value, ValueType};
use laquant::hf::tokenizer::{tokenizer_metadata, TokenizerOptions};
use serde_json::{json, Value as Json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::U8 => "UINT8",
        ValueType::I8 => "INT8",
        ValueType::U16 => "UINT16",
        ValueType::I16 => "INT16",
        ValueType::U32 => "UINT32",
        ValueType::I32 => "INT32",
        ValueType::F32 => "FLOAT32",
        ValueType::Bool => "BOOL",
        ValueType::String => "STRING",
        ValueType::Array => "ARRAY",
        ValueType::U64 => "UINT64",
        ValueType::I64 => "INT64",
        ValueType::F64 => "FLOAT64",
    }
}

fn scalar(v: &Value) -> Json {
    match v {
        Value::F32(x) => json!(f64::from(*x)),
        other => other.to_json(usize::MAX),
    }
}

/// Our metadata in tokenizer-ref.py's JSON shape.
pub fn to_ref_json(md: &Metadata) -> Json {
    let mut out = serde_json::Map::new();
    let order: Vec<Json> = md.iter().map(|(k, _)| json!(k)).collect();
    out.insert("_order".into(), Json::Array(order));
    for (k, v) in md {
        let entry = match v {
            Value::Array(t, items) => json!({"type": "ARRAY", "sub_type": type_name(*t),
                                             "value": items.iter().map(scalar).collect::<Vec<_>>()}),
            other => json!({"type": type_name(other.value_type()), "value": scalar(other)}),
        };
        out.insert(k.clone(), entry);
    }
    Json::Object(out)
}

fn run_ref(dir: &Path, pre: Option<&str>) -> Json {
    let out = std::env::temp_dir().join(format!(
        "laquant-tokref-{}-{}.json",
        std::process::id(),
        rand_suffix(dir)
    ));
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("scripts/tokenizer-ref.py"))
        .arg(dir)
        .arg("-o")
        .arg(&out);
    if let Some(p) = pre {
        cmd.arg("--tokenizer-pre").arg(p);
    }
    let res = cmd.output().expect("python3 runs");
    assert!(
        res.status.success(),
        "tokenizer-ref.py failed on {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&res.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    serde_json::from_str(&text).unwrap()
}

fn rand_suffix(dir: &Path) -> String {
    dir.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Compares key by key; returns the differences.
pub fn diff(ours: &Json, theirs: &Json) -> Vec<String> {
    let mut d = Vec::new();
    let ord = |j: &Json| -> Vec<String> {
        j["_order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    let (o, t) = (ord(ours), ord(theirs));
    if o != t {
        d.push(format!(
            "key order differs:\n  ours   {o:?}\n  theirs {t:?}"
        ));
    }
    for k in &t {
        let Some(a) = ours.get(k) else {
            d.push(format!("{k}: missing in ours"));
            continue;
        };
        let b = &theirs[k];
        if a["type"] != b["type"] || a.get("sub_type") != b.get("sub_type") {
            d.push(format!(
                "{k}: type ours {}/{:?} vs theirs {}/{:?}",
                a["type"],
                a.get("sub_type"),
                b["type"],
                b.get("sub_type")
            ));
            continue;
        }
        let (va, vb) = (&a["value"], &b["value"]);
        if k == "tokenizer.chat_templates" {
            let mut x: Vec<String> = va
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.to_string())
                .collect();
            let mut y: Vec<String> = vb
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.to_string())
                .collect();
            x.sort();
            y.sort();
            if x != y {
                d.push(format!("{k}: {x:?} vs {y:?}"));
            }
            continue;
        }
        if !same(va, vb) {
            if let (Some(x), Some(y)) = (va.as_array(), vb.as_array()) {
                let first = (0..x.len().max(y.len()))
                    .find(|&i| x.get(i).zip(y.get(i)).is_none_or(|(p, q)| !same(p, q)));
                let i = first.unwrap_or(0);
                d.push(format!(
                    "{k}: len {} vs {}, first difference at {i}: {:?} vs {:?}",
                    x.len(),
                    y.len(),
                    x.get(i),
                    y.get(i)
                ));
            } else {
                d.push(format!("{k}: {va} vs {vb}"));
            }
        }
    }
    d
}

fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        _ => a == b,
    }
}

fn check(dir: &Path, pre_for_ref: Option<&str>) {
    let config: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let md = tokenizer_metadata(dir, &config, &TokenizerOptions::default()).unwrap();
    let ours = to_ref_json(&md);
    let theirs = run_ref(dir, pre_for_ref);
    let d = diff(&ours, &theirs);
    assert!(
        d.is_empty(),
        "{}: {} difference(s) with convert_hf_to_gguf.py:\n{}",
        dir.display(),
        d.len(),
        d.join("\n")
    );
}

fn fixture(make: fn(&Path)) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    make(t.path());
    t
}

#[test]
#[ignore = "interop: needs python3 + transformers + the llama.cpp source"]
fn ref_polyglot_25m() {
    let dir = repo().join("../shared/models/polyglot-25m");
    // convert does not know this tokenizer's hash: pass it the name we identify.
    check(&dir, Some("llama-bpe"));
}

#[test]
#[ignore = "interop: needs python3 + transformers + the llama.cpp source"]
fn ref_bpe_llama3_fixture() {
    let t = fixture(tokenizer_fixtures::bpe_llama3);
    check(t.path(), Some("llama-bpe"));
}

#[test]
#[ignore = "interop: needs python3 + transformers + the llama.cpp source"]
fn ref_bpe_qwen2_fixture() {
    let t = fixture(|d| tokenizer_fixtures::bpe_qwen2(d, "Qwen2ForCausalLM"));
    check(t.path(), Some("qwen2"));
    let t = fixture(|d| tokenizer_fixtures::bpe_qwen2(d, "Qwen3ForCausalLM"));
    check(t.path(), Some("qwen2"));
}

#[test]
#[ignore = "interop: needs python3 + transformers + the llama.cpp source"]
fn ref_bpe_smollm_fixture() {
    let t = fixture(tokenizer_fixtures::bpe_smollm);
    check(t.path(), Some("smollm"));
}

#[test]
#[ignore = "interop: needs python3 + transformers + sentencepiece + the llama.cpp source"]
fn ref_sentencepiece_fixture() {
    let t = fixture(tokenizer_fixtures::spm_llama);
    check(t.path(), None);
}

#[test]
#[ignore = "interop: needs python3 + transformers + the llama.cpp source"]
fn ref_llama_hf_fixture() {
    let t = fixture(tokenizer_fixtures::llama_hf);
    check(t.path(), None);
}

/// Any model folder: LAQUANT_TOKREF_MODEL=DIR [LAQUANT_TOKREF_PRE=NAME].
#[test]
#[ignore = "interop: set LAQUANT_TOKREF_MODEL=DIR"]
fn ref_model_from_env() {
    let Ok(dir) = std::env::var("LAQUANT_TOKREF_MODEL") else {
        eprintln!("LAQUANT_TOKREF_MODEL is not set: nothing to compare");
        return;
    };
    let pre = std::env::var("LAQUANT_TOKREF_PRE").ok();
    check(Path::new(&dir), pre.as_deref());
}

#[test]
#[ignore = "interop: needs python3 + transformers + the llama.cpp source"]
fn ref_eot_merges_txt_named_jinja_variant() {
    let t = fixture(tokenizer_fixtures::bpe_llama3_eot_variant);
    check(t.path(), Some("llama-bpe"));
}

#[test]
#[ignore = "interop: needs python3 + transformers + the llama.cpp source"]
fn ref_chat_template_json_variant() {
    let t = fixture(tokenizer_fixtures::bpe_qwen2_template_json_variant);
    check(t.path(), Some("qwen2"));
}

#[test]
#[ignore = "interop: needs python3 + transformers + the llama.cpp source"]
fn ref_missing_specials_variant() {
    let t = fixture(tokenizer_fixtures::bpe_llama3_missing_specials_variant);
    check(t.path(), Some("llama-bpe"));
}

/// llama.cpp's own tokenizer (llama-tokenize, vocab only) on a GGUF holding our
/// tokenizer metadata must give the HF tokenizer's ids on every language of the
/// calibration corpus. Returns (languages, tokens compared).
/// Needs LAQUANT_LLAMA_CPP (the llama.cpp build folder, with bin/llama-tokenize).
fn llama_tokenize_vs_hf(model: &Path) -> (usize, usize) {
    let build = PathBuf::from(
        std::env::var("LAQUANT_LLAMA_CPP").unwrap_or_else(|_| "/root/.cache/laquant/build".into()),
    );
    let tokenize = build.join("bin/llama-tokenize");
    assert!(
        tokenize.is_file(),
        "{} not found (set LAQUANT_LLAMA_CPP)",
        tokenize.display()
    );
    let calib = repo().join("../shared/corpus/calib");
    let ck = laquant::hf::Checkpoint::open(model.to_str().unwrap()).unwrap();

    // A vocab-only GGUF: architecture, hyperparameters and our tokenizer keys.
    let mut md: Metadata = vec![(
        "general.architecture".into(),
        Value::str(ck.config.arch.gguf_arch),
    )];
    md.extend(laquant::arch::hparams_metadata(&ck.config, 0));
    md.extend(tokenizer_metadata(model, &ck.config.raw, &TokenizerOptions::default()).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("vocab.gguf");
    let f = std::fs::File::create(&gguf).unwrap();
    laquant::gguf::GgufWriter::new(std::io::BufWriter::new(f), &md, vec![])
        .unwrap()
        .finish()
        .unwrap();

    let mut langs: Vec<PathBuf> = std::fs::read_dir(&calib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    langs.sort();
    assert!(
        langs.len() >= 29,
        "expected the 29 calibration languages in {}",
        calib.display()
    );
    // HF ids for every file in one python run.
    let script = "import json,sys\nfrom transformers import AutoTokenizer\nt=AutoTokenizer.from_pretrained(sys.argv[1])\n\
                  print(json.dumps({p: t.encode(open(p,encoding='utf-8').read(), add_special_tokens=False) for p in sys.argv[2:]}))";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(model)
        .args(&langs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hf: Json = serde_json::from_slice(&out.stdout).unwrap();
    let mut failures = Vec::new();
    let mut total = 0usize;
    for p in &langs {
        let out = Command::new(&tokenize)
            .arg("-m")
            .arg(&gguf)
            .arg("-f")
            .arg(p)
            .args(["--ids", "--no-bos", "--no-parse-special", "--log-disable"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "llama-tokenize on {}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('['))
            .unwrap_or("[]");
        let ours: Vec<u64> = serde_json::from_str(line.trim()).unwrap();
        let theirs: Vec<u64> = hf[p.to_str().unwrap()]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        total += theirs.len();
        if ours != theirs {
            let i = ours
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(theirs.len()));
            failures.push(format!(
                "{}: llama.cpp {} ids, HF {} ids, first difference at {i}",
                p.display(),
                ours.len(),
                theirs.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {}",
        model.display(),
        failures.join("\n")
    );
    eprintln!(
        "{}: {} languages, {total} tokens: llama.cpp ids == HF ids",
        model.display(),
        langs.len()
    );
    (langs.len(), total)
}

/// The proof that the pre-tokenizer we identified for polyglot-25m ("llama-bpe")
/// splits text as the model was trained (forcing "gpt-2" instead breaks every language).
#[test]
#[ignore = "interop: needs LAQUANT_LLAMA_CPP (llama-tokenize) and python3 + transformers"]
fn llama_tokenize_matches_hf_on_polyglot_25m() {
    let (langs, tokens) = llama_tokenize_vs_hf(&repo().join("../shared/models/polyglot-25m"));
    assert!(langs >= 29 && tokens > 100_000);
}

/// Same on any model folder: LAQUANT_TOKREF_MODEL=DIR (SmolLM2 from shared/tools/smollm2, ...).
#[test]
#[ignore = "interop: set LAQUANT_TOKREF_MODEL=DIR, needs LAQUANT_LLAMA_CPP and python3 + transformers"]
fn llama_tokenize_matches_hf_on_model_from_env() {
    let Ok(dir) = std::env::var("LAQUANT_TOKREF_MODEL") else {
        eprintln!("LAQUANT_TOKREF_MODEL is not set: nothing to compare");
        return;
    };
    llama_tokenize_vs_hf(Path::new(&dir));
}
