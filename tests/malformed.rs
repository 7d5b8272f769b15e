//! The malformed-input catalogue: every row of `tests/malformed/cases.tsv`
//! breaks one thing in a good tiny checkpoint (or hands a broken GGUF/imatrix
//! file to `inspect`/`convert --imatrix`), runs the real binary and checks the
//! guarantees of issue #7: exit code 1, a message naming the file, tensor or
//! key and what is wrong, no panic, and no file left in the output folder.
//!
//! The table holds the command and the expected message fragments; the setup
//! of each case (what it breaks) is the function of the same name below.
//! `LAQUANT_MALFORMED_TABLE=FILE` writes the actual message of every case as a
//! markdown table (for the README and reports); `LAQUANT_MALFORMED_BIN=PATH`
//! runs the cases against another build of laquant (an older one, to see which
//! cases it fails).

mod common;

use laquant::calib::imatrix::{Imatrix, ImatrixEntry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

type Setup = fn(&Path, &Path);

/// What a case breaks: `(model folder, scratch folder)`.
fn setups() -> BTreeMap<&'static str, Setup> {
    let mut m: BTreeMap<&'static str, Setup> = BTreeMap::new();
    // config.json
    m.insert("config-missing", |m, _| rm(&m.join("config.json")));
    m.insert("config-truncated-json", |m, _| {
        write(&m.join("config.json"), b"{\"hidden_size\": 64,")
    });
    m.insert("config-empty-file", |m, _| {
        write(&m.join("config.json"), b"")
    });
    m.insert("config-non-utf8", |m, _| {
        write(
            &m.join("config.json"),
            b"{\"architectures\": [\"Llama\xff\xfeForCausalLM\"]}",
        )
    });
    m.insert("config-not-an-object", |m, _| {
        write(&m.join("config.json"), b"[1, 2, 3]")
    });
    m.insert("config-key-wrong-type", |m, _| {
        config(m, "num_hidden_layers", serde_json::json!("two"))
    });
    m.insert("config-unknown-architecture", |m, _| {
        config(m, "architectures", serde_json::json!(["GPTJForCausalLM"]))
    });
    m.insert("config-encoder-only", |m, _| {
        config(
            m,
            "architectures",
            serde_json::json!(["BertForSequenceClassification"]),
        )
    });
    m.insert("config-absurd-vocab-size", |m, _| {
        config(m, "vocab_size", serde_json::json!(1_000_000_000_000u64))
    });
    m.insert("config-absurd-layer-count", |m, _| {
        config(m, "num_hidden_layers", serde_json::json!(1u64 << 40))
    });
    m.insert("config-negative-width", |m, _| {
        config(m, "hidden_size", serde_json::json!(-64))
    });
    m.insert("config-heads-do-not-divide-width", |m, _| {
        config(m, "num_attention_heads", serde_json::json!(5))
    });
    m.insert("config-kv-heads-do-not-divide-heads", |m, _| {
        config(m, "num_key_value_heads", serde_json::json!(3))
    });
    m.insert("config-odd-head-dim", |m, _| {
        config(m, "head_dim", serde_json::json!(15))
    });
    m.insert("config-zero-eps", |m, _| {
        config(m, "rms_norm_eps", serde_json::json!(0.0))
    });

    // model.safetensors, truncated at several offsets.
    m.insert("st-empty-file", |m, _| truncate(m, |_| 0));
    m.insert("st-truncated-at-4", |m, _| truncate(m, |_| 4));
    m.insert("st-truncated-at-8", |m, _| truncate(m, |_| 8));
    m.insert("st-truncated-in-header", |m, _| truncate(m, |_| 40));
    m.insert("st-truncated-after-header", |m, _| {
        let b = std::fs::read(st(m)).unwrap();
        let n = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        truncate_to(m, n)
    });
    m.insert("st-truncated-mid-data", |m, _| truncate(m, |n| n / 2));
    m.insert("st-truncated-last-byte", |m, _| truncate(m, |n| n - 1));
    m.insert("st-trailing-bytes", |m, _| {
        let mut b = std::fs::read(st(m)).unwrap();
        b.extend_from_slice(&[0; 12]);
        write(&st(m), &b)
    });
    // model.safetensors, header contents.
    m.insert("st-absurd-header-length", |m, _| {
        let mut b = std::fs::read(st(m)).unwrap();
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        write(&st(m), &b)
    });
    m.insert("st-header-not-json", |m, _| {
        raw_safetensors(m, b"{\"model.norm.weight\": [nonsense", &[])
    });
    m.insert("st-header-non-utf8", |m, _| {
        raw_safetensors(
            m,
            b"{\"model.norm.\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
            &[0; 4],
        )
    });
    m.insert("st-overlapping-offsets", |m, _| {
        raw_safetensors(
            m,
            br#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"model.norm.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}}"#,
            &[0; 24],
        )
    });
    m.insert("st-offsets-leave-gap", |m, _| {
        raw_safetensors(
            m,
            br#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"model.norm.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[20,36]}}"#,
            &[0; 36],
        )
    });
    m.insert("st-offsets-reversed", |m, _| {
        raw_safetensors(
            m,
            br#"{"model.norm.weight":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}}"#,
            &[0; 16],
        )
    });
    m.insert("st-shape-dtype-size-mismatch", |m, _| {
        raw_safetensors(
            m,
            br#"{"model.norm.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        )
    });
    m.insert("st-shape-overflows", |m, _| {
        raw_safetensors(
            m,
            br#"{"model.norm.weight":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#,
            &[],
        )
    });
    m.insert("st-unsupported-dtype", |m, _| {
        let mut t = common::llama_tensors();
        t.retain(|(n, _)| n != "model.norm.weight");
        write_with_extra(m, &t, ("model.norm.weight", "I32", vec![64], vec![0; 256]))
    });
    m.insert("st-shape-disagrees-with-config", |m, _| {
        let mut t = common::llama_tensors();
        t[3].1 = vec![63];
        common::write_safetensors(&st(m), &t)
    });
    m.insert("st-unknown-tensor", |m, _| {
        let mut t = common::llama_tensors();
        t.push(("model.layers.0.mystery.weight".into(), vec![4]));
        common::write_safetensors(&st(m), &t)
    });
    m.insert("st-missing-tensor", |m, _| {
        let mut t = common::llama_tensors();
        t.retain(|(n, _)| n != "model.layers.1.mlp.down_proj.weight");
        common::write_safetensors(&st(m), &t)
    });
    m.insert("st-nan-weight", |m, _| {
        poke(m, "model.layers.1.mlp.up_proj.weight", 77, f32::NAN)
    });
    m.insert("st-inf-weight", |m, _| {
        poke(m, "model.norm.weight", 3, f32::INFINITY)
    });
    m.insert("st-symlink-loop", |m, _| {
        rm(&st(m));
        std::os::unix::fs::symlink("model.safetensors", st(m)).unwrap();
    });
    m.insert("st-pickle-only", |m, _| {
        rm(&st(m));
        write(&m.join("pytorch_model.bin"), b"PK\x03\x04 pickle");
    });

    // Shards and the index.
    m.insert("index-names-missing-shard", |m, _| {
        sharded(m, index_for(SHARD3))
    });
    m.insert("index-path-outside-folder", |m, _| {
        sharded(m, index_for("../evil.safetensors"))
    });
    m.insert("index-absolute-path", |m, _| {
        sharded(m, index_for("/etc/passwd"))
    });
    m.insert("index-symlink-outside-folder", |m, s| {
        sharded(m, index_for(SHARD2));
        let outside = s.join("outside.safetensors");
        std::fs::rename(m.join(SHARD2), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, m.join(SHARD2)).unwrap();
    });
    m.insert("index-symlink-loop", |m, _| {
        sharded(m, index_for(SHARD2));
        rm(&m.join(SHARD2));
        std::os::unix::fs::symlink(SHARD2, m.join(SHARD2)).unwrap();
    });
    m.insert("index-tensor-in-wrong-shard", |m, _| {
        let mut idx = index_for(SHARD2);
        idx["weight_map"]["model.layers.0.input_layernorm.weight"] = serde_json::json!(SHARD2);
        sharded(m, idx)
    });
    m.insert("index-lists-absent-tensor", |m, _| {
        let mut idx = index_for(SHARD2);
        idx["weight_map"]["model.layers.9.mlp.up_proj.weight"] = serde_json::json!(SHARD2);
        sharded(m, idx)
    });
    m.insert("index-omits-tensor", |m, _| {
        let mut idx = index_for(SHARD2);
        idx["weight_map"]
            .as_object_mut()
            .unwrap()
            .remove("model.norm.weight");
        sharded(m, idx)
    });
    m.insert("index-not-json", |m, _| {
        sharded(m, index_for(SHARD2));
        write(&m.join(INDEX), b"{\"weight_map\": {");
    });
    m.insert("index-non-utf8", |m, _| {
        sharded(m, index_for(SHARD2));
        write(&m.join(INDEX), b"{\"weight_map\": {\"\xc3\x28\": \"x\"}}");
    });
    m.insert("index-no-weight-map", |m, _| {
        sharded(m, serde_json::json!({"metadata": {}}))
    });
    m.insert("index-entry-not-string", |m, _| {
        let mut idx = index_for(SHARD2);
        idx["weight_map"]["model.norm.weight"] = serde_json::json!(2);
        sharded(m, idx)
    });
    m.insert("shards-duplicate-tensor", |m, _| {
        // No index: both shards hold model.norm.weight.
        let t = common::llama_tensors();
        rm(&st(m));
        common::write_safetensors(&m.join(SHARD1), &t[..10]);
        common::write_safetensors(&m.join(SHARD2), &[&t[1..2], &t[10..]].concat());
    });

    // Tokenizer files.
    m.insert("tok-missing", |m, _| rm(&m.join("tokenizer.json")));
    m.insert("tok-json-non-utf8", |m, _| {
        write(
            &m.join("tokenizer.json"),
            b"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\xff\": 0}}}",
        )
    });
    m.insert("tok-json-truncated", |m, _| {
        let s = common::tokenizer_json().to_string();
        write(&m.join("tokenizer.json"), &s.as_bytes()[..s.len() / 2])
    });
    m.insert("tok-json-empty", |m, _| {
        write(&m.join("tokenizer.json"), b"")
    });
    m.insert("tok-id-beyond-vocab-size", |m, _| {
        let mut t = common::tokenizer_json();
        t["model"]["vocab"]["~~"] = serde_json::json!(4_000_000_000u64);
        write(&m.join("tokenizer.json"), t.to_string().as_bytes())
    });
    m.insert("tok-duplicate-id", |m, _| {
        let mut t = common::tokenizer_json();
        t["model"]["vocab"]["~~"] = serde_json::json!(5);
        write(&m.join("tokenizer.json"), t.to_string().as_bytes())
    });
    m.insert("tok-model-garbage", |m, _| {
        write(&m.join("tokenizer.model"), b"\x00\x01\x02 not a protobuf")
    });
    m.insert("tok-model-truncated", |m, _| {
        let b = spm_model();
        write(&m.join("tokenizer.model"), &b[..b.len() - 3])
    });
    m.insert("tok-model-absurd-length", |m, _| {
        // Field 1 (a piece), length varint 2^63.
        write(
            &m.join("tokenizer.model"),
            b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
        )
    });

    // Imatrix files for convert --imatrix.
    m.insert("imatrix-empty", |_, s| write(&s.join("bad.dat"), b""));
    m.insert("imatrix-dat-truncated", |_, s| {
        let b = good_imatrix().to_dat_bytes();
        write(&s.join("bad.dat"), &b[..30])
    });
    m.insert("imatrix-dat-absurd-name-length", |_, s| {
        let mut b = 1i32.to_le_bytes().to_vec();
        b.extend_from_slice(&i32::MAX.to_le_bytes());
        b.extend_from_slice(b"blk");
        write(&s.join("bad.dat"), &b)
    });
    m.insert("imatrix-dat-absurd-value-count", |_, s| {
        let mut b = 1i32.to_le_bytes().to_vec();
        b.extend_from_slice(&3i32.to_le_bytes());
        b.extend_from_slice(b"blk");
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&i32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 64]);
        write(&s.join("bad.dat"), &b)
    });
    m.insert("imatrix-dat-nan", |_, s| {
        let mut im = good_imatrix();
        im.entries.get_mut("blk.0.attn_q.weight").unwrap().sums[5] = f32::NAN;
        write(&s.join("bad.dat"), &im.to_dat_bytes())
    });
    m.insert("imatrix-gguf-truncated", |_, s| {
        let b = good_imatrix().to_gguf_bytes().unwrap();
        // Past the last tensor's alignment padding, into its data.
        write(&s.join("bad.gguf"), &b[..b.len() - 40])
    });
    m.insert("imatrix-gguf-half-pair", |_, s| {
        let b = Gguf::new()
            .kv_str("general.type", "imatrix")
            .tensor("blk.0.attn_q.weight.in_sum2", &[64], 0, &[0; 256])
            .build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("imatrix-gguf-wrong-type", |_, s| {
        let b = Gguf::new()
            .kv_str("general.type", "imatrix")
            .tensor("blk.0.attn_q.weight.in_sum2", &[64], 1, &[0; 128])
            .tensor("blk.0.attn_q.weight.counts", &[1], 0, &[0; 4])
            .build();
        write(&s.join("bad.gguf"), &b)
    });

    // GGUF files for inspect.
    m.insert("gguf-empty", |_, s| write(&s.join("bad.gguf"), b""));
    // GGUF files as convert's input (requantization).
    m.insert("gguf-input-truncated", |_, s| {
        let b = model_gguf().build();
        write(&s.join("in.gguf"), &b[..b.len() / 2])
    });
    m.insert("gguf-input-quantized", |_, s| {
        let g = model_gguf_with("token_embd.weight", &[32, 2], 8, &[0; 68]);
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-input-integer-tensor", |_, s| {
        let g = model_gguf_with("token_embd.weight", &[32, 2], 26, &[0; 256]);
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-input-nan", |_, s| {
        let mut d = vec![0u8; 256];
        d[4 * 33..4 * 34].copy_from_slice(&f32::NAN.to_le_bytes());
        let g = model_gguf_with("token_embd.weight", &[32, 2], 0, &d);
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-input-unknown-tensor", |_, s| {
        let g = model_gguf().tensor("blk.0.frobnicate.weight", &[32, 2], 0, &[0; 256]);
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-input-missing-architecture", |_, s| {
        let g = Gguf::new().tensor("token_embd.weight", &[32, 2], 0, &[0; 256]);
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-input-missing-block-count", |_, s| {
        let g = Gguf::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.attention.head_count", 1)
            .tensor("token_embd.weight", &[32, 2], 0, &[0; 256]);
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-input-key-wrong-type", |_, s| {
        let g = Gguf::new()
            .kv_str("general.architecture", "llama")
            .kv_str("llama.block_count", "one")
            .tensor("token_embd.weight", &[32, 2], 0, &[0; 256]);
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-input-other-architecture", |_, s| {
        // mamba: an architecture llama.cpp runs and laquant does not convert.
        let g = Gguf::new().kv_str("general.architecture", "mamba").tensor(
            "token_embd.weight",
            &[32, 2],
            0,
            &[0; 256],
        );
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-input-imatrix-file", |_, s| {
        write(&s.join("in.gguf"), &good_imatrix().to_gguf_bytes().unwrap())
    });
    m.insert("gguf-input-la-mix", |_, s| {
        // A WordPiece vocabulary on a decoder: la-mix cannot rebuild its tokenizer.
        let g = model_gguf().kv_str("tokenizer.ggml.model", "bert");
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-input-la-mix-spm-scores", |_, s| {
        // A SentencePiece vocabulary without the scores that rank its merges.
        let g = model_gguf().kv_str("tokenizer.ggml.model", "llama");
        write(&s.join("in.gguf"), &g.build())
    });
    m.insert("gguf-bad-magic", |_, s| {
        let mut b = good_gguf().build();
        b[..4].copy_from_slice(b"GGML");
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-bad-version", |_, s| {
        let mut b = good_gguf().build();
        b[4..8].copy_from_slice(&99u32.to_le_bytes());
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-truncated-in-metadata", |_, s| {
        let b = good_gguf().build();
        let at = find(&b, b"general.name") + 16;
        write(&s.join("bad.gguf"), &b[..at])
    });
    m.insert("gguf-truncated-in-tensor-info", |_, s| {
        let b = good_gguf().build();
        let at = find(&b, b"token_embd.weight") + 20;
        write(&s.join("bad.gguf"), &b[..at])
    });
    m.insert("gguf-truncated-in-data", |_, s| {
        let b = good_gguf().build();
        write(&s.join("bad.gguf"), &b[..b.len() - 24])
    });
    m.insert("gguf-absurd-tensor-count", |_, s| {
        let mut b = good_gguf().build();
        b[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-absurd-string-length", |_, s| {
        let mut b = good_gguf().build();
        let at = find(&b, b"general.name") + 12 + 4;
        b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-absurd-array-length", |_, s| {
        let mut b = good_gguf().build();
        // key, value type (u32), element type (u32), then the element count.
        let at = find(&b, b"tokenizer.ggml.tokens") + 21 + 8;
        b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-duplicate-key", |_, s| {
        let b = good_gguf().kv_str("general.name", "again").build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-duplicate-tensor", |_, s| {
        let b = good_gguf()
            .tensor("token_embd.weight", &[4], 0, &[0; 16])
            .build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-too-many-dims", |_, s| {
        let b = Gguf::new()
            .tensor("token_embd.weight", &[1, 1, 1, 1, 4], 0, &[0; 16])
            .build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-dims-overflow", |_, s| {
        let b = Gguf::new()
            .tensor("token_embd.weight", &[1 << 32, 1 << 32, 4], 0, &[])
            .build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-zero-dim-hides-overflow", |_, s| {
        let b = Gguf::new()
            .tensor("token_embd.weight", &[0, 1 << 40, 1 << 40], 0, &[])
            .build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-unknown-type", |_, s| {
        let b = Gguf::new()
            .tensor("token_embd.weight", &[4], 250, &[0; 16])
            .build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-misaligned-offset", |_, s| {
        let mut g = good_gguf();
        g.tensors[1].3 = Some(4);
        write(&s.join("bad.gguf"), &g.build())
    });
    m.insert("gguf-overlapping-tensors", |_, s| {
        let mut g = good_gguf();
        g.tensors[1].3 = Some(0);
        write(&s.join("bad.gguf"), &g.build())
    });
    m.insert("gguf-bad-alignment", |_, s| {
        let b = good_gguf().kv_u32("general.alignment", 48).build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-non-utf8-key", |_, s| {
        let mut b = good_gguf().build();
        let at = find(&b, b"general.name");
        b[at] = 0xff;
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-nested-arrays", |_, s| {
        // 10 levels of one-element arrays around a u8.
        let mut v = vec![0u8]; // the u8 itself
        let mut et = 0u32; // GGUF_TYPE_UINT8
        for _ in 0..10 {
            let mut outer = et.to_le_bytes().to_vec();
            outer.extend_from_slice(&1u64.to_le_bytes());
            outer.extend_from_slice(&v);
            v = outer;
            et = 9; // GGUF_TYPE_ARRAY
        }
        let b = Gguf::new().kv_raw("x.deep", 9, &v).build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-block-width", |_, s| {
        let b = Gguf::new()
            .tensor("token_embd.weight", &[16], 8, &[0; 34])
            .build();
        write(&s.join("bad.gguf"), &b)
    });

    // Special and oversized files: never read a device, never read past a limit.
    m.insert("config-dev-zero", |m, _| {
        rm(&m.join("config.json"));
        std::os::unix::fs::symlink("/dev/zero", m.join("config.json")).unwrap();
    });
    m.insert("st-dev-zero", |m, _| {
        rm(&st(m));
        std::os::unix::fs::symlink("/dev/zero", st(m)).unwrap();
    });
    m.insert("tok-json-oversized", |m, _| {
        // Sparse: 600 MB on paper, nothing on disk.
        let f = std::fs::File::create(m.join("tokenizer.json")).unwrap();
        f.set_len(600 << 20).unwrap();
    });
    m.insert("index-oversized", |m, _| {
        sharded(m, index_for(SHARD2));
        let f = std::fs::File::create(m.join(INDEX)).unwrap();
        f.set_len(200 << 20).unwrap();
    });
    m.insert("imatrix-dev-zero", |_, _| {});
    m.insert("gguf-offset-near-u64-max", |_, s| {
        // offset + size fits in u64, data offset + offset + size does not
        // (found by libFuzzer: fuzz/regressions/gguf/tensor-end-overflows-in-message).
        let mut g = good_gguf();
        g.tensors[1].3 = Some(u64::MAX - 31);
        write(&s.join("bad.gguf"), &g.build())
    });
    m.insert("gguf-last-tensor-unpadded", |_, s| {
        // output_norm.weight (16 bytes) ends the file without its 16 bytes of padding.
        let b = good_gguf().build();
        write(&s.join("bad.gguf"), &b[..b.len() - 16])
    });
    m.insert("gguf-gap-between-tensors", |_, s| {
        // output_norm.weight 32 bytes after the end of token_embd.weight, inside the file.
        let mut g = good_gguf();
        g.tensors[1].3 = Some(64);
        let mut b = g.build();
        b.resize(b.len() + 32, 0);
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-tensors-out-of-order", |_, s| {
        // The second tensor of the header is first in the data section.
        let mut g = good_gguf();
        g.tensors[0].3 = Some(32);
        g.tensors[1].3 = Some(0);
        let b = g.build();
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("gguf-empty-tensor-past-end", |_, s| {
        // An empty tensor, and alignment 2^14: the data section starts past the end.
        let b = Gguf::new()
            .kv_u32("general.alignment", 1 << 14)
            .tensor("token_embd.weight", &[0], 0, &[])
            .build();
        write(&s.join("bad.gguf"), &b)
    });
    output_setups(&mut m);
    m
}

/// Issue 19: outputs checked before any work, never replacing an input, a
/// non-regular file or another output; conflicting options; mismatched
/// imatrix files; FIFOs given as inputs.
fn output_setups(m: &mut BTreeMap<&'static str, Setup>) {
    m.insert("out-exists-checked-before-calibration", |_, s| {
        // The corpus folder is missing: calibration would fail, but -o is checked first.
        exists(s, "exists.gguf")
    });
    m.insert("out-folder-missing", |_, _| {});
    m.insert("out-report-exists", |_, s| exists(s, "exists.json"));
    m.insert("out-fifo-with-force", |_, s| mkfifo(&s.join("fifo.gguf")));
    m.insert("out-is-the-checkpoint", |_, _| {});
    m.insert("out-report-is-config", |_, _| {});
    m.insert("out-report-is-output", |_, _| {});
    m.insert("out-symlink-to-input", |m, s| {
        std::os::unix::fs::symlink(m.join("config.json"), s.join("link.gguf")).unwrap()
    });
    m.insert("calibrate-out-fifo-with-force", |_, s| {
        mkfifo(&s.join("fifo.gguf"))
    });
    m.insert("calibrate-report-is-config", |_, _| {});
    m.insert("eval-json-exists", |_, s| exists(s, "exists.json"));
    m.insert("eval-chart-is-config", |_, _| {});
    m.insert("eval-json-is-chart", |_, _| {});
    m.insert("opts-outtype-and-target-bpw", |_, _| {});
    m.insert("opts-la-mix-without-calibration", |_, _| {});
    m.insert("opts-target-bpw-without-calibration", |_, _| {});
    m.insert("imatrix-wrong-width", |_, s| {
        let mut im = good_imatrix();
        im.entries.get_mut("blk.0.attn_k.weight").unwrap().sums = vec![1.0; 384];
        write(&s.join("other.dat"), &im.to_dat_bytes())
    });
    m.insert("imatrix-of-another-model", |_, s| {
        let mut im = Imatrix::default();
        for name in ["blk.40.attn_q.weight", "blk.41.ffn_up.weight"] {
            im.entries.insert(
                name.into(),
                ImatrixEntry {
                    sums: vec![1.0; 64],
                    counts: vec![512.0],
                },
            );
        }
        write(&s.join("other.dat"), &im.to_dat_bytes())
    });
    m.insert("config-fifo", |m, _| {
        rm(&m.join("config.json"));
        mkfifo(&m.join("config.json"))
    });
    m.insert("st-fifo", |m, _| {
        rm(&st(m));
        mkfifo(&st(m))
    });
    m.insert("shard-fifo", |m, _| {
        sharded(m, index_for(SHARD2));
        rm(&m.join(SHARD2));
        mkfifo(&m.join(SHARD2))
    });
    m.insert("imatrix-fifo", |_, s| mkfifo(&s.join("fifo.dat")));
    m.insert("gguf-fifo", |_, s| mkfifo(&s.join("fifo.gguf")));
    // Every reader has a cap (sparse files: large on paper, nothing on disk).
    m.insert("card-oversized", |m, _| {
        sparse(&m.join("README.md"), 3 << 30)
    });
    m.insert("generation-config-oversized", |m, _| {
        sparse(&m.join("generation_config.json"), 100 << 20)
    });
    m.insert("imatrix-oversized", |_, s| {
        sparse(&s.join("big.dat"), 5 << 30)
    });
    m.insert("tok-json-200mb", |m, _| {
        // Parsed, JSON takes ~11x its size: 200 MB would need over 2 GB.
        sparse(&m.join("tokenizer.json"), 200 << 20)
    });
    m.insert("gguf-many-keys", |_, s| {
        // Each pair costs ~9x its 12 bytes in memory once read.
        let mut b = good_gguf().build();
        b[16..24].copy_from_slice(&((1u64 << 20) + 1).to_le_bytes());
        write(&s.join("bad.gguf"), &b)
    });
    m.insert("out-stdout-dash", |_, _| {});
    m.insert("calibrate-tok-json-oversized", |m, _| {
        sparse(&m.join("tokenizer.json"), 600 << 20)
    });

    // Finite weights whose packed rows overflow (llama.cpp refuses the file).
    m.insert("weight-overflows-f16", |m, _| {
        poke(m, "model.layers.1.mlp.up_proj.weight", 77, 70000.0)
    });
    m.insert("weight-overflows-q8_0", |m, _| {
        // Q8_0's scale is amax / 127: beyond f16 from 8.3e6.
        poke(m, "model.layers.1.mlp.up_proj.weight", 77, 1e10)
    });
    m.insert("weight-overflows-q4_0", |m, _| {
        poke(m, "model.layers.0.self_attn.o_proj.weight", 200, -1e10)
    });
    m.insert("weight-beyond-quantizer-arithmetic", |m, _| {
        poke(m, "model.layers.1.mlp.up_proj.weight", 77, 1e38)
    });
    m.insert("imatrix-huge-values", |_, s| {
        let mut im = good_imatrix();
        for e in im.entries.values_mut() {
            e.sums.iter_mut().for_each(|x| *x = 3e38);
            e.counts = vec![1.0];
        }
        write(&s.join("huge.dat"), &im.to_dat_bytes())
    });
    // config.json hyperparameters that make NaN or infinity downstream.
    m.insert("config-rope-factor-zero", |m, _| {
        config(
            m,
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": 0.0}),
        )
    });
    m.insert("config-llama3-rope-equal-freq-factors", |m, _| {
        config(
            m,
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0,
                "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 128}),
        )
    });
    m.insert("config-rope-theta-beyond-f32", |m, _| {
        config(m, "rope_theta", serde_json::json!(1e300))
    });
    m.insert("config-eps-beyond-f32", |m, _| {
        config(m, "rms_norm_eps", serde_json::json!(1e300))
    });
    m.insert("calibrate-nan-weight", |m, _| {
        calibration_tokenizer(m);
        poke(m, "model.layers.1.mlp.up_proj.weight", 77, f32::NAN)
    });
    // A GPT-2 (learned positions, 512 of them) calibrated on longer chunks.
    m.insert("calibrate-ctx-past-learned-positions", |m, _| {
        copy_fixture(m, "gpt2")
    });
    // A gpt-oss checkpoint whose stacked gate/up experts are not 3-D.
    m.insert("st-gpt-oss-gate-up-not-3d", |m, _| {
        copy_fixture(m, "gpt-oss");
        reshape(m, "model.layers.0.mlp.experts.gate_up_proj", &[4, 8192]);
    });
    // gpt-oss as openai ships it (MXFP4 experts): the scales of a layer's gate/up
    // experts not [experts, rows, blocks]; blocks not [.., blocks, 16]; blocks alone.
    m.insert("st-gpt-oss-mxfp4-scales-shape", |m, _| {
        copy_fixture(m, "gpt-oss-mxfp4");
        reshape(
            m,
            "model.layers.0.mlp.experts.gate_up_proj_scales",
            &[4, 256],
        );
    });
    m.insert("st-gpt-oss-mxfp4-blocks-shape", |m, _| {
        copy_fixture(m, "gpt-oss-mxfp4");
        reshape(
            m,
            "model.layers.1.mlp.experts.down_proj_blocks",
            &[4, 64, 32],
        );
    });
    m.insert("st-gpt-oss-mxfp4-scales-missing", |m, _| {
        copy_fixture(m, "gpt-oss-mxfp4");
        rename(
            m,
            "model.layers.1.mlp.experts.down_proj_scales",
            "model.layers.1.mlp.experts.down_proj_scalez",
        );
    });
    m.insert("calibrate-rope-factor-zero", |m, _| {
        config(
            m,
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": 0.0}),
        )
    });
    // added_tokens
    m.insert("tok-added-duplicate-id", |m, _| {
        let mut t = common::tokenizer_json();
        let list = t["added_tokens"].as_array_mut().unwrap();
        let mut dup = list[0].clone();
        dup["content"] = serde_json::json!("<|other|>");
        list.push(dup);
        write(&m.join("tokenizer.json"), t.to_string().as_bytes())
    });
    m.insert("tok-added-token-100kb", |m, _| {
        let mut t = common::tokenizer_json();
        let list = t["added_tokens"].as_array_mut().unwrap();
        let mut long = list[0].clone();
        long["content"] = serde_json::json!("x".repeat(100_000));
        long["id"] = serde_json::json!(95);
        list.push(long);
        write(&m.join("tokenizer.json"), t.to_string().as_bytes())
    });
    m.insert("calibrate-added-token-100kb", |m, _| {
        let mut t = common::tokenizer_json();
        let list = t["added_tokens"].as_array_mut().unwrap();
        let mut long = list[0].clone();
        long["content"] = serde_json::json!("x".repeat(100_000));
        long["id"] = serde_json::json!(95);
        list.push(long);
        write(&m.join("tokenizer.json"), t.to_string().as_bytes())
    });
}

/// The tiny tokenizer with the ByteLevel decoder fields the tokenizers crate
/// requires (calibration loads it with that crate).
fn calibration_tokenizer(m: &Path) {
    let mut t = common::tokenizer_json();
    t["decoder"] = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    write(&m.join("tokenizer.json"), t.to_string().as_bytes())
}

fn sparse(p: &Path, len: u64) {
    std::fs::File::create(p).unwrap().set_len(len).unwrap();
}

fn exists(s: &Path, name: &str) {
    write(&s.join(name), b"keep me")
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

// ---------------------------------------------------------------------------
// Helpers for the setups.

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";
const SHARD3: &str = "model-00003-of-00002.safetensors";
const INDEX: &str = "model.safetensors.index.json";

fn write(p: &Path, b: &[u8]) {
    std::fs::write(p, b).unwrap();
}

fn rm(p: &Path) {
    std::fs::remove_file(p).unwrap();
}

fn st(m: &Path) -> PathBuf {
    m.join("model.safetensors")
}

fn config(m: &Path, key: &str, v: serde_json::Value) {
    let mut c = common::llama_config();
    c[key] = v;
    write(&m.join("config.json"), c.to_string().as_bytes());
}

fn truncate(m: &Path, at: fn(usize) -> usize) {
    let n = std::fs::metadata(st(m)).unwrap().len() as usize;
    truncate_to(m, at(n));
}

fn truncate_to(m: &Path, n: usize) {
    let b = std::fs::read(st(m)).unwrap();
    write(&st(m), &b[..n]);
}

/// The files of `fixtures/NAME` over the model folder's.
fn copy_fixture(m: &Path, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, m.join(f.file_name().unwrap())).unwrap();
    }
}

/// Tensor `name` renamed `to` in the header (a name of the same length, so
/// that the offsets stay).
fn rename(m: &Path, name: &str, to: &str) {
    assert_eq!(name.len(), to.len());
    let mut b = std::fs::read(st(m)).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let at = 8 + find(&b[8..8 + n], format!("\"{name}\"").as_bytes()) + 1;
    b[at..at + to.len()].copy_from_slice(to.as_bytes());
    write(&st(m), &b);
}

/// Tensor `name`'s shape in the header set to `shape` (same element count).
fn reshape(m: &Path, name: &str, shape: &[usize]) {
    let b = std::fs::read(st(m)).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    header[name]["shape"] = serde_json::json!(shape);
    raw_safetensors(m, &serde_json::to_vec(&header).unwrap(), &b[8 + n..]);
}

fn raw_safetensors(m: &Path, header: &[u8], data: &[u8]) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(data);
    write(&st(m), &b);
}

/// The checkpoint's tensors plus one of a given dtype, written by the safetensors crate.
fn write_with_extra(
    m: &Path,
    tensors: &[(String, Vec<usize>)],
    extra: (&str, &str, Vec<usize>, Vec<u8>),
) {
    use safetensors::tensor::{Dtype, TensorView};
    let datas: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            let v = common::values(n, s.iter().product());
            (
                n.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let mut views: Vec<(String, TensorView)> = datas
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    let dtype = match extra.1 {
        "I32" => Dtype::I32,
        other => panic!("dtype {other}"),
    };
    views.push((
        extra.0.to_string(),
        TensorView::new(dtype, extra.2, &extra.3).unwrap(),
    ));
    safetensors::serialize_to_file(views, None, &st(m)).unwrap();
}

/// Overwrites element `i` of tensor `name` (F32) in model.safetensors.
fn poke(m: &Path, name: &str, i: usize, v: f32) {
    let mut b = std::fs::read(st(m)).unwrap();
    let (hlen, meta) = safetensors::SafeTensors::read_metadata(&b).unwrap();
    let info = meta.info(name).unwrap();
    let at = 8 + hlen + info.data_offsets.0 + 4 * i;
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    write(&st(m), &b);
}

/// Splits the checkpoint into two shards (10 tensors, then the rest) with `index`.
fn sharded(m: &Path, index: serde_json::Value) {
    let t = common::llama_tensors();
    rm(&st(m));
    common::write_safetensors(&m.join(SHARD1), &t[..10]);
    common::write_safetensors(&m.join(SHARD2), &t[10..]);
    write(&m.join(INDEX), index.to_string().as_bytes());
}

fn index_for(second: &str) -> serde_json::Value {
    let mut wm = serde_json::Map::new();
    for (i, (n, _)) in common::llama_tensors().iter().enumerate() {
        let f = if i < 10 { SHARD1 } else { second };
        wm.insert(n.clone(), serde_json::json!(f));
    }
    serde_json::json!({"metadata": {}, "weight_map": wm})
}

/// A small valid SentencePiece model of 96 pieces (the checkpoint's vocab size).
fn spm_model() -> Vec<u8> {
    use laquant::hf::tokenizer::sentencepiece::{encode_pieces, Piece, PieceType};
    let pieces: Vec<Piece> = (0..96)
        .map(|i| Piece {
            piece: match i {
                0 => "<unk>".into(),
                1 => "<s>".into(),
                2 => "</s>".into(),
                _ => format!("\u{2581}p{i}"),
            },
            score: -(i as f32),
            kind: match i {
                0 => PieceType::Unknown,
                1 | 2 => PieceType::Control,
                _ => PieceType::Normal,
            },
        })
        .collect();
    encode_pieces(&pieces)
}

/// An imatrix that fits the tiny Llama (importance for every matmul weight).
fn good_imatrix() -> Imatrix {
    let mut im = Imatrix {
        datasets: vec!["test".into()],
        chunk_count: 1,
        chunk_size: 512,
        ..Default::default()
    };
    for l in 0..2 {
        for (n, w) in [
            ("attn_q", 64),
            ("attn_k", 64),
            ("attn_v", 64),
            ("attn_output", 64),
            ("ffn_gate", 64),
            ("ffn_up", 64),
            ("ffn_down", 128),
        ] {
            im.entries.insert(
                format!("blk.{l}.{n}.weight"),
                ImatrixEntry {
                    sums: (0..w).map(|j| 1.0 + j as f32).collect(),
                    counts: vec![512.0],
                },
            );
        }
    }
    im
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in image")
}

/// One tensor of a hand-built GGUF: name, dims, ggml type id, offset override, data.
type GgufTensor = (String, Vec<u64>, u32, Option<u64>, Vec<u8>);

/// A hand-built GGUF image, so that cases can break exactly one field.
struct Gguf {
    kvs: Vec<u8>,
    n_kv: u64,
    tensors: Vec<GgufTensor>,
}

fn gstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

impl Gguf {
    fn new() -> Gguf {
        Gguf {
            kvs: Vec::new(),
            n_kv: 0,
            tensors: Vec::new(),
        }
    }
    fn kv_raw(mut self, key: &str, ty: u32, payload: &[u8]) -> Gguf {
        gstr(&mut self.kvs, key.as_bytes());
        self.kvs.extend_from_slice(&ty.to_le_bytes());
        self.kvs.extend_from_slice(payload);
        self.n_kv += 1;
        self
    }
    fn kv_str(self, key: &str, v: &str) -> Gguf {
        let mut p = Vec::new();
        gstr(&mut p, v.as_bytes());
        self.kv_raw(key, 8, &p)
    }
    fn kv_u32(self, key: &str, v: u32) -> Gguf {
        self.kv_raw(key, 4, &v.to_le_bytes())
    }
    fn kv_strings(self, key: &str, v: &[&str]) -> Gguf {
        let mut p = 8u32.to_le_bytes().to_vec();
        p.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for s in v {
            gstr(&mut p, s.as_bytes());
        }
        self.kv_raw(key, 9, &p)
    }
    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: &[u8]) -> Gguf {
        self.tensors
            .push((name.into(), dims.to_vec(), ty, None, data.to_vec()));
        self
    }
    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kvs);
        let mut data = Vec::new();
        for (name, dims, ty, off, d) in &self.tensors {
            gstr(&mut out, name.as_bytes());
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for x in dims {
                out.extend_from_slice(&x.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&off.unwrap_or(data.len() as u64).to_le_bytes());
            data.extend_from_slice(d);
            data.resize(data.len().next_multiple_of(32), 0);
        }
        out.resize(out.len().next_multiple_of(32), 0);
        out.extend_from_slice(&data);
        out
    }
}

/// A valid GGUF: metadata with a string array, two F32 tensors.
fn good_gguf() -> Gguf {
    Gguf::new()
        .kv_str("general.architecture", "llama")
        .kv_str("general.name", "tiny")
        .kv_strings("tokenizer.ggml.tokens", &["<s>", "</s>", "a"])
        .tensor("token_embd.weight", &[4, 2], 0, &[0; 32])
        .tensor("output_norm.weight", &[4], 0, &[0; 16])
}

/// A valid model GGUF (llama, one layer, one head) with F32 tensors, for `convert FILE.gguf`.
fn model_gguf() -> Gguf {
    model_gguf_with("token_embd.weight", &[32, 2], 0, &[0; 256])
}

/// [`model_gguf`] with its first tensor replaced.
fn model_gguf_with(name: &str, dims: &[u64], ty: u32, data: &[u8]) -> Gguf {
    Gguf::new()
        .kv_str("general.architecture", "llama")
        .kv_str("general.name", "tiny")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.attention.head_count", 1)
        .kv_strings("tokenizer.ggml.tokens", &["<s>", "</s>", "a"])
        .tensor(name, dims, ty, data)
        .tensor("output_norm.weight", &[32], 0, &[0; 128])
}

// ---------------------------------------------------------------------------
// The runner.

struct Row {
    case: String,
    command: Vec<String>,
    needles: Vec<String>,
}

fn table() -> Vec<Row> {
    let text = include_str!("malformed/cases.tsv");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(
                cols.len(),
                3,
                "cases.tsv row {l:?}: want 3 tab-separated columns"
            );
            Row {
                case: cols[0].to_string(),
                command: cols[1].split_whitespace().map(String::from).collect(),
                needles: cols[2].split(" | ").map(String::from).collect(),
            }
        })
        .collect()
}

