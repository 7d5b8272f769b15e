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
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "laquant {args:?}: {err}");
    err
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

#[test]
fn presets_from_our_gguf_equal_presets_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-bpe");
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
        laquant(&[
            os("convert"),
            model.as_os_str(),
            os("-q"),
            os("--outtype"),
            os(input_type),
            os("-o"),
            input.as_os_str(),
        ]);
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
                assert_eq!(names(&h), names(&g), "{preset} from f16: types");
            }
            // Metadata: the input's keys in order, then what llama-quantize sets.
            let keys: Vec<&str> = g.metadata.iter().map(|(k, _)| k.as_str()).collect();
            let kept: Vec<&str> = src
                .metadata
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !matches!(*k, "general.quantization_version" | "general.file_type"))
                .collect();
            assert_eq!(&keys[..kept.len()], &kept[..], "{preset}");
            let mut tail = vec!["general.quantization_version", "general.file_type"];
            if with_imatrix {
                tail.extend([
                    "quantize.imatrix.file",
                    "quantize.imatrix.dataset",
                    "quantize.imatrix.entries_count",
                    "quantize.imatrix.chunks_count",
                ]);
            }
            assert_eq!(&keys[kept.len()..], &tail[..], "{preset}");
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
            let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
                .args(&a)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
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
            assert_eq!(planned, written, "{preset}");
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
}
