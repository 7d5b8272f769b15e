//! `laquant convert FILE.gguf`: a GGUF as the input. Without llama.cpp (the
//! byte equality with `llama-quantize` is scripts/interop-gguf-input.sh, in CI's
//! interop stage), these check what must hold by construction: a preset made
//! from our F32/F16 GGUF of a fixture has the tensors (names, order, types,
//! bytes) of the same preset made from the checkpoint (which CI checks equal to
//! llama-quantize's on that F32 file), with and without an imatrix, and its
//! metadata is the input's with `general.quantization_version`,
//! `general.file_type` and `quantize.imatrix.*` set last, as llama-quantize
//! sets them.

use laquant::gguf::{GgufFile, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn laquant(args: &[&std::ffi::OsStr]) -> String {
    laquant_output(args, None).1
}

/// Runs laquant (with the calibration cache in `cache`, when given), asserts it
/// succeeded; its stdout and stderr.
fn laquant_output(args: &[&std::ffi::OsStr], cache: Option<&Path>) -> (Vec<u8>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_laquant"));
    c.args(args);
    if let Some(cache) = cache {
        c.env("XDG_CACHE_HOME", cache);
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "laquant {args:?}: {err}");
    (o.stdout, err)
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

/// The tensors of two files: names, order, types, dims and bytes equal.
fn same_tensors(a: &GgufFile, b: &GgufFile) {
    let names = |f: &GgufFile| f.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b));
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((x.ty, &x.dims), (y.ty, &y.dims), "{}", x.name);
        assert!(
            a.tensor_data(x) == b.tensor_data(y),
            "{}: bytes differ",
            x.name
        );
    }
}

/// Our GGUF of `model` in `ty` (f32, f16) at `out`.
fn gguf_of(model: &Path, ty: &str, out: &Path) {
    laquant(&[
        os("convert"),
        model.as_os_str(),
        os("-q"),
        os("--outtype"),
        os(ty),
        os("-o"),
        out.as_os_str(),
    ]);
}

/// `plan --json`'s output names the tensors and types the file `g` holds.
fn planned_as_written(plan_json: &[u8], g: &GgufFile, what: &str) {
    let v: serde_json::Value = serde_json::from_slice(plan_json).unwrap();
    let planned: Vec<(String, String)> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().into(),
                t["ty"].as_str().unwrap().into(),
            )
        })
        .collect();
    let written: Vec<(String, String)> = g
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.ty.name().to_string()))
        .collect();
    assert_eq!(planned, written, "{what}");
}

#[test]
fn presets_from_our_gguf_equal_presets_from_the_checkpoint() {
    // Mixtral (8 experts: llama-quantize's 8-expert rules) and Qwen2-MoE (a
    // shared expert): stacked experts quantized each with its imatrix slice.
    for name in ["llama-bpe", "mixtral", "qwen2moe"] {
        presets_as_from_the_checkpoint(name);
    }
}

