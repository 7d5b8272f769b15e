//! `BertModel`: converted (byte-identical to `convert_hf_to_gguf.py` in
//! `scripts/interop-convert.sh`) with its declared pooling and as a
//! non-causal model, while everything that needs the forward pass refuses it
//! by name (laquant does not run bidirectional attention yet).

use laquant::arch::hparams_metadata;
use laquant::gguf::Value;
use laquant::hf::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bert")
}

#[test]
fn bert_hyperparameters_name_pooling_and_bidirectional_attention() {
    let c = Config::load(&fixture()).unwrap();
    assert_eq!(
        c.pooling_type,
        Some(1),
        "sentence-transformers' mean pooling"
    );
    let md = hparams_metadata(&c, 0);
    let get = |k: &str| md.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("bert.attention.causal"), Some(Value::Bool(false)));
    assert_eq!(get("bert.pooling_type"), Some(Value::U32(1)));
    assert!(get("bert.attention.layer_norm_epsilon").is_some());
    assert!(get("bert.attention.layer_norm_rms_epsilon").is_none());
}

#[test]
fn pooling_is_read_from_sentence_transformers_modules() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for f in ["config.json", "modules.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    std::fs::create_dir(dir.join("1_Pooling")).unwrap();
    let pooling = |j: &str| std::fs::write(dir.join("1_Pooling/config.json"), j).unwrap();
    pooling(r#"{"pooling_mode_cls_token": true}"#);
    assert_eq!(Config::load(dir).unwrap().pooling_type, Some(2));
    pooling(r#"{"pooling_mode": "lasttoken"}"#);
    assert_eq!(Config::load(dir).unwrap().pooling_type, Some(3));
    // A pooling llama.cpp does not run, a missing module config, a path out of the folder.
    pooling(r#"{"pooling_mode_max_tokens": true}"#);
    let e = Config::load(dir).unwrap_err().to_string();
    assert!(
        e.contains("1_Pooling/config.json") && e.contains("pooling_mode"),
        "{e}"
    );
    std::fs::remove_file(dir.join("1_Pooling/config.json")).unwrap();
    let e = Config::load(dir).unwrap_err().to_string();
    assert!(
        e.contains("1_Pooling/config.json") && e.contains("missing"),
        "{e}"
    );
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"type": "sentence_transformers.models.Pooling", "path": "../elsewhere"}]"#,
    )
    .unwrap();
    let e = Config::load(dir).unwrap_err().to_string();
    assert!(
        e.contains("modules.json") && e.contains("inside the model"),
        "{e}"
    );
    // No modules.json: no pooling key, as the converter writes none.
    std::fs::remove_file(dir.join("modules.json")).unwrap();
    assert_eq!(Config::load(dir).unwrap().pooling_type, None);
}

#[test]
fn the_forward_pass_refuses_an_encoder_by_name() {
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let model = fixture();
    let model = model.to_str().unwrap();
    let out = d.path().join("x.gguf");
    let out = out.to_str().unwrap();
    for args in [
        vec!["calibrate", model, "-o", out, "--chunks", "1"],
        vec![
            "convert",
            model,
            "--outtype",
            "la-mix",
            "-o",
            out,
            "--chunks",
            "1",
        ],
    ] {
        let (code, e) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {e}");
        assert!(
            e.contains("BertModel") && e.contains("encoder") && e.contains("bidirectional"),
            "{args:?}: {e}"
        );
    }
    assert!(!d.path().join("x.gguf").exists());
    // A preset needs no forward pass.
    let (code, e) = run(&["convert", model, "--outtype", "q4_k_m", "-o", out, "-q"]);
    assert_eq!(code, Some(0), "{e}");
}