fn laquant(args: &[String]) -> (i32, String) {
    laquant_env(args, &[])
}

/// Runs the binary; one that has not ended after [`HANG`] (reading a FIFO, say)
/// is killed and reported as hung.
fn laquant_env(args: &[String], env: &[(&str, &Path)]) -> (i32, String) {
    use std::io::Read;
    let mut c = Command::new(bin());
    c.args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if t0.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let err = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    match status {
        Some(st) => (st.code().unwrap_or(-1), err),
        None => (-1, format!("hung: killed after {HANG:?}\n{err}")),
    }
}

/// The binary under test; LAQUANT_MALFORMED_BIN: another build to run the
/// cases against (to see which of them an older binary fails).
fn bin() -> PathBuf {
    std::env::var_os("LAQUANT_MALFORMED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_laquant")))
}

/// How long a case may run before it counts as hung (every case takes well under a second).
const HANG: std::time::Duration = std::time::Duration::from_secs(120);

/// Every file of a folder (recursively) with its contents or, for large and
/// special files, its type, size and time: what a failed run must leave untouched.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut v = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                todo.push(p.clone());
                "folder".to_string()
            } else if m.file_type().is_symlink() {
                format!("link to {:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_file() && m.len() <= 16 << 20 {
                format!("{:?}", std::fs::read(&p).unwrap())
            } else {
                format!(
                    "{:?} {} bytes, mtime {}",
                    m.file_type(),
                    m.len(),
                    m.mtime_nsec()
                )
            };
            v.push((p, what));
        }
    }
    v.sort();
    v
}

