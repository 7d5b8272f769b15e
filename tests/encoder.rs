//! `BertModel`, `BertForMaskedLM` and `XLMRobertaModel`: converted
//! (byte-identical to `convert_hf_to_gguf.py` in `scripts/interop-convert.sh`)
//! with their declared pooling and as non-causal models; calibrated by the
//! encoder's own pass (la-mix/`--target-bpw` on encoders, measured on
//! embedding drift: `tests/encoder_mix.rs`).

use laquant::arch::hparams_metadata;
use laquant::gguf::Value;
use laquant::hf::tokenizer::{tokenizer_metadata, TokenizerOptions};
use laquant::hf::{Checkpoint, Config};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    fixture_named("bert")
}

fn fixture_named(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A copy of fixture `name`'s files (not its subfolders) in a temporary folder.
fn copy_of(name: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture_named(name)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    d
}

/// XLM-R's positions start after the padding id: the converter drops the
/// first `pad_token_id + 1` rows and writes the context length without them.
#[test]
fn xlmr_positions_start_after_the_padding_id() {
    let dir = fixture_named("xlmr");
    let ck = Checkpoint::open(dir.to_str().unwrap()).unwrap();
    let c = &ck.config;
    assert_eq!(
        (c.position_offset, c.max_position_embeddings),
        (Some(2), Some(512))
    );
    assert_eq!(
        c.pooling_type,
        Some(2),
        "sentence-transformers' CLS pooling"
    );
    let md = hparams_metadata(c, 0);
    let get = |k: &str| md.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("bert.context_length"), Some(Value::U32(512)));
    assert_eq!(get("bert.pooling_type"), Some(Value::U32(2)));
    let pos = "embeddings.position_embeddings.weight";
    assert_eq!(ck.tensor_shape(pos).unwrap(), vec![512, 256]);
    // The rows as read are the file's rows 2.., read here by the safetensors crate.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let raw = st.tensor(pos).unwrap();
    assert_eq!(raw.shape(), [514, 256]);
    let want: Vec<f32> = raw.data()[2 * 256 * 2..]
        .chunks_exact(2)
        .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
        .collect();
    assert_eq!(ck.tensor_f32(pos).unwrap(), want);
    // The pooler is in the file and not converted.
    assert!(ck.has_tensor("pooler.dense.weight"));
    assert_eq!(laquant::arch::map_name(c, "pooler.dense.weight"), Ok(None));
}

#[test]
fn xlmr_position_offset_errors_name_the_key() {
    let d = copy_of("xlmr");
    // Its Pooling module's folder is not copied.
    std::fs::remove_file(d.path().join("modules.json")).unwrap();
    let cfg_path = d.path().join("config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let load = |j: &serde_json::Value| {
        std::fs::write(&cfg_path, j.to_string()).unwrap();
        Config::load(d.path()).map(|c| (c.position_offset, c.max_position_embeddings))
    };
    // No padding id: nothing is dropped (the converter's `_position_offset = None`).
    j["pad_token_id"] = serde_json::Value::Null;
    assert_eq!(load(&j).unwrap(), (None, Some(514)));
    j["pad_token_id"] = 513.into();
    let e = load(&j).unwrap_err().to_string();
    assert!(
        e.contains("max_position_embeddings") && e.contains("514"),
        "{e}"
    );
    j["pad_token_id"] = "one".into();
    let e = load(&j).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("pad_token_id"),
        "{e}"
    );
    // BERT's positions start at 0 whatever its padding id.
    let c = Config::load(&fixture()).unwrap();
    assert_eq!(
        (c.position_offset, c.max_position_embeddings),
        (None, Some(512))
    );
}

/// `XLMRobertaModel.set_vocab`: the Unigram pieces realigned to fairseq's ids,
/// `t5`, the normalizer's flags and charsmap; without the SentencePiece model
/// an error naming it.
#[test]
fn xlmr_vocabulary_is_the_realigned_unigram_model() {
    let dir = fixture_named("xlmr");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let md = tokenizer_metadata(&dir, &config, &TokenizerOptions::default()).unwrap();
    let get = |k: &str| md.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("tokenizer.ggml.model"), Some(Value::str("t5")));
    assert_eq!(get("tokenizer.ggml.pre"), Some(Value::str("default")));
    let Some(Value::Array(_, tokens)) = get("tokenizer.ggml.tokens") else {
        panic!("no token list")
    };
    assert_eq!(tokens.len(), 1002);
    let first: Vec<Value> = ["<s>", "<pad>", "</s>", "<unk>"].map(Value::str).into();
    assert_eq!(tokens[..4], first[..]);
    // The config's 1002 over 1000 pieces: the last entry is the padding's first.
    assert_eq!(tokens[1001], Value::str("[PAD1000]"));
    assert_eq!(
        get("tokenizer.ggml.add_space_prefix"),
        Some(Value::Bool(true))
    );
    assert_eq!(
        get("tokenizer.ggml.remove_extra_whitespaces"),
        Some(Value::Bool(true))
    );
    assert_eq!(get("tokenizer.ggml.token_type_count"), Some(Value::U32(1)));
    let Some(Value::Array(_, map)) = get("tokenizer.ggml.precompiled_charsmap") else {
        panic!("no charsmap")
    };
    assert!(map.len() > 1000, "NFKC's charsmap: {} bytes", map.len());
    assert_eq!(get("tokenizer.ggml.padding_token_id"), Some(Value::U32(1)));

    let d = copy_of("xlmr");
    std::fs::remove_file(d.path().join("sentencepiece.bpe.model")).unwrap();
    let e = tokenizer_metadata(d.path(), &config, &TokenizerOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sentencepiece.bpe.model") && e.contains("missing"),
        "{e}"
    );
    // A BPE model where the converter asserts UNIGRAM: trainer_spec.model_type 2.
    let mut spm = std::fs::read(dir.join("sentencepiece.bpe.model")).unwrap();
    spm.extend_from_slice(&[0x12, 0x02, 0x18, 0x02]);
    std::fs::write(d.path().join("sentencepiece.bpe.model"), &spm).unwrap();
    let e = tokenizer_metadata(d.path(), &config, &TokenizerOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sentencepiece.bpe.model") && e.contains("UNIGRAM"),
        "{e}"
    );
    spm.truncate(spm.len() - 6);
    std::fs::write(d.path().join("sentencepiece.bpe.model"), &spm).unwrap();
    let e = tokenizer_metadata(d.path(), &config, &TokenizerOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("sentencepiece.bpe.model"), "{e}");
}

