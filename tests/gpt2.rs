//! GPT-2 (`GPT2LMHeadModel`): its Conv1D weights are read transposed (as the
//! `nn.Linear` weights llama.cpp's converter turns them into), its config
//! names and hyperparameter layout, and hostile checkpoints refused by name.
//! The conversion itself is compared with `convert_hf_to_gguf.py` byte for
//! byte in `scripts/interop-convert.sh`.

mod common;

use laquant::arch::hparams_metadata;
use laquant::gguf::Value;
use laquant::hf::{Checkpoint, Config};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gpt2")
}

/// The safetensors file as stored: (dtype size, shape, bytes) of `name`.
fn stored(dir: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v: Vec<f32> = match t.dtype() {
        safetensors::Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        d => panic!("{name}: dtype {d:?}"),
    };
    (t.shape().to_vec(), v)
}

#[test]
fn conv1d_weights_are_read_as_linear_weights() {
    let ck = Checkpoint::open(fixture().to_str().unwrap()).unwrap();
    let mut checked = 0;
    for name in ck.tensor_names() {
        let (shape, v) = stored(&ck.dir, &name);
        let got = ck.tensor_f32(&name).unwrap();
        let conv1d = [
            "attn.c_attn.weight",
            "attn.c_proj.weight",
            "mlp.c_fc.weight",
            "mlp.c_proj.weight",
        ]
        .iter()
        .any(|s| name.ends_with(s));
        if conv1d {
            let (i, o) = (shape[0], shape[1]);
            assert_eq!(ck.tensor_shape(&name).unwrap(), vec![o, i], "{name}");
            for r in 0..o {
                for c in 0..i {
                    assert_eq!(got[r * i + c], v[c * o + r], "{name}[{r}][{c}]");
                }
            }
            // Rows asked one by one (the forward pass's packed reads) are
            // gathered from the stored columns: the same rows.
            let rows = [o - 1, 0, o / 2, o - 1];
            let mut part = vec![0f32; rows.len() * i];
            ck.tensor_rows_f32(&name, i, &rows, &mut part).unwrap();
            for (k, &r) in rows.iter().enumerate() {
                assert_eq!(
                    part[k * i..(k + 1) * i],
                    got[r * i..(r + 1) * i],
                    "{name} row {r}"
                );
            }
            let e = ck.tensor_rows_f32(&name, i, &[o], &mut part[..i]);
            assert!(e
                .unwrap_err()
                .to_string()
                .contains(&format!("row {o} asked, it has {o}")));
            checked += 1;
        } else {
            assert_eq!(ck.tensor_shape(&name).unwrap(), shape, "{name}");
            assert_eq!(got, v, "{name}");
            let w = *shape.last().unwrap();
            let mut row = vec![0f32; w];
            ck.tensor_rows_f32(&name, w, &[0], &mut row).unwrap();
            assert_eq!(row, v[..w], "{name}");
        }
    }
    assert_eq!(checked, 8, "four Conv1D weights in each of 2 layers");
}

fn gpt2_config(extra: serde_json::Value) -> Result<Config, laquant::hf::ConfigError> {
    let mut j = json!({"architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_layer": 3, "n_head": 4,
        "n_positions": 128, "n_ctx": 128, "n_inner": null, "vocab_size": 96, "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new"});
    for (k, v) in extra.as_object().unwrap() {
        j[k] = v.clone();
    }
    Config::from_json(j, "config.json".into())
}

#[test]
fn gpt2_config_names_and_hyperparameter_layout() {
    let c = gpt2_config(json!({})).unwrap();
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.intermediate_size,
            c.max_position_embeddings,
            c.tie_word_embeddings
        ),
        (64, 3, 4, 4, 256, Some(128), true)
    );
    // GPT2Model.set_gguf_parameters' keys, in its order.
    let md = hparams_metadata(&c, 1);
    let keys: Vec<&str> = md.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "gpt2.block_count",
            "gpt2.context_length",
            "gpt2.embedding_length",
            "gpt2.feed_forward_length",
            "gpt2.attention.head_count",
            "gpt2.attention.layer_norm_epsilon",
            "general.file_type"
        ]
    );
    assert_eq!(md[3].1, Value::U32(256));
    // The converter reads n_ctx, not n_positions.
    let c = gpt2_config(json!({"n_ctx": 64})).unwrap();
    assert_eq!(c.max_position_embeddings, Some(64));
    let c = gpt2_config(json!({"n_inner": 256})).unwrap();
    assert_eq!(c.intermediate_size, 256);
    // llama.cpp's gpt2 takes its FFN as 4 · n_embd wide.
    let e = gpt2_config(json!({"n_inner": 128}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`n_inner`") && e.contains("4 × 64") && e.contains("gpt2"),
        "{e}"
    );
}

