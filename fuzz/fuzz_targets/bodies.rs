//! The body of every fuzz target, as plain functions over `&[u8]`: the
//! libFuzzer targets beside this file call them, and the stable test
//! `tests/malformed_fuzz.rs` replays the seed corpus, every saved crash
//! (`fuzz/regressions/<target>/`) and a few thousand mutations through them.
//! Each body may return early on an error, and must never panic, hang or
//! allocate without bound, whatever the input.
#![allow(dead_code)]

use laquant::calib::imatrix::Imatrix;
use laquant::gguf::GgufFile;
use laquant::hf::safetensors::Shards;
use laquant::hf::tokenizer::sentencepiece::{encode_pieces, parse_pieces};
use laquant::hf::tokenizer::{tokenizer_metadata, TokenizerOptions};
use laquant::hf::Config;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A fuzz target's body.
pub type Body = fn(&[u8]);

/// Every target by name, for scripts and the replay test.
pub const TARGETS: &[(&str, Body)] = &[
    ("safetensors", safetensors),
    ("safetensors_index", safetensors_index),
    ("config", config),
    ("tokenizer_json", tokenizer_json),
    ("tokenizer_model", tokenizer_model),
    ("gguf", gguf),
    ("imatrix_dat", imatrix_dat),
    ("imatrix_gguf", imatrix_gguf),
];

/// A per-process scratch folder (in /dev/shm when present, so writes stay in memory).
fn scratch_dir(tag: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("laquant-fuzz-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes this process's scratch folders.
pub fn cleanup() {
    for tag in ["safetensors_index", "tokenizer_json"] {
        for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
            let _ = std::fs::remove_dir_all(
                base.join(format!("laquant-fuzz-{tag}-{}", std::process::id())),
            );
        }
    }
}

/// A valid F32 safetensors image of the given tensors (zeros).
fn safetensors_image(tensors: &[(&str, &[usize])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, shape) in tensors {
        let n: usize = shape.iter().product::<usize>() * 4;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.resize(out.len() + off, 0);
    out
}

/// A single `model.safetensors` image: header length, JSON header,
/// dtype/shape/offset validation, then every tensor it accepted is read.
pub fn safetensors(data: &[u8]) {
    let Ok(s) = Shards::from_bytes(data) else {
        return;
    };
    for name in &s.order {
        let e = s.entry(name).expect("every ordered name has an entry");
        let n: usize = e.shape.iter().product();
        let _ = s.raw(e);
        let mut out = vec![0f32; n];
        let _ = s.read_f32_into(name, &mut out);
        // A wrong-sized buffer is an error, never a panic.
        let mut short = vec![0f32; n.saturating_sub(1)];
        let _ = s.read_f32_into(name, &mut short);
    }
}

/// `model.safetensors.index.json` in a folder holding two small valid shards
/// (a, b in 00001; c in 00002) and nothing else.
pub fn safetensors_index(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let d = DIR.get_or_init(|| {
        let d = scratch_dir("safetensors_index");
        std::fs::write(
            d.join("model-00001-of-00002.safetensors"),
            safetensors_image(&[("a.weight", &[2, 2]), ("b.weight", &[3])]),
        )
        .unwrap();
        std::fs::write(
            d.join("model-00002-of-00002.safetensors"),
            safetensors_image(&[("c.weight", &[4])]),
        )
        .unwrap();
        d
    });
    std::fs::write(d.join("model.safetensors.index.json"), data).unwrap();
    if let Ok(s) = Shards::open(d) {
        // Whatever the index accepted resolves to a shard inside the folder.
        for name in &s.order {
            assert!(s.shard_path(s.entry(name).unwrap()).starts_with(d));
        }
    }
}

const NAMES: &[&str] = &[
    "model.embed_tokens.weight",
    "lm_head.weight",
    "model.norm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.k_proj.bias",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.4095.mlp.up_proj.weight",
    "model.layers.99999999999999999999.mlp.up_proj.weight",
];

/// `config.json`: JSON, every key check, then what the converter derives from
/// an accepted config (hyperparameter metadata, llama3 rope factors, tensor
/// names and expected shapes).
pub fn config(data: &[u8]) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(cfg) = Config::from_json(json, "config.json".into()) else {
        return;
    };
    let _ = laquant::arch::hparams_metadata(&cfg, 1);
    let _ = cfg.llama3_rope_factors();
    for n in NAMES {
        if let Ok(Some(m)) = laquant::arch::map_name(&cfg, n) {
            let _ = laquant::arch::expected_shape(&cfg, &m);
        }
    }
}

/// The tokenizer conversion from `tokenizer.json` (and optionally
/// `tokenizer_config.json`) to `tokenizer.*` GGUF metadata. Input: a selector
/// byte (bit 0: Llama or Qwen2; bit 1: config has `vocab_size`, from the next
/// two bytes), tokenizer.json, then optionally 0xFF (never in UTF-8) and
/// tokenizer_config.json.
pub fn tokenizer_json(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let mut config = serde_json::json!({
        "architectures": [if sel & 1 == 0 { "LlamaForCausalLM" } else { "Qwen2ForCausalLM" }],
    });
    if sel & 2 != 0 && rest.len() >= 2 {
        config["vocab_size"] = serde_json::json!(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    let (tok, tok_config) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let d = DIR.get_or_init(|| scratch_dir("tokenizer_json"));
    std::fs::write(d.join("tokenizer.json"), tok).unwrap();
    let tc = d.join("tokenizer_config.json");
    match tok_config {
        Some(b) => std::fs::write(&tc, b).unwrap(),
        None => {
            let _ = std::fs::remove_file(&tc);
        }
    }
    let _ = tokenizer_metadata(d, &config, &TokenizerOptions::default());
}

/// The SentencePiece `tokenizer.model` protobuf reader.
pub fn tokenizer_model(data: &[u8]) {
    if let Ok(pieces) = parse_pieces(data) {
        // What we accept re-encodes to something we read back the same.
        let again = parse_pieces(&encode_pieces(&pieces)).expect("re-encoded pieces parse");
        assert_eq!(again.len(), pieces.len());
    }
}

/// The GGUF reader (inspect, eval, imatrix import): header, metadata, tensor
/// infos and data bounds, then what inspect prints and every tensor's data.
pub fn gguf(data: &[u8]) {
    let Ok(f) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = laquant::inspect::to_text(&f);
    let _ = laquant::inspect::to_json(&f);
    for t in &f.tensors {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        let _ = f.tensor_f32(t);
    }
}

/// The legacy imatrix `.dat` reader (`common_imatrix_load_legacy`'s format).
pub fn imatrix_dat(data: &[u8]) {
    if data.starts_with(b"GGUF") {
        return; // imatrix_gguf covers that branch
    }
    if let Ok(m) = Imatrix::from_bytes(data.to_vec(), Path::new("fuzz.dat")) {
        for name in m.entries.keys() {
            let _ = m.mean(name);
        }
        let _ = m.to_dat_bytes();
    }
}

/// The imatrix GGUF reader (`<weight>.in_sum2` / `<weight>.counts` pairs).
pub fn imatrix_gguf(data: &[u8]) {
    let mut bytes = Vec::with_capacity(data.len() + 4);
    if !data.starts_with(b"GGUF") {
        bytes.extend_from_slice(b"GGUF");
    }
    bytes.extend_from_slice(data);
    if let Ok(m) = Imatrix::from_bytes(bytes, Path::new("fuzz.gguf")) {
        for name in m.entries.keys() {
            let _ = m.mean(name);
        }
        let _ = m.to_gguf_bytes();
    }
}
