//! End-to-end calibration on polyglot-25m (../shared/models/polyglot-25m) with
//! small chunks: per-language statistics, the balance, GGUF names that match the
//! converter's, the imatrix file, and every corpus error through the library and
//! the `laquant calibrate` command (exit code 1, message naming the file).

use laquant::calib::{self, CalibError, CalibOptions, CorpusSource, Imatrix};
use laquant::hf::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::corpus_dir;

/// The shared model, or `None` (the test skips) outside CI when it is absent.
fn polyglot() -> Option<PathBuf> {
    common::shared_data("models/polyglot-25m")
}

fn opts(dir: &Path) -> CalibOptions {
    CalibOptions {
        corpus: CorpusSource::Dir(dir.to_path_buf()),
        ctx: 48,
        threads: 2,
        max_chunks: Some(2),
        ..Default::default()
    }
}

#[test]
fn polyglot_two_languages_balanced() {
    let Some(model) = polyglot() else { return };
    let ckpt = Checkpoint::open(model.to_str().unwrap()).unwrap();
    let dir = corpus_dir(&["en", "zh"]);
    let mut last = None;
    let imp = calib::run(&ckpt, &opts(dir.path()), &mut |p| {
        last = Some((p.tokens_done, p.tokens_total))
    })
    .unwrap();
    assert_eq!(last, Some((192, 192)));
    assert_eq!(
        imp.langs
            .iter()
            .map(|l| l.lang.as_str())
            .collect::<Vec<_>>(),
        ["en", "zh"]
    );
    for l in &imp.langs {
        assert_eq!((l.chunks, l.taps.tokens), (2, 96));
    }
    assert_eq!(imp.weights, vec![0.5, 0.5]);

    // Names: exactly the converter's GGUF names of the checkpoint's matmul weights (output excluded).
    let mut want: Vec<String> = ckpt
        .tensor_names()
        .iter()
        .filter_map(|n| laquant::arch::map_name(&ckpt.config, n).unwrap())
        .filter(|m| m.role.is_matmul() && m.role != laquant::arch::Role::Output && !m.is_bias)
        .map(|m| m.gguf_name)
        .collect();
    want.sort();
    let bal = imp.balanced();
    assert_eq!(bal.keys().cloned().collect::<Vec<_>>(), want);

    let en = imp.langs[0].mean();
    let zh = imp.langs[1].mean();
    for (name, v) in &bal {
        let cols = if name.contains("ffn_down") { 1024 } else { 384 };
        assert_eq!(v.len(), cols, "{name}");
        for j in 0..cols {
            assert!(v[j].is_finite() && v[j] > 0.0, "{name}[{j}] = {}", v[j]);
            assert!((v[j] - 0.5 * (en[name][j] + zh[name][j])).abs() <= 1e-12 * v[j].max(1.0));
        }
    }
    // The languages really differ (otherwise balancing would be moot).
    let q = "blk.0.attn_q.weight";
    assert!(en[q]
        .iter()
        .zip(&zh[q])
        .any(|(a, b)| (a - b).abs() > 1e-3 * a.abs().max(b.abs())));

    // Weighted, and through an imatrix GGUF file and back.
    let w = calib::Importance {
        weights: calib::normalized_weights(
            &["en", "zh"],
            &calib::parse_lang_weights("en=3").unwrap(),
        )
        .unwrap(),
        ..imp.clone()
    };
    assert_eq!(w.weights, vec![0.75, 0.25]);
    let out = dir.path().join("im.gguf");
    w.to_imatrix().write_gguf(&out, false).unwrap();
    assert!(
        w.to_imatrix().write_gguf(&out, false).is_err(),
        "overwrote without force"
    );
    let back = Imatrix::read(&out).unwrap();
    assert_eq!(back.chunk_size, 48);
    assert_eq!(back.chunk_count, 4);
    let m = back.mean(q).unwrap();
    for j in 0..384 {
        let want = 0.75 * en[q][j] + 0.25 * zh[q][j];
        assert!(
            ((m[j] as f64) - want).abs() <= 1e-5 * want,
            "{j}: {} vs {want}",
            m[j]
        );
    }
}

