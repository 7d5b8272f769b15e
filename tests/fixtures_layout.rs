//! Checks that the committed fixtures (made by `scripts/make-fixtures.py`) are what the rest of the
//! test suite assumes for the first four families' fixtures: generation configs, chat templates and
//! vocabularies (the size budget and the files every fixture has: tests/fixture_checks.rs), safetensors headers whose names,
//! shapes and dtypes agree with `config.json`, sharded indexes that name every tensor exactly once,
//! and the coverage the issue asks for (four families, both tokenizer formats, tied embeddings,
//! a sharded checkpoint, llama3 rope scaling, one model whose matrix widths are multiples of 256).
//! Uses only `serde_json` and the `safetensors` crate, so it does not depend on laquant's reader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

const FIXTURES: &[&str] = &[
    "llama-bpe",
    "tinyllama-spm",
    "mistral-spm",
    "qwen2-tied",
    "qwen3-sharded",
    "llama3-rope",
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn usize_of(cfg: &Value, key: &str) -> usize {
    cfg[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config key {key} missing")) as usize
}

/// (dtype, shape) of every tensor in the folder, keyed by HF name; also checks the index when sharded.
fn tensors(dir: &Path) -> BTreeMap<String, (String, Vec<usize>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no safetensors files", dir.display());
    let index = dir.join("model.safetensors.index.json");
    let mut out = BTreeMap::new();
    let mut owner = BTreeMap::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (name, view) in st.tensors() {
            let dtype = format!("{:?}", view.dtype());
            let prev = out.insert(name.clone(), (dtype, view.shape().to_vec()));
            assert!(prev.is_none(), "{name} appears in two shards");
            owner.insert(name, f.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    if files.len() > 1 {
        let idx = read_json(&index);
        let map = idx["weight_map"].as_object().expect("weight_map");
        let listed: BTreeMap<String, String> = map
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            listed,
            owner,
            "{}: index disagrees with the shards",
            index.display()
        );
    } else {
        assert!(!index.exists(), "single-file model with an index");
    }
    out
}

fn expected_dtype(cfg: &Value) -> &'static str {
    let d = cfg
        .get("torch_dtype")
        .or_else(|| cfg.get("dtype"))
        .and_then(Value::as_str)
        .expect("torch_dtype or dtype");
    match d {
        "bfloat16" => "BF16",
        "float16" => "F16",
        "float32" => "F32",
        other => panic!("unexpected dtype {other}"),
    }
}

#[test]
fn every_fixture_has_a_generation_config_template_and_vocabulary() {
    for name in FIXTURES {
        // The size bound and config/tokenizer files of every fixture:
        // tests/fixture_checks.rs (every_fixture_is_described_complete_and_small).
        let dir = fixtures_dir().join(name);
        assert!(
            dir.join("generation_config.json").is_file(),
            "{name}: generation_config.json missing"
        );
        let tc = read_json(&dir.join("tokenizer_config.json"));
        assert!(
            tc.get("chat_template").is_some() || dir.join("chat_template.jinja").is_file(),
            "{name}: no chat template"
        );
        // tokenizer.json must be a real tokenizer with a vocabulary.
        let tj = read_json(&dir.join("tokenizer.json"));
        let vocab = tj["model"]["vocab"].as_object().expect("model.vocab");
        assert!(vocab.len() >= 256, "{name}: vocab of {}", vocab.len());
        let cfg = read_json(&dir.join("config.json"));
        let n_added = tj["added_tokens"].as_array().map_or(0, Vec::len);
        assert!(
            usize_of(&cfg, "vocab_size") >= vocab.len().max(n_added),
            "{name}: config vocab_size smaller than the tokenizer"
        );
    }
}

#[test]
fn tensor_shapes_and_dtypes_match_config() {
    for name in FIXTURES {
        let dir = fixtures_dir().join(name);
        let cfg = read_json(&dir.join("config.json"));
        let arch = cfg["architectures"][0].as_str().unwrap();
        let h = usize_of(&cfg, "hidden_size");
        let ff = usize_of(&cfg, "intermediate_size");
        let nh = usize_of(&cfg, "num_attention_heads");
        let nkv = usize_of(&cfg, "num_key_value_heads");
        let hd = cfg["head_dim"].as_u64().map_or(h / nh, |x| x as usize);
        let v = usize_of(&cfg, "vocab_size");
        let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
        let mut want: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        want.insert("model.embed_tokens.weight".into(), vec![v, h]);
        want.insert("model.norm.weight".into(), vec![h]);
        if !tied {
            want.insert("lm_head.weight".into(), vec![v, h]);
        }
        for i in 0..usize_of(&cfg, "num_hidden_layers") {
            let p = format!("model.layers.{i}.");
            let mut add = |s: &str, shape: Vec<usize>| want.insert(format!("{p}{s}"), shape);
            add("input_layernorm.weight", vec![h]);
            add("post_attention_layernorm.weight", vec![h]);
            add("self_attn.q_proj.weight", vec![nh * hd, h]);
            add("self_attn.k_proj.weight", vec![nkv * hd, h]);
            add("self_attn.v_proj.weight", vec![nkv * hd, h]);
            add("self_attn.o_proj.weight", vec![h, nh * hd]);
            add("mlp.gate_proj.weight", vec![ff, h]);
            add("mlp.up_proj.weight", vec![ff, h]);
            add("mlp.down_proj.weight", vec![h, ff]);
            if arch == "Qwen2ForCausalLM" {
                add("self_attn.q_proj.bias", vec![nh * hd]);
                add("self_attn.k_proj.bias", vec![nkv * hd]);
                add("self_attn.v_proj.bias", vec![nkv * hd]);
            }
            if arch == "Qwen3ForCausalLM" {
                add("self_attn.q_norm.weight", vec![hd]);
                add("self_attn.k_norm.weight", vec![hd]);
            }
        }
        let got = tensors(&dir);
        let got_shapes: BTreeMap<String, Vec<usize>> = got
            .iter()
            .map(|(k, (_, s))| (k.clone(), s.clone()))
            .collect();
        assert_eq!(
            got_shapes, want,
            "{name}: tensors differ from what config.json implies"
        );
        let dt = expected_dtype(&cfg);
        for (t, (d, _)) in &got {
            assert_eq!(d, dt, "{name}: {t} is {d}, config says {dt}");
        }
        // Every matrix width is a multiple of 32, so Q8_0 applies to every 2-D tensor.
        for (t, s) in &got_shapes {
            assert!(s.last().unwrap() % 32 == 0, "{name}: {t} width {s:?}");
        }
    }
}

#[test]
fn fixtures_cover_what_the_issue_asks_for() {
    let mut archs = BTreeSet::new();
    let (mut spm, mut bpe, mut tied, mut sharded, mut llama3, mut k256, mut rope_params) =
        (false, false, false, false, false, false, false);
    for name in FIXTURES {
        let dir = fixtures_dir().join(name);
        let cfg = read_json(&dir.join("config.json"));
        archs.insert(cfg["architectures"][0].as_str().unwrap().to_string());
        spm |= dir.join("tokenizer.model").is_file();
        let tj = read_json(&dir.join("tokenizer.json"));
        bpe |= !dir.join("tokenizer.model").is_file() && tj["model"]["type"] == "BPE";
        tied |= cfg["tie_word_embeddings"] == Value::Bool(true);
        sharded |= dir.join("model.safetensors.index.json").is_file();
        llama3 |= cfg["rope_scaling"]["rope_type"] == "llama3";
        rope_params |= cfg.get("rope_parameters").is_some();
        let shapes = tensors(&dir);
        k256 |= shapes
            .iter()
            .filter(|(_, (_, s))| s.len() == 2)
            .all(|(_, (_, s))| s[1] % 256 == 0);
    }
    let want: BTreeSet<String> = [
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(archs, want);
    assert!(spm && bpe && tied && sharded && llama3 && k256 && rope_params);
}