/// A GPT-2 checkpoint of `gpt2_config` with Conv1D weights of `c_attn_shape`.
fn write_gpt2(dir: &Path, c_attn_shape: Vec<usize>) {
    write_gpt2_named(dir, c_attn_shape, "transformer.")
}

/// [`write_gpt2`] with `prefix` before every name (`transformer.` as
/// `GPT2LMHeadModel` saves them, none as GPT-2's own checkpoints have them).
fn write_gpt2_named(dir: &Path, c_attn_shape: Vec<usize>, prefix: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        common::tokenizer_json().to_string(),
    )
    .unwrap();
    let cfg = json!({"architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_layer": 1, "n_head": 4,
        "n_positions": 128, "n_ctx": 128, "vocab_size": 96, "layer_norm_epsilon": 1e-5});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let p = "h.0.";
    let t = |n: &str, s: &[usize]| (format!("{prefix}{n}"), s.to_vec());
    common::write_safetensors(
        &dir.join("model.safetensors"),
        &[
            t("wte.weight", &[96, 64]),
            t("wpe.weight", &[128, 64]),
            t("ln_f.weight", &[64]),
            t("ln_f.bias", &[64]),
            t(&format!("{p}ln_1.weight"), &[64]),
            t(&format!("{p}ln_1.bias"), &[64]),
            t(&format!("{p}attn.c_attn.weight"), &c_attn_shape),
            t(&format!("{p}attn.c_attn.bias"), &[192]),
            t(&format!("{p}attn.c_proj.weight"), &[64, 64]),
            t(&format!("{p}attn.c_proj.bias"), &[64]),
            t(&format!("{p}ln_2.weight"), &[64]),
            t(&format!("{p}ln_2.bias"), &[64]),
            t(&format!("{p}mlp.c_fc.weight"), &[64, 256]),
            t(&format!("{p}mlp.c_fc.bias"), &[256]),
            t(&format!("{p}mlp.c_proj.weight"), &[256, 64]),
            t(&format!("{p}mlp.c_proj.bias"), &[64]),
        ],
    );
}

fn convert(dir: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(["convert", dir.to_str().unwrap(), "--outtype", "q8_0", "-o"])
        .arg(out)
        .output()
        .unwrap()
}

/// GPT-2's own checkpoints name tensors as `GPT2Model` does (`h.0.…`,
/// `wte`): they convert to the same tensors as `transformer.`-prefixed ones.
#[test]
fn base_model_names_convert_as_lm_head_names() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a/gpt2"), d.path().join("b/gpt2"));
    write_gpt2_named(&a, vec![64, 192], "transformer.");
    // The same tensors (the values are drawn by name) under GPT2Model's names.
    write_gpt2_named(&b, vec![64, 192], "");
    let bytes = std::fs::read(a.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n.trim_start_matches("transformer.").to_string(), v))
        .collect();
    safetensors::serialize_to_file(renamed, None, &b.join("model.safetensors")).unwrap();
    let (fa, fb) = (d.path().join("a.gguf"), d.path().join("b.gguf"));
    for (m, f) in [(&a, &fa), (&b, &fb)] {
        let o = convert(m, f);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (ga, gb) = (
        laquant::GgufFile::open(&fa).unwrap(),
        laquant::GgufFile::open(&fb).unwrap(),
    );
    let names =
        |g: &laquant::GgufFile| g.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ga), names(&gb));
    assert_eq!(ga.tensors.len(), 16);
    for t in &ga.tensors {
        let u = gb.tensor(&t.name).unwrap();
        assert_eq!(ga.tensor_data(t), gb.tensor_data(u), "{}", t.name);
    }
}

#[test]
fn hostile_conv1d_shapes_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good");
    write_gpt2(&good, vec![64, 192]);
    let o = convert(&good, &d.path().join("good.gguf"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Stored as a Linear weight ([out, in]): the [in, out] shape it should have is named.
    let linear = d.path().join("linear");
    write_gpt2(&linear, vec![192, 64]);
    let o = convert(&linear, &d.path().join("linear.gguf"));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("transformer.h.0.attn.c_attn.weight")
            && e.contains("[192, 64] (a Conv1D weight, [in, out])")
            && e.contains("implies [64, 192]"),
        "{e}"
    );
    // Not 2-D at all.
    let flat = d.path().join("flat");
    write_gpt2(&flat, vec![64 * 192]);
    let o = convert(&flat, &d.path().join("flat.gguf"));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("transformer.h.0.attn.c_attn.weight") && e.contains("2-D"),
        "{e}"
    );
    assert!(!d.path().join("flat.gguf").exists());
}
