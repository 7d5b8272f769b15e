//! Helpers for integration tests: tiny synthetic checkpoints written on the fly, and
//! the shared model and corpus beside the checkout ([`shared_data`]).
#![allow(dead_code)]

mod shared;
#[allow(unused_imports)] // not every test uses it
pub use shared::shared_data;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use std::path::Path;

/// A tiny Llama config: hidden 64, 2 layers, 4 heads (2 kv), ffn 128, vocab 96.
pub fn llama_config() -> serde_json::Value {
    json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
           "tie_word_embeddings": false, "torch_dtype": "float32"})
}

/// The tensors of `llama_config()` with deterministic values.
pub fn llama_tensors() -> Vec<(String, Vec<usize>)> {
    llama_tensors_sized(96, 64, 32, 128, 2)
}

/// The tensors of a Llama checkpoint with the given vocabulary, width, K/V width,
/// feed-forward width and layer count (HF names and shapes).
pub fn llama_tensors_sized(
    vocab: usize,
    h: usize,
    kv: usize,
    ffn: usize,
    layers: usize,
) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, h]),
        ("model.norm.weight".to_string(), vec![h]),
        ("lm_head.weight".to_string(), vec![vocab, h]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("mlp.gate_proj.weight", vec![ffn, h]),
            ("mlp.up_proj.weight", vec![ffn, h]),
            ("mlp.down_proj.weight", vec![h, ffn]),
        ] {
            v.push((format!("{p}{n}"), s));
        }
    }
    v
}

pub fn values(name: &str, n: usize) -> Vec<f32> {
    let mut h: u64 = name.bytes().fold(1469598103934665603, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    });
    (0..n)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

/// Writes `tensors` as one f32 safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let datas: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            let v = values(n, s.iter().product());
            (
                n.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = datas
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A byte-level BPE tokenizer.json of 96 tokens (GPT-2 pre-tokenizer).
pub fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<s>".into(), json!(0));
    vocab.insert("</s>".into(), json!(1));
    for (i, c) in ('!'..='~').take(94).enumerate() {
        vocab.insert(c.to_string(), json!(i + 2));
    }
    json!({"version": "1.0",
           "added_tokens": [
             {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
             {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
           "normalizer": null,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
           "post_processor": null, "decoder": {"type": "ByteLevel"},
           "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                     "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}})
}

/// A complete tiny Llama checkpoint in `dir`.
pub fn write_llama(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&llama_config()).unwrap(),
    )
    .unwrap();
    write_safetensors(&dir.join("model.safetensors"), &llama_tensors());
}

/// A folder of `<lang>.txt` files holding the embedded corpus's text of `langs`.
pub fn corpus_dir(langs: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for d in laquant::calib::Corpus::embedded()
        .docs
        .iter()
        .filter(|d| langs.contains(&d.lang.as_str()))
    {
        std::fs::write(dir.path().join(format!("{}.txt", d.lang)), &d.text).unwrap();
    }
    dir
}