#[test]
fn polyglot_layer_report_shares() {
    let Some(model) = polyglot() else { return };
    let ckpt = Checkpoint::open(model.to_str().unwrap()).unwrap();
    let dir = corpus_dir(&["ja", "ta"]);
    let o = CalibOptions {
        max_chunks: Some(1),
        ..opts(dir.path())
    };
    let imp = calib::run(&ckpt, &o, &mut |_| {}).unwrap();
    assert!(imp
        .langs
        .iter()
        .all(|l| l.token_counts.values().sum::<u64>() == l.taps.tokens));
    let r = calib::report::layer_report(&ckpt, &imp).unwrap();
    assert_eq!(r.shares.len(), 2);
    // 384-wide weights fall back from Q4_K to Q5_0 (llama.cpp's rule), 1024-wide stay Q4_K.
    assert!(
        r.types.contains(&("width 384".into(), "Q5_0".into())),
        "{:?}",
        r.types
    );
    assert!(
        r.types.contains(&("width 1024".into(), "Q4_K".into())),
        "{:?}",
        r.types
    );
    for (lang, sh) in &r.shares {
        assert_eq!(sh.len(), 1 + 8, "{lang}");
        assert!(
            (sh.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{lang}: {sh:?}"
        );
        assert!(
            sh.iter().all(|v| *v >= 0.0) && sh[0] > 0.0,
            "{lang}: {sh:?}"
        );
        assert!(sh[1..].iter().all(|v| *v > 0.01), "{lang}: {sh:?}");
    }
    assert_ne!(r.shares[0].1, r.shares[1].1);
    let text = r.to_text();
    assert!(
        text.contains("blk.7") && text.lines().count() == 4,
        "{text}"
    );
}

#[test]
fn polyglot_output_head_and_determinism() {
    let Some(model) = polyglot() else { return };
    let ckpt = Checkpoint::open(model.to_str().unwrap()).unwrap();
    let dir = corpus_dir(&["hi"]);
    let o = CalibOptions {
        process_output: true,
        max_chunks: Some(1),
        ..opts(dir.path())
    };
    let a = calib::run(&ckpt, &o, &mut |_| {}).unwrap();
    let b = calib::run(&ckpt, &CalibOptions { threads: 1, ..o }, &mut |_| {}).unwrap();
    let (ba, bb) = (a.balanced(), b.balanced());
    assert!(ba.contains_key("output.weight"));
    for (k, v) in &ba {
        for (x, y) in v.iter().zip(&bb[k]) {
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(1e-6),
                "{k}: threads change the result: {x} vs {y}"
            );
        }
    }
}

#[test]
fn corpus_errors_are_clear() {
    let Some(model) = polyglot() else { return };
    let ckpt = Checkpoint::open(model.to_str().unwrap()).unwrap();
    let run = |files: &[(&str, &[u8])], o: &dyn Fn(&Path) -> CalibOptions| -> String {
        let dir = tempfile::tempdir().unwrap();
        for (n, b) in files {
            std::fs::write(dir.path().join(n), b).unwrap();
        }
        calib::run(&ckpt, &o(dir.path()), &mut |_| {})
            .unwrap_err()
            .to_string()
    };
    let e = run(&[("en.txt", b"")], &opts);
    assert!(e.contains("en.txt") && e.contains("empty"), "{e}");
    let e = run(&[("en.txt", b"ok text \xff\xfe more")], &opts);
    assert!(e.contains("en.txt") && e.contains("UTF-8"), "{e}");
    let e = run(&[("english.txt", b"some text")], &opts);
    assert!(e.contains("english") && e.contains("ISO 639-1"), "{e}");
    let e = run(&[("README.md", b"not a corpus")], &opts);
    assert!(e.contains("no <lang>.txt"), "{e}");
    let e = run(&[("de.txt", b"Alle Menschen sind frei.")], &opts);
    assert!(
        e.contains("de") && e.contains("fewer than one chunk of 48"),
        "{e}"
    );
    let e = run(
        &[(
            "de.txt",
            "Alle Menschen sind frei und gleich an Würde. "
                .repeat(40)
                .as_bytes(),
        )],
        &|d: &Path| CalibOptions {
            lang_weights: vec![("fr".into(), 1.0)],
            ..opts(d)
        },
    );
    assert!(e.contains("fr is not in the calibration corpus"), "{e}");
    let missing = CalibOptions {
        corpus: CorpusSource::Dir("/nonexistent/corpus".into()),
        ..Default::default()
    };
    let e = calib::run(&ckpt, &missing, &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, CalibError::Corpus(_)) && e.to_string().contains("/nonexistent/corpus"),
        "{e}"
    );
}

