//! `general.*` metadata against snapshots of llama.cpp's own gguf-py.
//!
//! The snapshots in fixtures/cards/expected/ were made by scripts/card-ref.py,
//! which runs gguf-py's `Metadata.load` + `set_gguf_meta_model` (as
//! convert_hf_to_gguf.py's `prepare_metadata` does), writes the keys with a real
//! `GGUFWriter` and decodes them back; so these tests need no Python.

use laquant::gguf::{Metadata, Value, ValueType};
use laquant::hf::convert_py::{
    default_file_stem, general_metadata, id_to_title, model_id_components, parse_model_card,
    size_label, CardInput, PyValue,
};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cards() -> PathBuf {
    root().join("fixtures/cards")
}

/// Where the front matter and name snapshots are: the committed ones, or a
/// fuzz run of `scripts/card-ref.py --fuzz` named by LAQUANT_CARD_SNAPSHOTS.
fn snapshots() -> (PathBuf, PathBuf, PathBuf) {
    match std::env::var_os("LAQUANT_CARD_SNAPSHOTS") {
        Some(d) => {
            let d = PathBuf::from(d);
            (
                d.join("frontmatter-in.json"),
                d.join("frontmatter.json"),
                d.join("names.json"),
            )
        }
        None => (
            cards().join("frontmatter.json"),
            cards().join("expected/frontmatter.json"),
            cards().join("expected/names.json"),
        ),
    }
}