fn presets_as_from_the_checkpoint(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture(name);
    let imatrix = tmp.path().join("imatrix.gguf");
    laquant(&[
        os("calibrate"),
        model.as_os_str(),
        os("-q"),
        os("--ctx"),
        os("32"),
        os("--chunks"),
        os("1"),
        os("-o"),
        imatrix.as_os_str(),
    ]);
    for input_type in ["f32", "f16"] {
        let input = tmp.path().join(format!("in-{input_type}.gguf"));
        gguf_of(&model, input_type, &input);
        let src = GgufFile::open(&input).unwrap();
        for (preset, with_imatrix) in [("q4_k_m", false), ("q6_k", false), ("q4_k_m", true)] {
            let mut extra: Vec<&std::ffi::OsStr> = vec![os("--outtype"), os(preset), os("-q")];
            if with_imatrix {
                extra.extend([os("--imatrix"), imatrix.as_os_str()]);
            }
            let from_hf = tmp.path().join("hf.gguf");
            let from_gguf = tmp.path().join("gguf.gguf");
            let mut a = vec![
                os("convert"),
                model.as_os_str(),
                os("-o"),
                from_hf.as_os_str(),
            ];
            a.extend(&extra);
            a.push(os("--force"));
            laquant(&a);
            let mut a = vec![
                os("convert"),
                input.as_os_str(),
                os("-o"),
                from_gguf.as_os_str(),
            ];
            a.extend(&extra);
            a.push(os("--force"));
            laquant(&a);
            let (h, g) = (
                GgufFile::open(&from_hf).unwrap(),
                GgufFile::open(&from_gguf).unwrap(),
            );
            // From F16 the weights went through F16 first: only F32 input gives the checkpoint's bytes.
            if input_type == "f32" {
                same_tensors(&h, &g);
            } else {
                let names = |f: &GgufFile| {
                    f.tensors
                        .iter()
                        .map(|t| (t.name.clone(), t.ty))
                        .collect::<Vec<_>>()
                };
                assert_eq!(names(&h), names(&g), "{name} {preset} from f16: types");
            }
            // Metadata: the input's keys in order, then what llama-quantize sets.
            let keys: Vec<&str> = g.metadata.iter().map(|(k, _)| k.as_str()).collect();
            let kept: Vec<&str> = src
                .metadata
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !matches!(*k, "general.quantization_version" | "general.file_type"))
                .collect();
            assert_eq!(&keys[..kept.len()], &kept[..], "{name} {preset}");
            let mut tail = vec!["general.quantization_version", "general.file_type"];
            if with_imatrix {
                tail.extend([
                    "quantize.imatrix.file",
                    "quantize.imatrix.dataset",
                    "quantize.imatrix.entries_count",
                    "quantize.imatrix.chunks_count",
                ]);
            }
            assert_eq!(&keys[kept.len()..], &tail[..], "{name} {preset}");
            for (k, v) in &src.metadata {
                if !tail.contains(&k.as_str()) {
                    assert_eq!(g.get(k), Some(v), "{k}");
                }
            }
            assert_eq!(
                g.get("general.file_type").and_then(Value::as_u64),
                h.get("general.file_type").and_then(Value::as_u64)
            );
            if with_imatrix {
                assert_eq!(
                    g.get("quantize.imatrix.file").and_then(Value::as_str),
                    imatrix.to_str()
                );
            }
            // `plan FILE.gguf` shows the types the conversion writes.
            let mut a = vec![os("plan"), input.as_os_str(), os("--json")];
            a.extend(&extra);
            let (out, _) = laquant_output(&a, None);
            planned_as_written(&out, &g, &format!("{name} {preset}"));
        }
    }
}