/// `BertForMaskedLM`: the encoder under `bert.` converts as `BertModel`'s,
/// the masked-LM head is dropped.
#[test]
fn bert_masked_lm_drops_its_head() {
    let dir = fixture_named("bert-mlm");
    let ck = Checkpoint::open(dir.to_str().unwrap()).unwrap();
    let names = ck.tensor_names();
    assert!(names.contains(&"embeddings.word_embeddings.weight".to_string()));
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("bert.") && !n.starts_with("cls.")),
        "{names:?}"
    );
    // 5 embedding tensors and 16 per layer.
    assert_eq!(names.len(), 5 + 16);
    for n in &names {
        assert!(
            laquant::arch::map_name(&ck.config, n).unwrap().is_some(),
            "{n}"
        );
    }
    // The file does hold the head.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.names().iter().any(|n| n.starts_with("cls.predictions.")));
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
fn an_encoder_calibrates_by_its_own_pass() {
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
    // Calibration runs the encoder's own pass: an imatrix of its 12 matmuls
    // (2 layers × q, k, v, output, up, down).
    let (code, e) = run(&[
        "calibrate",
        model,
        "-o",
        out,
        "--chunks",
        "1",
        "--ctx",
        "64",
        "-q",
    ]);
    assert_eq!(code, Some(0), "{e}");
    let im = laquant::calib::Imatrix::read(Path::new(out)).unwrap();
    assert_eq!(im.entries.len(), 12);
    assert!(im.entries.contains_key("blk.1.ffn_down.weight"));
    std::fs::remove_file(out).unwrap();
    // A preset needs no forward pass.
    let (code, e) = run(&["convert", model, "--outtype", "q4_k_m", "-o", out, "-q"]);
    assert_eq!(code, Some(0), "{e}");
}

/// `XLMRobertaForSequenceClassification` (a reranker): its classifier head
/// as `cls`/`cls.output` and its labels, unless they are transformers' two
/// dummy ones (`BertModel.__init__`'s rule).
#[test]
fn xlmr_reranker_writes_its_head_and_labels() {
    let dir = fixture_named("xlmr-rerank");
    let ck = Checkpoint::open(dir.to_str().unwrap()).unwrap();
    let c = &ck.config;
    assert_eq!(c.classifier_labels, ["LABEL_0"]);
    let md = hparams_metadata(c, 0);
    let get = |md: &laquant::gguf::Metadata, k: &str| {
        md.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    assert_eq!(
        get(&md, "bert.classifier.output_labels"),
        Some(Value::strings(["LABEL_0"]))
    );
    let m = laquant::arch::map_name(c, "classifier.out_proj.weight")
        .unwrap()
        .unwrap();
    assert_eq!(m.gguf_name, "cls.output.weight");
    assert_eq!(laquant::arch::expected_shape(c, &m), vec![1, 128]);
    let m = laquant::arch::map_name(c, "classifier.dense.bias")
        .unwrap()
        .unwrap();
    assert_eq!(m.gguf_name, "cls.bias");
    assert!(ck.tensor_names().iter().all(|n| !n.starts_with("roberta.")));

    let d = copy_of("xlmr-rerank");
    let cfg_path = d.path().join("config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let load = |j: &serde_json::Value| {
        std::fs::write(&cfg_path, j.to_string()).unwrap();
        Config::load(d.path())
            .map(|c| get(&hparams_metadata(&c, 0), "bert.classifier.output_labels"))
    };
    // Sorted by id, not by the file's order.
    j["id2label"] = serde_json::json!({"1": "relevant", "0": "irrelevant"});
    assert_eq!(
        load(&j).unwrap(),
        Some(Value::strings(["irrelevant", "relevant"]))
    );
    j["id2label"] = serde_json::json!({"0": "LABEL_0", "1": "LABEL_1"});
    assert_eq!(load(&j).unwrap(), None);
    j["id2label"] = serde_json::json!({"first": "x"});
    let e = load(&j).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("id2label"), "{e}");
    j.as_object_mut().unwrap().remove("id2label");
    j["num_labels"] = 3.into();
    assert_eq!(
        load(&j).unwrap(),
        Some(Value::strings(["LABEL_0", "LABEL_1", "LABEL_2"]))
    );
    // BERT's fixture has no id2label: transformers' two defaults, not written.
    let c = Config::load(&fixture()).unwrap();
    assert_eq!(c.classifier_output_labels(), None);
}