/// Runs one case; `Err` says what failed.
fn run_case(row: &Row, setup: Setup) -> Result<String, String> {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    let scratch = d.path().join("scratch");
    let outdir = d.path().join("out");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::create_dir_all(&outdir).unwrap();
    common::write_llama(&model);
    setup(&model, &scratch);
    let out = outdir.join("x.gguf");
    let arg = |a: &str| -> String {
        if let Some(rest) = a.strip_prefix("{model}") {
            format!("{}{rest}", model.display())
        } else if a.starts_with('-') {
            a.to_string()
        } else {
            scratch.join(a).display().to_string()
        }
    };
    // The values of these options, and `none`, are not paths.
    const LITERAL: &[&str] = &["--outtype", "--target-bpw", "--ctx", "--chunks"];
    let rest = &row.command[1..];
    let mut tail = Vec::new();
    let mut prev: &str = "";
    for a in rest {
        tail.push(
            if LITERAL.contains(&prev) || a.starts_with('-') || a == "none" {
                a.clone()
            } else {
                arg(a)
            },
        );
        prev = a;
    }
    let given_o = rest.iter().any(|a| a == "-o");
    let mut args: Vec<String> = vec![row.command[0].clone(), model.display().to_string()];
    if row.command[0] == "convert-gguf" {
        // `convert FILE.gguf`: the scratch file, not the model folder, is the input.
        args = vec![
            "convert".into(),
            "-o".into(),
            out.display().to_string(),
            "--quiet".into(),
        ];
    }
    match row.command[0].as_str() {
        "convert-gguf" => {}
        "convert" | "calibrate" => {
            if !given_o {
                args.extend(["-o".into(), out.display().to_string()]);
            }
            args.push("--quiet".into());
            let chooses_type = ["--outtype", "--target-bpw"];
            if row.command[0] == "convert"
                && !rest.iter().any(|a| chooses_type.contains(&a.as_str()))
            {
                args.extend([
                    "--outtype".into(),
                    "f16".into(),
                    "--calib".into(),
                    "none".into(),
                ]);
            }
        }
        "eval" => args.push("--quiet".into()),
        "inspect" => {
            args.pop();
        }
        other => return Err(format!("unknown command {other}")),
    }
    args.extend(tail);
    let inputs = (snapshot(&model), snapshot(&scratch));
    let (code, err) = laquant(&args);
    let mut problems = Vec::new();
    if inputs != (snapshot(&model), snapshot(&scratch)) {
        problems.push("the model or scratch folder changed".into());
    }
    if code != 1 {
        problems.push(format!("exit code {code}, want 1"));
    }
    if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
        problems.push("panicked".into());
    }
    for n in &row.needles {
        if !err.contains(n.as_str()) {
            problems.push(format!("stderr lacks {n:?}"));
        }
    }
    if let Some(r) = repeated_cause(&err) {
        problems.push(format!("the message repeats its cause {r:?}"));
    }
    let left: Vec<_> = std::fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if !left.is_empty() {
        problems.push(format!("files left in the output folder: {left:?}"));
    }
    // Messages show temp paths; the table shows them relative.
    let msg = err
        .trim()
        .replace(&format!("{}/", model.display()), "")
        .replace(&format!("{}/", scratch.display()), "")
        .replace(&model.display().to_string(), "MODEL");
    if problems.is_empty() {
        Ok(msg)
    } else {
        Err(format!(
            "{}: {}\n    stderr: {msg}",
            row.case,
            problems.join("; ")
        ))
    }
}