fn load_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `@shared/x` is the project's shared data beside the checkout (as CI lays it out):
/// `None` when it is absent outside CI (the case is skipped, see `common::shared_data`).
fn case_dir(d: &str) -> Option<PathBuf> {
    match d.strip_prefix("@shared/") {
        Some(rest) => common::shared_data(rest),
        None => Some(cards().join(d)),
    }
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

/// Our value equals gguf-py's decoded one: same type, same value, f32 bit for bit.
fn same_value(ours: &Value, exp: &Json) -> Result<(), String> {
    let want_type = exp["type"].as_str().unwrap_or("?");
    let got_type = type_name(ours.value_type());
    if got_type != want_type {
        return Err(format!("type {got_type}, convert writes {want_type}"));
    }
    let v = &exp["value"];
    let ok = match ours {
        Value::String(s) => v.as_str() == Some(s.as_str()),
        Value::U32(x) => v.as_u64() == Some(*x as u64),
        Value::I32(x) => v.as_i64() == Some(*x as i64),
        Value::Bool(x) => v.as_bool() == Some(*x),
        Value::F32(x) => {
            let want: f64 = v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
            (*x as f64).to_bits() == want.to_bits() || (x.is_nan() && want.is_nan())
        }
        Value::Array(t, items) => {
            let want_items = v.as_array().cloned().unwrap_or_default();
            if exp["sub"].as_str() != Some(type_name(*t)) {
                return Err(format!(
                    "array of {}, convert writes {}",
                    type_name(*t),
                    exp["sub"]
                ));
            }
            if items.len() != want_items.len() {
                return Err(format!(
                    "{} items, convert writes {}",
                    items.len(),
                    want_items.len()
                ));
            }
            for (i, (a, b)) in items.iter().zip(&want_items).enumerate() {
                same_value(a, b).map_err(|e| format!("item {i}: {e}"))?;
            }
            true
        }
        other => return Err(format!("unexpected value {other:?}")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("value {ours}, convert writes {v}"))
    }
}

fn compare_keys(case: &str, ours: &Metadata, exp: &[Json]) -> Vec<String> {
    let mut problems = Vec::new();
    let our_keys: Vec<&str> = ours.iter().map(|(k, _)| k.as_str()).collect();
    let exp_keys: Vec<&str> = exp.iter().map(|kv| kv[0].as_str().unwrap_or("?")).collect();
    if our_keys != exp_keys {
        problems.push(format!(
            "{case}: keys\n  ours    {our_keys:?}\n  convert {exp_keys:?}"
        ));
        return problems;
    }
    for ((k, v), e) in ours.iter().zip(exp) {
        if let Err(msg) = same_value(v, &e[1]) {
            problems.push(format!("{case}: {k}: {msg}"));
        }
    }
    problems
}

#[test]
fn general_metadata_matches_convert() {
    let base = std::env::var_os("LAQUANT_CARD_SNAPSHOTS").map_or_else(cards, PathBuf::from);
    let cases = load_json(&base.join("cases.json"));
    let cases = cases.as_array().expect("cases.json is a list");
    assert!(cases.len() >= 20);
    let mut problems = Vec::new();
    let (mut ok, mut errors) = (0, 0);
    for case in cases {
        let name = case["case"].as_str().unwrap();
        let exp = load_json(&base.join(format!("expected/case-{name}.json")));
        assert_eq!(
            &exp["case"], case,
            "{name}: snapshot is stale, rerun scripts/card-ref.py"
        );
        let Some(dir) = case_dir(case["dir"].as_str().unwrap()) else {
            continue;
        };
        let total = case["total_params"].as_u64().unwrap_or(0);
        let input = CardInput {
            dir: &dir,
            model_name: case["model_name"].as_str(),
            total_params: total,
            shared_params: case["shared_params"].as_u64().unwrap_or(total),
            expert_params: case["expert_params"].as_u64().unwrap_or(0),
            expert_count: case["expert_count"].as_u64().unwrap_or(0),
        };
        let got = general_metadata(&input);
        match (&got, exp.get("error")) {
            (Err(e), Some(_)) => {
                errors += 1;
                // the message names the file
                let msg = e.to_string();
                if !msg.contains(&dir.display().to_string()) {
                    problems.push(format!("{name}: error does not name the file: {msg}"));
                }
            }
            (Err(e), None) => problems.push(format!("{name}: we fail ({e}), convert does not")),
            (Ok(_), Some(err)) => {
                problems.push(format!("{name}: convert fails ({err}), we do not"))
            }
            (Ok(md), None) => {
                ok += 1;
                let before = problems.len();
                problems.extend(compare_keys(name, md, exp["keys"].as_array().unwrap()));
                // absent when convert's naming_convention itself fails on a falsy non-string
                let mut stems = exp["stems"].as_object().cloned().unwrap_or_default();
                if exp["stems_use_unwritten_values"] == true {
                    // convert names the file after a value it did not write
                    // (e.g. `size_label: no`); only fuzz runs make such cards
                    eprintln!("{name}: stems not compared (built from unwritten values)");
                    stems.clear();
                }
                for (ty, stem) in &stems {
                    let ours = default_file_stem(md, ty);
                    if ours != stem.as_str().unwrap() {
                        problems.push(format!("{name}: stem {ty}: ours {ours:?}, convert {stem}"));
                    }
                }
                if problems.len() == before {
                    eprintln!("{name}: {} keys match", md.len());
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(ok >= 15 && errors >= 3, "ok {ok}, errors {errors}");
}

#[test]
fn polyglot_name_and_stem() {
    let Some(dir) = case_dir("@shared/models/polyglot-25m") else {
        return;
    };
    let md = general_metadata(&CardInput {
        dir: &dir,
        model_name: None,
        total_params: 25_172_352,
        shared_params: 25_172_352,
        expert_params: 0,
        expert_count: 0,
    })
    .unwrap();
    assert_eq!(md[0], ("general.type".into(), Value::str("model")));
    assert!(md.contains(&("general.name".into(), Value::str("Polyglot 25m"))));
    assert!(md.contains(&("general.size_label".into(), Value::str("25M"))));
    assert_eq!(default_file_stem(&md, "F16"), "polyglot-25M-F16");
    assert_eq!(default_file_stem(&md, "q8_0"), "polyglot-25M-Q8_0");
}

fn same_py(ours: &PyValue, exp: &Json) -> Result<(), String> {
    let t = exp["t"].as_str().unwrap_or("?");
    let v = &exp["v"];
    let ok = match (ours, t) {
        (PyValue::None, "none") => true,
        (PyValue::Bool(b), "bool") => v.as_bool() == Some(*b),
        (PyValue::Int(i), "int") => v.as_str() == Some(i.to_string().as_str()),
        (PyValue::BigInt(_), "int") => v.as_str().is_some_and(|s| s.len() > 38),
        (PyValue::Float(x), "float") => {
            let want: f64 = v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
            x.to_bits() == want.to_bits() || (x.is_nan() && want.is_nan())
        }
        (PyValue::Str(s), "str") => v.as_str() == Some(s.as_str()),
        (PyValue::Date(_), "date") => true,
        (PyValue::Opaque(name, _), t) if *name == t => true,
        (PyValue::List(items), "list") => {
            let want = v.as_array().cloned().unwrap_or_default();
            if items.len() != want.len() {
                return Err(format!(
                    "list of {}, Python has {}",
                    items.len(),
                    want.len()
                ));
            }
            for (a, b) in items.iter().zip(&want) {
                same_py(a, b)?;
            }
            true
        }
        (PyValue::Dict(pairs), "dict") => {
            let want = v.as_array().cloned().unwrap_or_default();
            if pairs.len() != want.len() {
                return Err(format!(
                    "dict of {} keys, Python has {}",
                    pairs.len(),
                    want.len()
                ));
            }
            for ((k, x), kv) in pairs.iter().zip(&want) {
                same_py(k, &kv[0])?;
                same_py(x, &kv[1]).map_err(|e| format!("[{k:?}]: {e}"))?;
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{ours:?}, Python has {exp}"))
    }
}

#[test]
fn model_card_front_matter_as_pyyaml_reads_it() {
    let (inputs, expected, _) = snapshots();
    let (inputs, expected) = (load_json(&inputs), load_json(&expected));
    let (inputs, expected) = (inputs.as_array().unwrap(), expected.as_array().unwrap());
    assert_eq!(
        inputs.len(),
        expected.len(),
        "stale snapshot, rerun scripts/card-ref.py"
    );
    let mut problems = Vec::new();
    for (input, exp) in inputs.iter().zip(expected) {
        let name = input["name"].as_str().unwrap();
        assert_eq!(exp["name"].as_str(), Some(name));
        let got = parse_model_card(input["text"].as_str().unwrap());
        match (got, exp.get("error")) {
            (Err(_), Some(_)) => {}
            (Err(e), None) => problems.push(format!("{name}: we fail ({e}), PyYAML does not")),
            (Ok(v), Some(err)) => {
                problems.push(format!("{name}: PyYAML fails ({err}), we read {v:?}"))
            }
            (Ok(v), None) => {
                if let Err(e) = same_py(&v, &exp["card"]) {
                    problems.push(format!("{name}: {e}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn model_id_components_and_titles_match_gguf_py() {
    let snap = load_json(&snapshots().2);
    let mut problems = Vec::new();
    let mut n = 0;
    for e in snap["names"].as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        if let Some(title) = e.get("title") {
            let ours = id_to_title(id);
            if ours != title.as_str().unwrap() {
                problems.push(format!(
                    "id_to_title({id:?}): ours {ours:?}, gguf-py {title}"
                ));
            }
            continue;
        }
        let total = e["total"].as_u64().unwrap();
        let c = model_id_components(id, total);
        let ours = [
            c.full_name,
            c.org,
            c.basename,
            c.finetune,
            c.version,
            c.size_label,
        ];
        let want: Vec<Option<String>> = e["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect();
        if ours.as_slice() != want.as_slice() {
            problems.push(format!(
                "{id:?} at {total}: ours {ours:?}, gguf-py {want:?}"
            ));
        }
        n += 1;
    }
    for e in snap["sizes"].as_array().unwrap() {
        let count = e["count"].as_u64().unwrap();
        let ours = match e.get("experts") {
            Some(k) => size_label(
                count,
                e["shared"].as_u64().unwrap(),
                e["expert"].as_u64().unwrap(),
                k.as_u64().unwrap(),
            ),
            None => size_label(count, count, 0, 0),
        };
        if ours != e["label"].as_str().unwrap() {
            problems.push(format!("size_label {e}: ours {ours:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(n >= 200, "only {n} id cases");
}

#[test]
fn errors_name_file_and_key() {
    let dir = cards().join("card-version-float");
    let input = CardInput {
        dir: &dir,
        model_name: None,
        total_params: 1000,
        shared_params: 1000,
        expert_params: 0,
        expert_count: 0,
    };
    let msg = general_metadata(&input).unwrap_err().to_string();
    assert!(
        msg.contains("README.md") && msg.contains("general.version"),
        "{msg}"
    );

    let dir = cards().join("gen-top-k-float");
    let msg = general_metadata(&CardInput { dir: &dir, ..input })
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("generation_config.json") && msg.contains("top_k"),
        "{msg}"
    );

    let dir = cards().join("yaml-syntax-error");
    let msg = general_metadata(&CardInput { dir: &dir, ..input })
        .unwrap_err()
        .to_string();
    assert!(msg.contains("README.md") && msg.contains("YAML"), "{msg}");
}

#[test]
fn malformed_config_json_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), "{\"_name_or_path\": ").unwrap();
    let input = CardInput {
        dir: tmp.path(),
        model_name: None,
        total_params: 1,
        shared_params: 1,
        expert_params: 0,
        expert_count: 0,
    };
    let msg = general_metadata(&input).unwrap_err().to_string();
    assert!(
        msg.contains("config.json") && msg.contains("malformed JSON"),
        "{msg}"
    );

    std::fs::write(tmp.path().join("config.json"), "{\"_name_or_path\": 7}").unwrap();
    let msg = general_metadata(&input).unwrap_err().to_string();
    assert!(msg.contains("_name_or_path"), "{msg}");

    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    std::fs::write(tmp.path().join("README.md"), b"---\nlicense: \xff\n---\n").unwrap();
    let msg = general_metadata(&input).unwrap_err().to_string();
    assert!(msg.contains("README.md") && msg.contains("UTF-8"), "{msg}");
}