#[test]
fn cli_calibrate_exit_codes() {
    let Some(model) = polyglot() else { return };
    let bin = env!("CARGO_BIN_EXE_laquant");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("xx.txt"), "text").unwrap();
    let out = Command::new(bin)
        .args(["calibrate", model.to_str().unwrap(), "--calib"])
        .arg(dir.path())
        .arg("-o")
        .arg(dir.path().join("o.gguf"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xx.txt") && err.contains("ISO 639-1"), "{err}");
    assert!(!dir.path().join("o.gguf").exists());
    let out = Command::new(bin)
        .args([
            "calibrate",
            model.to_str().unwrap(),
            "--lang-weights",
            "en=abc",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lang-weights"));

    let c = corpus_dir(&["en", "ar"]);
    let o = dir.path().join("ok.gguf");
    let out = Command::new(bin)
        .args([
            "calibrate",
            model.to_str().unwrap(),
            "--ctx",
            "32",
            "--chunks",
            "1",
            "-q",
            "--calib",
        ])
        .arg(c.path())
        .arg("-o")
        .arg(&o)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Imatrix::read(&o).unwrap();
    assert_eq!(m.entries.len(), 8 * 7);
    assert_eq!(m.entries["blk.7.ffn_down.weight"].counts, vec![64.0]);
}

/// `laquant calibrate --merge` of our own per-language files (`calibrate --calib`
/// on a folder holding one language) equals `calibrate` on all of them at once:
/// the counts exactly, the sums within 4 f32 units in the last place (the
/// per-language files keep f32 sums, the direct run rounds once). Then the files
/// of another model, a malformed file and the model check are refused, naming
/// the file and the tensor.
#[test]
fn cli_merge_of_our_languages_equals_the_direct_statistic() {
    let bin = env!("CARGO_BIN_EXE_laquant");
    let fixture = |n: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(n)
    };
    let model = fixture("llama-bpe");
    let tmp = tempfile::tempdir().unwrap();
    let langs = ["ar", "en", "zh"];
    let calibrate = |corpus: &Path, out: &Path, extra: &[&str]| {
        let o = Command::new(bin)
            .arg("calibrate")
            .arg(&model)
            .args([
                "-q", "--ctx", "32", "--chunks", "2", "--matmul", "f32", "--calib",
            ])
            .arg(corpus)
            .arg("-o")
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let all = corpus_dir(&langs);
    let files = tmp.path().join("per-lang");
    std::fs::create_dir(&files).unwrap();
    for weights in [None, Some("en=2,ar=0.5")] {
        let w: Vec<&str> = weights
            .map(|w| vec!["--lang-weights", w])
            .unwrap_or_default();
        let direct = tmp.path().join("direct.gguf");
        calibrate(all.path(), &direct, &[&w[..], &["--force"]].concat());
        for l in langs {
            let one = corpus_dir(&[l]);
            calibrate(one.path(), &files.join(format!("{l}.gguf")), &["--force"]);
        }
        let merged = tmp.path().join("merged.gguf");
        let o = Command::new(bin)
            .args(["calibrate", "--force", "--merge"])
            .arg(&files)
            .args(&w)
            .arg("-o")
            .arg(&merged)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("merged 3 languages"), "{err}");
        let (d, m) = (
            Imatrix::read(&direct).unwrap(),
            Imatrix::read(&merged).unwrap(),
        );
        assert_eq!(d.chunk_count, m.chunk_count);
        assert_eq!(
            d.entries.keys().collect::<Vec<_>>(),
            m.entries.keys().collect::<Vec<_>>()
        );
        let mut worst = 0u64;
        for (name, de) in &d.entries {
            let me = &m.entries[name];
            assert_eq!(de.counts, me.counts, "{name}");
            for (a, b) in de.sums.iter().zip(&me.sums) {
                worst = worst.max((a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs());
            }
        }
        assert!(worst <= 4, "{weights:?}: {worst} ulps apart");
        // The merged file steers what our own calibration steers.
        for ty in [&["--target-bpw", "5"][..], &["--outtype", "q4_k_m"]] {
            let out = tmp.path().join("merged-use.gguf");
            let o = Command::new(bin)
                .arg("convert")
                .arg(&model)
                .args(["-q", "--force", "--sens-tokens", "8", "--imatrix"])
                .arg(&merged)
                .args(ty)
                .arg("-o")
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let f = laquant::gguf::GgufFile::open(&out).unwrap();
            let ds = f.get("quantize.imatrix.dataset").and_then(|v| v.as_str());
            assert!(ds.is_some_and(|d| d.starts_with("ar:")), "{ds:?}");
        }
    }

    let merge = |arg: std::ffi::OsString, model: Option<&Path>| {
        let mut c = Command::new(bin);
        c.args(["calibrate", "-q", "--force"]);
        if let Some(m) = model {
            c.arg(m);
        }
        let o = c
            .arg("--merge")
            .arg(arg)
            .arg("-o")
            .arg(tmp.path().join("bad.gguf"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // Statistics of another model (qwen2-tied: other widths) beside ours.
    let other = tmp.path().join("other.gguf");
    let o = Command::new(bin)
        .arg("calibrate")
        .arg(fixture("qwen2-tied"))
        .args(["-q", "--ctx", "32", "--chunks", "1", "--calib"])
        .arg(corpus_dir(&["de"]).path())
        .arg("-o")
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pair = |a: &Path, b: &Path| {
        let mut s = std::ffi::OsString::from("en=");
        s.push(a);
        s.push(",de=");
        s.push(b);
        s
    };
    let e = merge(pair(&files.join("en.gguf"), &other), None);
    assert!(e.contains("other.gguf") && e.contains("weight"), "{e}");
    // Our own languages merged, checked against another model.
    let e = merge(files.clone().into_os_string(), Some(&fixture("qwen2-tied")));
    assert!(
        e.contains("different from tensor size") && e.contains("blk.0."),
        "{e}"
    );
    // A truncated file.
    let bytes = std::fs::read(files.join("zh.gguf")).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = merge(pair(&files.join("en.gguf"), &cut), None);
    assert!(e.contains("cut.gguf"), "{e}");
    assert!(!tmp.path().join("bad.gguf").exists());
}