/// A cause printed twice in a row (`a: X: X`), as an error whose message
/// already holds its source prints under `{:#}`; `None` when every part of the
/// chain is said once.
fn repeated_cause(err: &str) -> Option<String> {
    let parts: Vec<&str> = err.trim().split(": ").collect();
    (1..parts.len()).find_map(|len| {
        (0..parts.len().saturating_sub(2 * len - 1)).find_map(|i| {
            let (a, b) = (
                &parts[i..i + len],
                &parts[i + len..(i + 2 * len).min(parts.len())],
            );
            let text = a.join(": ");
            (a == b && text.len() >= 16).then_some(text)
        })
    })
}

#[test]
fn a_repeated_cause_is_found() {
    let dup = "laquant: error: t.json: cannot read: 9 bytes is more than the 8-byte limit: 9 bytes is more than the 8-byte limit";
    assert_eq!(
        repeated_cause(dup).as_deref(),
        Some("9 bytes is more than the 8-byte limit")
    );
    assert_eq!(
        repeated_cause(
            "laquant: error: t.json: cannot read: 9 bytes is more than the 8-byte limit"
        ),
        None
    );
}

#[test]
fn catalogue_of_malformed_inputs() {
    let rows = table();
    let setups = setups();
    assert!(rows.len() >= 30, "the catalogue holds at least 30 cases");
    let listed: Vec<&str> = rows.iter().map(|r| r.case.as_str()).collect();
    for name in setups.keys() {
        assert!(listed.contains(name), "setup {name} is not in cases.tsv");
    }
    let mut failures = Vec::new();
    let mut report = String::from(
        "# What laquant prints for each malformed input\n\n\
         Generated by `LAQUANT_MALFORMED_TABLE=tests/malformed/messages.md cargo test --release --test malformed`\n\
         from the cases of `tests/malformed/cases.tsv` (temporary paths shortened to the file name; MODEL is the model folder).\n\n\
         | case | message |\n|---|---|\n",
    );
    for row in &rows {
        let Some(setup) = setups.get(row.case.as_str()) else {
            failures.push(format!("{}: no setup function", row.case));
            continue;
        };
        match run_case(row, *setup) {
            Ok(msg) => report.push_str(&format!(
                "| {} | `{}` |\n",
                row.case,
                msg.replace('|', "\\|").replace('\n', " ")
            )),
            Err(e) => failures.push(e),
        }
    }
    if let Some(p) = std::env::var_os("LAQUANT_MALFORMED_TABLE") {
        std::fs::write(p, &report).unwrap();
    } else if failures.is_empty() {
        // The committed table is what laquant prints today (it is documentation).
        let committed = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/malformed/messages.md");
        let old = std::fs::read_to_string(committed).unwrap_or_default();
        let stale: Vec<&str> = report
            .lines()
            .filter(|l| !old.lines().any(|o| o == *l))
            .collect();
        assert!(
            stale.is_empty() && old.lines().count() == report.lines().count(),
            "tests/malformed/messages.md is out of date (regenerate it with \
             `LAQUANT_MALFORMED_TABLE=tests/malformed/messages.md cargo test --release --test malformed`); \
             lines it lacks:\n{}",
            stale.join("\n")
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        rows.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// What must still work.

fn convert(model: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<String> = vec![
        "convert".into(),
        model.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--outtype".into(),
        "f32".into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    laquant(&args)
}

#[test]
fn good_checkpoint_converts_and_is_not_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    let out = d.path().join("x.gguf");
    let (code, err) = convert(&model, &out, &[]);
    assert_eq!(code, 0, "{err}");
    let f = laquant::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(f.tensors.len(), 3 + 2 * 9);
    let (code, err) = convert(&model, &out, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn sharded_checkpoint_converts() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    sharded(&model, index_for(SHARD2));
    let out = d.path().join("x.gguf");
    let (code, err) = convert(&model, &out, &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn allow_nonfinite_proceeds_and_keeps_the_values() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    poke(&model, "model.norm.weight", 3, f32::INFINITY);
    poke(&model, "model.layers.1.mlp.up_proj.weight", 77, f32::NAN);
    let out = d.path().join("x.gguf");
    let (code, err) = convert(&model, &out, &["--allow-nonfinite"]);
    assert_eq!(code, 0, "{err}");
    let f = laquant::gguf::GgufFile::open(&out).unwrap();
    let norm = f
        .tensor_f32(f.tensor("output_norm.weight").unwrap())
        .unwrap();
    assert_eq!(norm[3], f32::INFINITY);
    let up = f
        .tensor_f32(f.tensor("blk.1.ffn_up.weight").unwrap())
        .unwrap();
    assert!(up[77].is_nan());
    assert_eq!(up.iter().filter(|x| !x.is_finite()).count(), 1);
}

#[test]
fn good_imatrix_files_are_accepted() {
    // The imatrix cases above fail because of what they break, not because the
    // tiny model refuses every imatrix.
    for (name, bytes) in [
        ("good.dat", good_imatrix().to_dat_bytes()),
        ("good.gguf", good_imatrix().to_gguf_bytes().unwrap()),
    ] {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        common::write_llama(&model);
        let im = d.path().join(name);
        write(&im, &bytes);
        let out = d.path().join("x.gguf");
        let (code, err) = laquant(&[
            "convert".into(),
            model.display().to_string(),
            "-o".into(),
            out.display().to_string(),
            "--outtype".into(),
            "q4_k_m".into(),
            "--imatrix".into(),
            im.display().to_string(),
            "--quiet".into(),
        ]);
        assert_eq!(code, 0, "{name}: {err}");
    }
}

#[test]
fn dat_imatrix_naming_a_tensor_twice_keeps_the_last_entry_as_llama_cpp() {
    // common_imatrix_load_legacy (common/imatrix-loader.cpp) assigns
    // `imatrix.entries[name]` for every entry: a later one replaces an earlier one.
    let mut b = 2i32.to_le_bytes().to_vec();
    for (ncall, vals) in [(1i32, [1f32, 2.0]), (3, [5.0, 7.0])] {
        let name = b"blk.0.attn_q.weight";
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&ncall.to_le_bytes());
        b.extend_from_slice(&(vals.len() as i32).to_le_bytes());
        for v in vals {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("twice.dat");
    write(&p, &b);
    let m = laquant::calib::Imatrix::read(&p).unwrap();
    assert_eq!(m.entries.len(), 1);
    let e = &m.entries["blk.0.attn_q.weight"];
    assert_eq!(
        (e.sums.as_slice(), e.counts.as_slice()),
        (&[5.0, 7.0][..], &[3.0][..])
    );
}

#[test]
fn good_gguf_inspects() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("good.gguf");
    write(&p, &good_gguf().build());
    let (code, err) = laquant(&["inspect".into(), p.display().to_string()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn fuzz_seeds_are_valid_inputs() {
    // The committed seed corpus (fuzz/seeds, from fuzz/make_seeds.py) starts every
    // fuzz target from inputs the readers accept.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let files = |t: &str| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(root.join(t))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        v.sort();
        assert!(!v.is_empty(), "no seeds for {t}");
        v
    };
    for (p, b) in files("safetensors") {
        laquant::hf::safetensors::Shards::from_bytes(&b)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, b) in files("gguf") {
        laquant::gguf::GgufFile::from_bytes(b).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for t in ["imatrix_dat", "imatrix_gguf"] {
        for (p, b) in files(t) {
            Imatrix::from_bytes(b, &p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    for (p, b) in files("tokenizer_model") {
        laquant::hf::tokenizer::sentencepiece::parse_pieces(&b)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, b) in files("config") {
        let j: serde_json::Value = serde_json::from_slice(&b).unwrap();
        laquant::hf::Config::from_json(j, p.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

// ---------------------------------------------------------------------------
// The Hugging Face cache (issue 19).

const REV: &str = "0123456789abcdef0123456789abcdef01234567";

/// Lays out `files` (a checkpoint folder) as huggingface_hub does under
/// `cache/models--org--tiny`: each file a blob named by its hash in `blobs/`,
/// `snapshots/<REV>/<name>` a relative symlink `../../blobs/<hash>`, and
/// `refs/main` naming the revision. Returns the snapshot folder.
fn hub_cache(cache: &Path, files: &Path) -> PathBuf {
    let repo = cache.join("models--org--tiny");
    let snap = repo.join("snapshots").join(REV);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    write(&repo.join("refs/main"), REV.as_bytes());
    for e in std::fs::read_dir(files).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        // A stand-in for the blob's sha256: distinct per content.
        let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let blob = format!("{h:016x}{:08x}", bytes.len());
        write(&repo.join("blobs").join(&blob), &bytes);
        std::os::unix::fs::symlink(
            format!("../../blobs/{blob}"),
            snap.join(p.file_name().unwrap()),
        )
        .unwrap();
    }
    snap
}

fn convert_hub(cache: &Path, out: &Path) -> (i32, String) {
    let args: Vec<String> = [
        "convert",
        "org/tiny",
        "-o",
        out.to_str().unwrap(),
        "--outtype",
        "f32",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    laquant_env(&args, &[("HF_HUB_CACHE", cache)])
}

#[test]
fn sharded_checkpoint_in_a_hub_cache_converts() {
    let d = tempfile::tempdir().unwrap();
    let files = d.path().join("files");
    common::write_llama(&files);
    sharded(&files, index_for(SHARD2));
    let cache = d.path().join("hub");
    let snap = hub_cache(&cache, &files);
    assert!(std::fs::symlink_metadata(snap.join(SHARD2))
        .unwrap()
        .file_type()
        .is_symlink());
    let out = d.path().join("x.gguf");
    let (code, err) = convert_hub(&cache, &out);
    assert_eq!(code, 0, "{err}");
    // The same bytes as from the plain folder.
    let plain = d.path().join("plain.gguf");
    let (code, err) = convert(&files, &plain, &[]);
    assert_eq!(code, 0, "{err}");
    let g = laquant::gguf::GgufFile::open(&out).unwrap();
    let p = laquant::gguf::GgufFile::open(&plain).unwrap();
    assert_eq!(g.tensors.len(), p.tensors.len());
    for (a, b) in g.tensors.iter().zip(&p.tensors) {
        assert_eq!(g.tensor_data(a), p.tensor_data(b), "{}", a.name);
    }
    // A shard link leading out of the repository is still refused.
    let outside = d.path().join("outside.safetensors");
    std::fs::copy(files.join(SHARD2), &outside).unwrap();
    rm(&snap.join(SHARD2));
    std::os::unix::fs::symlink(&outside, snap.join(SHARD2)).unwrap();
    let (code, err) = convert_hub(&cache, &d.path().join("y.gguf"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("resolves outside the model folder"), "{err}");
}

#[test]
fn refs_main_naming_a_missing_snapshot_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let files = d.path().join("files");
    common::write_llama(&files);
    let cache = d.path().join("hub");
    let snap = hub_cache(&cache, &files);
    // Another, newer snapshot exists; refs/main names one that does not.
    let other = snap.parent().unwrap().join("fedcba");
    std::fs::create_dir_all(&other).unwrap();
    for e in std::fs::read_dir(&snap).unwrap() {
        let p = e.unwrap().path();
        std::os::unix::fs::symlink(
            std::fs::read_link(&p).unwrap(),
            other.join(p.file_name().unwrap()),
        )
        .unwrap();
    }
    std::fs::remove_dir_all(&snap).unwrap();
    let out = d.path().join("x.gguf");
    let (code, err) = convert_hub(&cache, &out);
    assert_eq!(code, 1, "{err}");
    for want in ["refs/main", REV, "does not exist"] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!out.exists());
}

#[test]
fn refs_main_as_a_fifo_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let files = d.path().join("files");
    common::write_llama(&files);
    let cache = d.path().join("hub");
    hub_cache(&cache, &files);
    let refs = cache.join("models--org--tiny/refs/main");
    rm(&refs);
    mkfifo(&refs);
    let (code, err) = convert_hub(&cache, &d.path().join("x.gguf"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refs/main") && err.contains("FIFO"), "{err}");
}

#[test]
fn closed_stdout_ends_quietly() {
    // `laquant inspect --json x.gguf | head -1`: the reader has gone before the
    // output is written (here from the start, so every write meets EPIPE).
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    let gguf = d.path().join("x.gguf");
    let (code, err) = convert(&model, &gguf, &[]);
    assert_eq!(code, 0, "{err}");
    let m = model.display().to_string();
    let g = gguf.display().to_string();
    for args in [
        vec!["inspect", "--json", &g],
        vec!["inspect", &g],
        vec!["plan", &m, "--outtype", "q8_0", "--calib", "none"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(bin())
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn a_mistyped_outtype_is_a_usage_error_naming_the_nearest_and_every_valid_type() {
    // A usage error (exit code 2, clap's message): the value, the nearest
    // valid one and the list, before the model is even looked at.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.gguf");
    let (code, err) = laquant(&[
        "convert".into(),
        d.path().join("absent").display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--outtype".into(),
        "q4_k_n".into(),
    ]);
    assert_eq!(code, 2, "{err}");
    for n in [
        "'q4_k_n'",
        "--outtype",
        "a similar value exists: 'q4_k_m'",
        "possible values: auto, f32, f16, bf16, q8_0",
        "la-mix",
    ] {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(!out.exists());
    // Any case, and llama-quantize's aliases, are accepted.
    for ty in ["Q8_0", "q4_k", "LaMix"] {
        let (code, err) = laquant(&[
            "plan".into(),
            d.path().join("absent").display().to_string(),
            "--outtype".into(),
            ty.into(),
            "--calib".into(),
            "none".into(),
        ]);
        assert!(code != 2, "{ty}: {err}");
    }
}

#[test]
fn llama_cpp_spellings_are_accepted_and_quiet_still_reports() {
    // --outfile (convert_hf_to_gguf.py), --output-tensor-type and
    // --token-embedding-type (llama-quantize), and llama-quantize's q4_k alias
    // of q4_k_m: the same file as the laquant spellings. --quiet hides progress,
    // not the closing "wrote" line.
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    let m = model.display().to_string();
    let run = |args: &[&str]| -> (Vec<u8>, String) {
        let out = d.path().join("x.gguf");
        let _ = std::fs::remove_file(&out);
        let mut a: Vec<String> = vec!["convert".into(), m.clone(), "--quiet".into()];
        a.extend(args.iter().map(|s| s.to_string()));
        a.iter_mut()
            .for_each(|s| *s = s.replace("OUT", &out.display().to_string()));
        let (code, err) = laquant(&a);
        assert_eq!(code, 0, "{args:?}: {err}");
        (std::fs::read(&out).unwrap(), err)
    };
    let (ours, err) = run(&[
        "-o",
        "OUT",
        "--outtype",
        "q4_k_m",
        "--output-type",
        "q8_0",
        "--embedding-type",
        "q4_0",
    ]);
    assert!(err.contains("wrote ") && err.contains("x.gguf"), "{err}");
    let (theirs, _) = run(&[
        "--outfile",
        "OUT",
        "--outtype",
        "q4_k",
        "--output-tensor-type",
        "q8_0",
        "--token-embedding-type",
        "q4_0",
    ]);
    assert!(ours == theirs, "the llama.cpp spellings give another file");
}

#[test]
fn a_card_of_nested_yaml_aliases_is_skipped_with_a_warning() {
    // "Billion laughs": 9 levels of 10 aliases, 10^9 strings from 400 bytes.
    let mut card = String::from("---\nlicense: mit\na0: &a0 [\"lol\"]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        card.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    card.push_str("---\n# A card\n");
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    write(&model.join("README.md"), card.as_bytes());
    let out = d.path().join("x.gguf");
    let (code, err) = convert(&model, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("README.md") && err.contains("YAML aliases"),
        "{err}"
    );
    // The card's keys are skipped: no license from it.
    let f = laquant::gguf::GgufFile::open(&out).unwrap();
    let keys = laquant::inspect::to_text(&f);
    assert!(!keys.contains("general.license"), "{keys}");
    // The same card without the aliases gives its license.
    write(&model.join("README.md"), b"---\nlicense: mit\n---\n");
    let (code, err) = convert(&model, &out, &["--force"]);
    assert_eq!(code, 0, "{err}");
    let f = laquant::gguf::GgufFile::open(&out).unwrap();
    assert!(laquant::inspect::to_text(&f).contains("general.license"));
}
