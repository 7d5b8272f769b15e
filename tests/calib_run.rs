//! End-to-end calibration on polyglot-25m (../shared/models/polyglot-25m) with
//! small chunks: per-language statistics, the balance, GGUF names that match the
//! converter's, the imatrix file, and every corpus error through the library and
//! the `laquant calibrate` command (exit code 1, message naming the file).

use laquant::calib::{self, CalibError, CalibOptions, Corpus, CorpusSource, Imatrix};
use laquant::hf::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

/// The shared model, or `None` (the test skips) outside CI when it is absent.
fn polyglot() -> Option<PathBuf> {
    common::shared_data("models/polyglot-25m")
}

fn corpus_dir(langs: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for d in Corpus::embedded()
        .docs
        .iter()
        .filter(|d| langs.contains(&d.lang.as_str()))
    {
        std::fs::write(dir.path().join(format!("{}.txt", d.lang)), &d.text).unwrap();
    }
    dir
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
