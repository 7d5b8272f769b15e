//! Small tokenizer folders written by the tokenizer tests: each exercises a
//! path of convert_hf_to_gguf.py's vocab code (byte-level BPE with both merges
//! forms, SentencePiece, llama-hf) with added tokens, padding and special ids.
#![allow(dead_code)]

use std::path::Path;

use laquant::hf::tokenizer::sentencepiece::{encode_pieces, Piece, PieceType};
use serde_json::{json, Value as Json};

pub const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub fn write(dir: &Path, name: &str, v: &Json) {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// The base BPE vocabulary shared by the BPE fixtures (ids 0..).
pub fn base_vocab() -> Vec<&'static str> {
    vec![
        "h", "e", "l", "o", "Ġ", "w", "r", "d", "1", "2", "he", "ll", "Ġw", "hell", "hello", "Ġwo",
        "a", "b", "c",
    ]
}

fn vocab_obj(tokens: &[&str]) -> Json {
    let mut m = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        m.insert(t.to_string(), json!(i));
    }
    Json::Object(m)
}

fn added(id: usize, content: &str, special: bool, normalized: bool) -> Json {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": normalized, "special": special})
}

fn split(re: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// Llama-3 style: [a, b] merges, added tokens after the base vocabulary
/// (specials, a non-normalized byte-level one, a look-special one), padding to
/// config vocab_size, TemplateProcessing adding BOS, eos differing from config's list.
pub fn bpe_llama3(dir: &Path) {
    let mut base = base_vocab();
    base.extend(["a b", "a bc"]);
    let n = base.len();
    let tok = json!({
        "version": "1.0",
        "added_tokens": [
            added(n, "<|begin_of_text|>", true, false),
            added(n + 1, "<|end_of_text|>", true, false),
            added(n + 2, "<|eot_id|>", true, false),
            added(n + 3, "Ġmytok", false, false),
            added(n + 4, "<think>", false, true),
            added(n + 5, "<|fake|>", false, true),
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(LLAMA3_RE), byte_level(false)]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [n], "tokens": ["<|begin_of_text|>"]}}}
        ]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab_obj(&base),
                  "merges": [["h", "e"], ["l", "l"], ["Ġ", "w"], ["he", "ll"], ["hell", "o"], ["Ġw", "o"], ["a b", "c"]]}
    });
    write(dir, "tokenizer.json", &tok);
    write(
        dir,
        "tokenizer_config.json",
        &json!({
            "add_prefix_space": false,
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "pad_token": "<|end_of_text|>",
            "clean_up_tokenization_spaces": true,
            "chat_template": "{% for m in messages %}<|begin_of_text|>{{ m['content'] }}<|eot_id|>{% endfor %}",
            "model_max_length": 1024,
            "tokenizer_class": "PreTrainedTokenizerFast"
        }),
    );
    write(
        dir,
        "config.json",
        &json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "bos_token_id": n, "eos_token_id": [n + 1, n + 2], "vocab_size": n + 9
        }),
    );
}

/// Qwen2 style: "a b" string merges, NFC normalizer, ByteLevel post-processor,
/// added tokens inside and after the base vocabulary, a list of named chat templates.
pub fn bpe_qwen2(dir: &Path, arch: &str) {
    let base = base_vocab();
    let n = base.len();
    let tok = json!({
        "version": "1.0",
        "added_tokens": [
            added(n, "<|endoftext|>", true, false),
            added(n + 1, "<|im_start|>", true, false),
            added(n + 2, "<|im_end|>", true, false),
            added(n + 3, "<tool_call>", false, false),
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(QWEN2_RE), byte_level(false)]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab_obj(&base),
                  "merges": ["h e", "l l", "Ġ w", "he ll", "hell o", "Ġw o"]}
    });
    write(dir, "tokenizer.json", &tok);
    write(
        dir,
        "tokenizer_config.json",
        &json!({
            "add_bos_token": false,
            "add_prefix_space": false,
            "bos_token": null,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": null,
            "clean_up_tokenization_spaces": false,
            "errors": "replace",
            "chat_template": [
                {"name": "default", "template": "{{ messages[0]['content'] }}<|im_end|>"},
                {"name": "tool use", "template": "{{ tools }}<|im_end|>"}
            ],
            "model_max_length": 32768,
            "tokenizer_class": "Qwen2Tokenizer"
        }),
    );
    write(
        dir,
        "config.json",
        &json!({
            "architectures": [arch], "bos_token_id": n, "eos_token_id": n + 2, "vocab_size": n + 6
        }),
    );
}