#[test]
fn quantized_inputs_need_allow_requantize() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-bpe");
    let q8 = tmp.path().join("q8.gguf");
    laquant(&[
        os("convert"),
        model.as_os_str(),
        os("-q"),
        os("--outtype"),
        os("q8_0"),
        os("--pure"),
        os("-o"),
        q8.as_os_str(),
    ]);
    let out = tmp.path().join("q4.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .arg("convert")
        .arg(&q8)
        .args(["--outtype", "q4_0", "-q", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("requantizing from type Q8_0 is disabled") && err.contains("q8.gguf"),
        "{err}"
    );
    assert!(!out.exists());
    // Allowed: the weights requantized (to Q4_0, or what the preset's rules give), a
    // tensor whose type does not change copied.
    laquant(&[
        os("convert"),
        q8.as_os_str(),
        os("--outtype"),
        os("q4_0"),
        os("--allow-requantize"),
        os("-q"),
        os("-o"),
        out.as_os_str(),
    ]);
    let f = GgufFile::open(&out).unwrap();
    let src = GgufFile::open(&q8).unwrap();
    let mut q4 = 0;
    for t in &f.tensors {
        let s = src.tensor(&t.name).unwrap();
        if t.ty == s.ty {
            assert!(f.tensor_data(t) == src.tensor_data(s), "{}", t.name);
        }
        q4 += usize::from(t.ty == laquant::gguf::GgmlType::Q4_0);
    }
    assert!(
        q4 > f.tensors.len() / 2,
        "{q4} of {} tensors Q4_0",
        f.tensors.len()
    );
    // `plan` of the quantized input shows what requantizing writes, flag or not.
    for flag in [None, Some("--allow-requantize")] {
        let mut a = vec![os("plan"), q8.as_os_str(), os("--outtype"), os("q4_0")];
        a.extend(flag.map(os));
        a.push(os("--json"));
        let (out, _) = laquant_output(&a, None);
        planned_as_written(&out, &f, &format!("plan q8.gguf {flag:?}"));
    }
}

/// Runs laquant with the calibration cache in `cache`; the exit status and stderr.
fn laquant_cached(args: &[&std::ffi::OsStr], cache: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// la-mix / --target-bpw of `input` (a GGUF or a checkpoint) written to `out`;
/// the JSON report.
fn calibrated(input: &Path, out: &Path, policy: &[&str], cache: &Path) -> serde_json::Value {
    let report = out.with_extension("json");
    let mut a = vec![os("convert"), input.as_os_str(), os("-q"), os("--force")];
    a.extend(policy.iter().map(os));
    // A small calibration and sensitivity sample: the fixtures are random.
    a.extend(["--ctx", "32", "--chunks", "1", "--sens-tokens", "8"].map(os));
    a.extend([
        os("-o"),
        out.as_os_str(),
        os("--report"),
        report.as_os_str(),
    ]);
    let (ok, err) = laquant_cached(&a, cache);
    assert!(ok, "laquant {a:?}: {err}");
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

fn types(f: &GgufFile) -> Vec<(String, laquant::gguf::GgmlType)> {
    f.tensors.iter().map(|t| (t.name.clone(), t.ty)).collect()
}

/// la-mix and --target-bpw from our F32 GGUF of a fixture plan and write what they
/// plan and write from the checkpoint (the same values: the forward pass, the
/// statistics and the sensitivity are the same), with the input's metadata then
/// the quantize.* and laquant.* keys; from the F16 GGUF (weights rounded to F16
/// first, so the measured errors move a little) most tensors get the same type
/// and the size stays within the budget. The second run from the same file
/// reuses the cached calibration.
#[test]
fn la_mix_from_our_gguf_plans_as_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // Llama (Q/K rows permuted in the file), Qwen2 (tied output, QKV biases),
    // GPT-2 (Conv1D weights transposed in the file, learned positions,
    // LayerNorms, a GELU FFN with biases), Mixtral and Qwen2-MoE (stacked
    // experts read per expert, each quantized with its own importance slice;
    // a shared expert), gpt-oss (experts stacked in its checkpoint too, with
    // biases; sinks, sliding window, yarn).
    for name in [
        "llama-bpe",
        "qwen2-tied",
        "gpt2",
        "mixtral",
        "qwen2moe",
        "gpt-oss",
    ] {
        let model = fixture(name);
        for policy in [&["--outtype", "la-mix"][..], &["--target-bpw", "5.5"][..]] {
            let from_hf = tmp.path().join("hf.gguf");
            let hf = calibrated(&model, &from_hf, policy, &cache);
            let h = GgufFile::open(&from_hf).unwrap();
            for input_type in ["f32", "f16"] {
                let input = tmp.path().join(format!("{name}-{input_type}.gguf"));
                if !input.exists() {
                    gguf_of(&model, input_type, &input);
                }
                let from_gguf = tmp.path().join("gguf.gguf");
                let r = calibrated(&input, &from_gguf, policy, &cache);
                let g = GgufFile::open(&from_gguf).unwrap();
                let what = format!("{name} {policy:?} from {input_type}");
                assert_eq!(r["outtype"], hf["outtype"], "{what}");
                // The sensitivity measured as from the checkpoint: the same summary
                // (fields and sizing; its time and cache entry are the run's own).
                let sizing = |r: &serde_json::Value| {
                    let mut s = r["sensitivity"].clone();
                    let o = s.as_object_mut().expect("a sensitivity summary");
                    assert!(o.remove("seconds").is_some_and(|t| t.is_f64()), "{what}");
                    assert!(o.remove("cache").is_some_and(|c| c.is_object()), "{what}");
                    s
                };
                assert_eq!(sizing(&r), sizing(&hf), "{what}");
                if input_type == "f32" {
                    same_tensors(&h, &g);
                    assert_eq!(
                        g.get("general.file_type"),
                        h.get("general.file_type"),
                        "{what}"
                    );
                } else {
                    let (a, b) = (types(&h), types(&g));
                    let names =
                        |v: &[(String, _)]| v.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
                    assert_eq!(names(&a), names(&b), "{what}");
                    let same = a.iter().zip(&b).filter(|(x, y)| x.1 == y.1).count();
                    let (hb, gb) = (hf["bytes"].as_f64().unwrap(), r["bytes"].as_f64().unwrap());
                    assert!(
                        (gb - hb).abs() <= 0.05 * hb,
                        "{what}: {gb} bytes, {hb} from the checkpoint"
                    );
                    let error = |r: &serde_json::Value| -> f64 {
                        r["tensors"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter_map(|t| t["score"]["error"].as_f64())
                            .sum()
                    };
                    let (he, ge) = (error(&hf), error(&r));
                    assert!(
                        he > 0.0 && (ge - he).abs() <= 0.05 * he,
                        "{what}: error {ge}, {he} from the checkpoint"
                    );
                    if policy[0] == "--target-bpw" {
                        // Many near-ties among its 20 types: the F16 rounding reorders some
                        // (qwen2-tied: 10 of 15 types differ, the total error 0.5% apart).
                        assert!(r["bits_per_weight"].as_f64().unwrap() <= 5.5, "{what}");
                    } else {
                        assert!(
                            same * 10 >= a.len() * 8,
                            "{what}: {same} of {} types agree",
                            a.len()
                        );
                    }
                }
                // The input's metadata in its order, then llama-quantize's keys and ours.
                let src = GgufFile::open(&input).unwrap();
                let keys: Vec<&str> = g.metadata.iter().map(|(k, _)| k.as_str()).collect();
                let kept: Vec<&str> = src
                    .metadata
                    .iter()
                    .map(|(k, _)| k.as_str())
                    // Set again last (an F32 input of ours has laquant.* keys too).
                    .filter(|k| !k.starts_with("laquant.") && !k.starts_with("quantize."))
                    .filter(|k| !matches!(*k, "general.quantization_version" | "general.file_type"))
                    .collect();
                assert_eq!(&keys[..kept.len()], &kept[..], "{what}");
                for k in [
                    "quantize.imatrix.dataset",
                    "quantize.imatrix.entries_count",
                    "laquant.policy",
                    "laquant.calibration.languages",
                ] {
                    assert!(keys[kept.len()..].contains(&k), "{what}: {k} in {keys:?}");
                    assert_eq!(g.get(k), h.get(k), "{what}: {k}");
                }
                // plan FILE.gguf: the types the conversion wrote, the calibration reused.
                let mut a = vec![os("plan"), input.as_os_str(), os("--json")];
                a.extend(policy.iter().map(os));
                a.extend(["--ctx", "32", "--chunks", "1", "--sens-tokens", "8"].map(os));
                let (out, err) = laquant_output(&a, Some(&cache));
                assert!(
                    err.contains("reused"),
                    "{what}: the cache was not used: {err}"
                );
                planned_as_written(&out, &g, &what);
            }
        }
    }
}

/// The fixtures with a SentencePiece vocabulary (Gemma's among them).
const SENTENCEPIECE: [&str; 5] = [
    "tinyllama-spm",
    "mistral-spm",
    "gemma2",
    "gemma3",
    "gemma3-mm",
];

/// The fixtures whose RoPE is scaled by factor tensors: Llama 3.1's llama3
/// scaling (a Llama-3.2-shaped model: tied output, a `llama-bpe` BPE
/// vocabulary) and Phi-3's LongRoPE (a SentencePiece vocabulary).
const ROPE_SCALED: [&str; 2] = ["llama3-rope", "phi3"];

/// la-mix from our F32 GGUF of a model with a SentencePiece vocabulary (Llama
/// 2's and Mistral's; Gemma's, its norms stored as `1 + w` and Q's scalar in
/// no key) writes the tensors la-mix writes from the checkpoint, byte for
/// byte, without the calibration cache: the rebuilt tokenizer gives the
/// checkpoint's token ids, the norms read back give the forward pass's
/// `1 + w`, Q's scalar is llama.cpp's, so the statistics, the sensitivity
/// and the plan are the same.
#[test]
fn la_mix_from_sentencepiece_and_gemma_ggufs_as_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    for name in SENTENCEPIECE {
        calibrated_as_from_the_checkpoint(name, &["--outtype", "la-mix"], tmp.path());
    }
}

/// The same for RoPE scaled by factor tensors: Llama 3.1's llama3 scaling
/// (`rope_freqs.weight`) and Phi-3's LongRoPE (`rope_factors_long.weight`,
/// `rope_factors_short.weight`, the attention factor and original context
/// keys), la-mix and --target-bpw: the forward pass runs with the file's
/// factors, and the output holds them as the input does, byte for byte (as
/// llama-quantize copies them).
#[test]
fn la_mix_from_rope_scaled_ggufs_as_from_the_checkpoint() {
    for name in ROPE_SCALED {
        for policy in [&["--outtype", "la-mix"][..], &["--target-bpw", "5.5"][..]] {
            let tmp = tempfile::tempdir().unwrap();
            let (input, g) = calibrated_as_from_the_checkpoint(name, policy, tmp.path());
            let factors: Vec<_> = (input.tensors.iter())
                .filter(|t| t.name.starts_with("rope_"))
                .collect();
            assert!(!factors.is_empty(), "{name}");
            for t in factors {
                let out = g.tensor(&t.name).unwrap();
                assert_eq!((out.ty, &out.dims), (t.ty, &t.dims), "{name}: {}", t.name);
                assert!(
                    g.tensor_data(out) == input.tensor_data(t),
                    "{name}: {}",
                    t.name
                );
            }
        }
    }
}

/// `policy` (la-mix or --target-bpw) from the checkpoint of fixture `name`
/// and from our F32 GGUF of it give the same tensors, byte for byte, and the
/// same `laquant.*` keys; the F32 GGUF and the output from it (in `tmp`).
fn calibrated_as_from_the_checkpoint(
    name: &str,
    policy: &[&str],
    tmp: &Path,
) -> (GgufFile, GgufFile) {
    let model = fixture(name);
    let input = tmp.join(format!("{name}.gguf"));
    gguf_of(&model, "f32", &input);
    let [h, g] = [&model, &input].map(|from| {
        let out = tmp.join(format!("{name}-{}.gguf", from == &model));
        let mut a = vec![os("convert"), from.as_os_str(), os("-q"), os("--no-cache")];
        a.extend(policy.iter().map(os));
        a.extend(["--ctx", "32", "--chunks", "1"].map(os));
        a.extend([os("--sens-tokens"), os("8"), os("-o"), out.as_os_str()]);
        laquant(&a);
        GgufFile::open(&out).unwrap()
    });
    same_tensors(&h, &g);
    for k in ["laquant.policy", "laquant.calibration.languages"] {
        assert_eq!(g.get(k), h.get(k), "{name} {policy:?}: {k}");
    }
    (GgufFile::open(&input).unwrap(), g)
}

/// gpt-oss as openai ships it (fixtures/gpt-oss-mxfp4): the converter's
/// file (ours, F32, its byte equality with convert_hf_to_gguf.py's is
/// interop-convert's) holds the experts in MXFP4. la-mix and --target-bpw
/// from it write what they write from the checkpoint, byte for byte, the
/// experts' bytes the input's (kept, not requantized); with
/// --allow-requantize la-mix chooses their types too, as from the
/// checkpoint, and a type forced onto them from the GGUF needs it, as in
/// llama-quantize. `laquant eval` with the GGUF as the model gives the
/// numbers it gives with the checkpoint.
#[test]
fn la_mix_and_eval_from_an_mxfp4_gguf_as_from_the_checkpoint() {
    let name = "gpt-oss-mxfp4";
    let tmp = tempfile::tempdir().unwrap();
    let exps = |f: &GgufFile| -> Vec<(String, Vec<u8>)> {
        (f.tensors.iter())
            .filter(|t| t.ty == laquant::gguf::GgmlType::MXFP4)
            .map(|t| (t.name.clone(), f.tensor_data(t).to_vec()))
            .collect()
    };
    for (i, policy) in [&["--outtype", "la-mix"][..], &["--target-bpw", "5.5"][..]]
        .into_iter()
        .enumerate()
    {
        let dir = tmp.path().join(i.to_string());
        std::fs::create_dir(&dir).unwrap();
        let (input, g) = calibrated_as_from_the_checkpoint(name, policy, &dir);
        assert_eq!(exps(&input).len(), 6, "{policy:?}");
        assert_eq!(exps(&g), exps(&input), "{policy:?}");
    }
    let policy = ["--outtype", "la-mix", "--allow-requantize"];
    let (input, g) = calibrated_as_from_the_checkpoint(name, &policy, tmp.path());
    assert!(exps(&g).is_empty(), "{:?}", types(&g));
    // `plan FILE.gguf --allow-requantize` shows those types; without it the
    // experts stay MXFP4, as `convert` without it writes them.
    for allow in [true, false] {
        let mut a = vec![os("plan"), input.path.as_os_str(), os("-q"), os("--json")];
        a.extend(policy[..2].iter().map(os));
        a.extend(allow.then(|| os("--allow-requantize")));
        a.extend(["--ctx", "32", "--chunks", "1", "--sens-tokens", "8"].map(os));
        let (out, _) = laquant_output(&a, Some(&tmp.path().join("cache")));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let mxfp4 = (v["tensors"].as_array().unwrap().iter())
            .filter(|t| t["ty"] == "MXFP4")
            .count();
        if allow {
            planned_as_written(&out, &g, "plan --allow-requantize");
            assert_eq!(mxfp4, 0);
        } else {
            assert_eq!(mxfp4, 6);
        }
    }
    // A forced type: refused without --allow-requantize.
    let out = tmp.path().join("forced.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .arg("convert")
        .arg(&input.path)
        .args(["-q", "--no-cache", "--outtype", "la-mix"])
        .args([
            "--tensor-type",
            "ffn_down_exps=q8_0",
            "--ctx",
            "32",
            "--chunks",
            "1",
        ])
        .args(["--sens-tokens", "8", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("blk.0.ffn_down_exps.weight is MXFP4") && err.contains("--allow-requantize"),
        "{err}"
    );
    assert!(!out.exists());

    // eval: the GGUF as the model, then the checkpoint; the same numbers.
    let [from_gguf, from_hf] = [input.path.clone(), fixture(name)].map(|model| {
        let json = tmp.path().join(format!("eval-{}.json", model.is_file()));
        laquant(&[
            os("eval"),
            model.as_os_str(),
            g.path.as_os_str(),
            os("-q"),
            os("--ctx"),
            os("64"),
            os("--chunks"),
            os("1"),
            os("--json"),
            json.as_os_str(),
        ]);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let o = v.as_object_mut().unwrap();
        assert_eq!(o["model"].as_str(), model.to_str());
        o.remove("model");
        o.remove("seconds");
        v
    });
    assert_eq!(from_gguf, from_hf);
}

/// The tokenizer rebuilt from a SentencePiece vocabulary (Llama 2's,
/// Mistral's, Gemma's, Phi-3's) or from Llama 3's BPE one (`llama-bpe`)
/// gives the embedded calibration corpus, every language, the ids llama.cpp's
/// own tokenizer gives on that file (our harness's `llama-logits
/// --tokens-only`: `llama_tokenize` with BOS).
#[test]
#[ignore = "interop: needs llama.cpp's harness (scripts/interop-gguf-input.sh)"]
fn rebuilt_tokenizers_tokenize_as_llama_cpp() {
    let Some(harness) = std::env::var_os("LAQUANT_HARNESS").map(PathBuf::from) else {
        return eprintln!("skipped: LAQUANT_HARNESS unset");
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut bad = Vec::new();
    for name in SENTENCEPIECE.into_iter().chain(ROPE_SCALED) {
        let input = tmp.path().join(format!("{name}.gguf"));
        gguf_of(&fixture(name), "f32", &input);
        let rebuilt =
            laquant::gguf_input::rebuild::Rebuilt::new(&GgufFile::open(&input).unwrap()).unwrap();
        let tok = laquant::calib::TextTokenizer::from_dir(rebuilt.path()).unwrap();
        for d in laquant::calib::Corpus::embedded().docs {
            let text = tmp.path().join(format!("{}.txt", d.lang));
            std::fs::write(&text, &d.text).unwrap();
            let o = Command::new(harness.join("llama-logits"))
                .arg(&input)
                .arg(&text)
                .arg("--tokens-only")
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let theirs: Vec<u32> = j["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            if tok.encode(&d.text).unwrap() != theirs {
                bad.push(format!("{name} {}", d.lang));
            }
        }
    }
    assert!(bad.is_empty(), "token ids differ from llama.cpp's: {bad:?}");
}

/// What the forward pass cannot run from a GGUF is refused, naming the file and why.
#[test]
fn la_mix_from_a_gguf_refuses_what_it_cannot_calibrate() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &str); 2] = [
        ("bert", &["--outtype", "f16"], "is an encoder (bert)"),
        (
            "llama-bpe",
            &["--outtype", "q8_0", "--pure"],
            "holds tensor",
        ),
    ];
    for (name, made, want) in cases {
        let input = tmp.path().join(format!("{name}.gguf"));
        let model = fixture(name);
        let mut a = vec![os("convert"), model.as_os_str()];
        a.extend(made.iter().map(os));
        a.extend([os("-q"), os("-o"), input.as_os_str()]);
        laquant(&a);
        let out = tmp.path().join("out.gguf");
        let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
            .arg("convert")
            .arg(&input)
            .args(["-q", "--no-cache", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(want) && err.contains(&format!("{name}.gguf")) && err.contains("la-mix"),
            "{name}: {err}"
        );
        assert!(!out.exists());
    }
}
