//! Bad input to `laquant convert`: each case exits with code 1, names the file
//! and what is wrong, does not panic, and leaves no output (or temporary) file.

mod common;

use std::path::Path;
use std::process::Command;

fn convert(model: &Path, out: &Path) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args([
            "convert",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--outtype",
            "f16",
            "--quiet",
        ])
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs a conversion expected to fail and checks the common guarantees.
fn expect_failure(setup: impl FnOnce(&Path), needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    setup(&model);
    let outdir = d.path().join("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("x.gguf");
    let (code, err) = convert(&model, &out);
    assert_eq!(code, 1, "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(&outdir).unwrap().collect();
    assert!(left.is_empty(), "files left in the output folder: {left:?}");
}

#[test]
fn good_checkpoint_converts() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    let out = d.path().join("x.gguf");
    let (code, err) = convert(&model, &out);
    assert_eq!(code, 0, "{err}");
    let f = laquant::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(f.tensors.len(), 3 + 2 * 9);
    // Existing output is not overwritten without --force.
    let (code, err) = convert(&model, &out);
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn missing_config() {
    expect_failure(
        |m| std::fs::remove_file(m.join("config.json")).unwrap(),
        &["config.json", "cannot read"],
    );
}

#[test]
fn malformed_config() {
    expect_failure(
        |m| std::fs::write(m.join("config.json"), b"{\"hidden_size\": 64,").unwrap(),
        &["config.json", "not valid JSON"],
    );
}

#[test]
fn config_key_of_wrong_type() {
    expect_failure(
        |m| {
            let mut c = common::llama_config();
            c["num_hidden_layers"] = serde_json::json!("two");
            std::fs::write(m.join("config.json"), c.to_string()).unwrap();
        },
        &["config.json", "num_hidden_layers"],
    );
}

#[test]
fn unknown_architecture() {
    expect_failure(
        |m| {
            let mut c = common::llama_config();
            c["architectures"] = serde_json::json!(["BertForMaskedLM"]);
            std::fs::write(m.join("config.json"), c.to_string()).unwrap();
        },
        &["config.json", "BertForMaskedLM", "not supported"],
    );
}

#[test]
fn truncated_safetensors() {
    expect_failure(
        |m| {
            let p = m.join("model.safetensors");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() - 100]).unwrap();
        },
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn truncated_safetensors_header() {
    expect_failure(
        |m| {
            let p = m.join("model.safetensors");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..40]).unwrap();
        },
        &["model.safetensors"],
    );
}

#[test]
fn overlapping_safetensors_offsets() {
    expect_failure(
        |m| {
            // Hand-made file: two tensors whose byte ranges overlap.
            let header = r#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"model.norm.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}}"#;
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(header.as_bytes());
            b.extend_from_slice(&[0u8; 24]);
            std::fs::write(m.join("model.safetensors"), b).unwrap();
        },
        &["model.safetensors", "overlap"],
    );
}

#[test]
fn shape_disagrees_with_config() {
    expect_failure(
        |m| {
            let mut t = common::llama_tensors();
            t[3].1 = vec![63];
            common::write_safetensors(&m.join("model.safetensors"), &t);
        },
        &[
            "model.safetensors",
            "model.layers.0.input_layernorm.weight",
            "disagrees with config.json",
        ],
    );
}

#[test]
fn unknown_tensor_name() {
    expect_failure(
        |m| {
            let mut t = common::llama_tensors();
            t.push(("model.layers.0.mystery.weight".into(), vec![4]));
            common::write_safetensors(&m.join("model.safetensors"), &t);
        },
        &["model.layers.0.mystery.weight"],
    );
}

fn write_sharded(m: &Path, index: serde_json::Value) {
    let t = common::llama_tensors();
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    common::write_safetensors(&m.join("model-00001-of-00002.safetensors"), &t[..10]);
    common::write_safetensors(&m.join("model-00002-of-00002.safetensors"), &t[10..]);
    std::fs::write(m.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn index_for(t: &[(String, Vec<usize>)], second: &str) -> serde_json::Value {
    let mut wm = serde_json::Map::new();
    for (i, (n, _)) in t.iter().enumerate() {
        let f = if i < 10 {
            "model-00001-of-00002.safetensors"
        } else {
            second
        };
        wm.insert(n.clone(), serde_json::json!(f));
    }
    serde_json::json!({"metadata": {}, "weight_map": wm})
}

#[test]
fn sharded_checkpoint_converts() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    write_sharded(
        &model,
        index_for(&common::llama_tensors(), "model-00002-of-00002.safetensors"),
    );
    let out = d.path().join("x.gguf");
    let (code, err) = convert(&model, &out);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn index_names_missing_shard() {
    expect_failure(
        |m| {
            write_sharded(
                m,
                index_for(&common::llama_tensors(), "model-00003-of-00002.safetensors"),
            )
        },
        &[
            "model.safetensors.index.json",
            "model-00003-of-00002.safetensors",
            "missing",
        ],
    );
}

#[test]
fn index_path_outside_folder() {
    expect_failure(
        |m| {
            write_sharded(
                m,
                index_for(&common::llama_tensors(), "../evil.safetensors"),
            )
        },
        &[
            "model.safetensors.index.json",
            "../evil.safetensors",
            "inside the model folder",
        ],
    );
}

#[test]
fn index_disagrees_with_shards() {
    expect_failure(
        |m| {
            let t = common::llama_tensors();
            let mut idx = index_for(&t, "model-00002-of-00002.safetensors");
            idx["weight_map"]["model.layers.9.mlp.up_proj.weight"] =
                serde_json::json!("model-00002-of-00002.safetensors");
            write_sharded(m, idx);
        },
        &[
            "model.safetensors.index.json",
            "model.layers.9.mlp.up_proj.weight",
            "not found",
        ],
    );
}

#[test]
fn pickle_checkpoints_are_refused() {
    expect_failure(
        |m| {
            std::fs::remove_file(m.join("model.safetensors")).unwrap();
            std::fs::write(m.join("pytorch_model.bin"), b"PK\x03\x04 pickle").unwrap();
        },
        &["pytorch_model.bin", "safetensors"],
    );
}

#[test]
fn nonfinite_weights_are_named() {
    expect_failure(
        |m| {
            // Overwrite the first value of the last tensor's data with NaN.
            let p = m.join("model.safetensors");
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
            std::fs::write(&p, b).unwrap();
        },
        &["not finite", "--allow-nonfinite"],
    );
}