/// SmolLM style: Digits + ByteLevel(use_regex), Llama arch with 49152 tokens
/// (convert forces add_bos_token = false), template in chat_template.jinja.
pub fn bpe_smollm(dir: &Path) {
    let base = base_vocab();
    let n = base.len();
    let tok = json!({
        "version": "1.0",
        "added_tokens": [added(n, "<|endoftext|>", true, false), added(n + 1, "<|im_start|>", true, false),
                         added(n + 2, "<|im_end|>", true, false)],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "vocab": vocab_obj(&base),
                  "merges": ["h e", "l l", "Ġ w", "he ll", "hell o", "Ġw o"]}
    });
    write(dir, "tokenizer.json", &tok);
    write(
        dir,
        "tokenizer_config.json",
        &json!({
            "add_prefix_space": false,
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": false,
            "model_max_length": 8192,
            "tokenizer_class": "GPT2Tokenizer"
        }),
    );
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}",
    )
    .unwrap();
    write(
        dir,
        "config.json",
        &json!({
            "architectures": ["LlamaForCausalLM"], "bos_token_id": n + 1, "eos_token_id": n + 2, "vocab_size": 49152
        }),
    );
}

/// The pieces of the SentencePiece fixture.
pub fn spm_pieces() -> Vec<Piece> {
    let p = |s: &str, score: f32, kind| Piece {
        piece: s.into(),
        score,
        kind,
    };
    let mut v = vec![
        p("<unk>", 0.0, PieceType::Unknown),
        p("<s>", 0.0, PieceType::Control),
        p("</s>", 0.0, PieceType::Control),
    ];
    // sentencepiece insists on all 256 byte pieces once byte_fallback is on.
    v.extend((0..=255u8).map(|b| p(&format!("<0x{b:02X}>"), 0.0, PieceType::Byte)));
    v.extend([
        p("▁t", -1.0, PieceType::Normal),
        p("he", -2.0, PieceType::Normal),
        p("▁the", -3.0, PieceType::Normal),
        p("▁a", -3.5, PieceType::Normal),
        p("<tool>", 0.0, PieceType::UserDefined),
        p("<unused0>", 0.0, PieceType::Unused),
        p("é", -9.125, PieceType::Normal),
        p("t", -10.0, PieceType::Normal),
        p("h", -10.5, PieceType::Normal),
        p("e", -11.0, PieceType::Normal),
        p("a", -11.5, PieceType::Normal),
        p("▁", -12.0, PieceType::Normal),
    ]);
    v
}

/// SentencePiece: tokenizer.model only (no tokenizer.json), added_tokens.json,
/// tokenizer_config.json added_tokens_decoder (special and user-defined with ▁),
/// config vocab_size above the model's (padding with [PADi], score -10000).
pub fn spm_llama(dir: &Path) {
    let pieces = spm_pieces();
    let n = pieces.len();
    let mut model = encode_pieces(&pieces);
    // TrainerSpec (field 2): model_type = BPE (field 3 = 2), byte_fallback = true (field 35),
    // which sentencepiece requires of a model with <0xNN> pieces.
    model.extend_from_slice(&[0x12, 0x05, 0x18, 0x02, 0x98, 0x02, 0x01]);
    std::fs::write(dir.join("tokenizer.model"), model).unwrap();
    write(
        dir,
        "added_tokens.json",
        &json!({"<extra_a>": n, "<extra_b>": n + 1, "<too_far>": n + 100}),
    );
    write(
        dir,
        "tokenizer_config.json",
        &json!({
            "add_bos_token": true,
            "add_eos_token": false,
            "bos_token": "<s>",
            "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
            "unk_token": "<unk>",
            "pad_token": null,
            "added_tokens_decoder": {
                "0": {"content": "<unk>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
                "1": {"content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
                "2": {"content": "</s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
                (n + 1).to_string(): {"content": "▁user▁tok", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": false},
                (n + 2).to_string(): {"content": "<|im_start|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": false}
            },
            "chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
            "legacy": false,
            "tokenizer_class": "LlamaTokenizer"
        }),
    );
    write(
        dir,
        "config.json",
        &json!({
            "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
            "vocab_size": n + 4
        }),
    );
}

/// Llama-hf: a byte-fallback BPE tokenizer.json with a Sequence decoder and no
/// tokenizer.model (gguf-py LlamaHfVocab), added tokens past the base vocabulary.
pub fn llama_hf(dir: &Path) {
    let base = [
        "<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "▁", "t", "h", "e", "▁t", "he", "▁the",
    ];
    let n = base.len();
    let tok = json!({
        "version": "1.0",
        "added_tokens": [
            added(0, "<unk>", true, false), added(1, "<s>", true, false), added(2, "</s>", true, false),
            added(n, "<|user|>", true, false), added(n + 1, "<pad>", false, false)
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab_obj(&base), "merges": ["▁ t", "h e", "▁t he"]}
    });
    write(dir, "tokenizer.json", &tok);
    write(
        dir,
        "tokenizer_config.json",
        &json!({
            "add_bos_token": true, "add_eos_token": false,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": null,
            "additional_special_tokens": ["<|user|>"],
            "clean_up_tokenization_spaces": false, "legacy": false,
            "tokenizer_class": "LlamaTokenizer"
        }),
    );
    write(
        dir,
        "config.json",
        &json!({
            "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "vocab_size": n + 2
        }),
    );
}

fn edit_json(dir: &Path, name: &str, f: impl FnOnce(&mut Json)) {
    let mut v: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap();
    f(&mut v);
    write(dir, name, &v);
}

/// The Llama-3 fixture with an EOS-appending template whose EOS differs from
/// tokenizer_config's (convert then records the old one as EOT), a Lowercase +
/// StripAccents normalizer, merges in merges.txt only, and the chat templates in
/// chat_template.jinja plus additional_chat_templates/*.jinja.
pub fn bpe_llama3_eot_variant(dir: &Path) {
    bpe_llama3(dir);
    let bos = json!({"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}});
    let end = json!({"SpecialToken": {"id": "<|end_of_text|>", "type_id": 0}});
    edit_json(dir, "tokenizer.json", |t| {
        t["post_processor"] = json!({"type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}, end],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, end, {"Sequence": {"id": "B", "type_id": 1}}, end],
            "special_tokens": {}});
        t["normalizer"] = json!({"type": "Sequence", "normalizers": [{"type": "Lowercase"}, {"type": "StripAccents"}]});
        t["model"]["merges"] = json!([]);
    });
    std::fs::write(
        dir.join("merges.txt"),
        "#version: 0.2\nh e\nl l\nĠ w\n\nhe ll\nbad line here\nhell o\n",
    )
    .unwrap();
    edit_json(dir, "tokenizer_config.json", |c| {
        c.as_object_mut().unwrap().remove("chat_template");
    });
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
    )
    .unwrap();
    std::fs::create_dir(dir.join("additional_chat_templates")).unwrap();
    std::fs::write(
        dir.join("additional_chat_templates/tool-use.jinja"),
        "{{ tools }}",
    )
    .unwrap();
    std::fs::write(
        dir.join("additional_chat_templates/rag.jinja"),
        "{{ documents }}",
    )
    .unwrap();
}

/// The Qwen2 fixture with its template in chat_template.json and an
/// add_eos_token the ByteLevel post-processor overrules.
pub fn bpe_qwen2_template_json_variant(dir: &Path) {
    bpe_qwen2(dir, "Qwen2ForCausalLM");
    edit_json(dir, "tokenizer_config.json", |c| {
        let o = c.as_object_mut().unwrap();
        o.remove("chat_template");
        o.insert("add_eos_token".into(), json!(true));
    });
    write(
        dir,
        "chat_template.json",
        &json!({"chat_template": "{{ messages }}"}),
    );
}

/// The Llama-3 fixture naming special tokens the vocabulary lacks (a pad token
/// and an additional special token): transformers adds them after the last id.
pub fn bpe_llama3_missing_specials_variant(dir: &Path) {
    bpe_llama3(dir);
    edit_json(dir, "tokenizer_config.json", |c| {
        c["pad_token"] = json!("<pad>");
        c["additional_special_tokens"] = json!(["<|extra|>"]);
    });
}
