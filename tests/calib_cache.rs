//! The calibration cache (laquant::calib::cache) through the library's job:
//! a reused calibration gives the same bytes as a fresh one, every part of the
//! key misses when it changes, the language weights do not (they are applied
//! after reading), a damaged entry is reported and recomputed, and the thread
//! count does not change the statistics (so it is not in the key).

use laquant::calib::{self, cache::Outcome, Corpus};
use laquant::hf::Checkpoint;
use laquant::job::{CacheDir, CalibSource, Calibration, Job, Progress};
use laquant::pipeline::{ConvertOptions, OutType};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

fn fixture(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama-bpe");
    let dst = dir.join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn corpus(dir: &Path, langs: &[&str]) -> PathBuf {
    let d = dir.join("corpus");
    std::fs::create_dir_all(&d).unwrap();
    for doc in Corpus::embedded()
        .docs
        .iter()
        .filter(|d| langs.contains(&d.lang.as_str()))
    {
        std::fs::write(d.join(format!("{}.txt", doc.lang)), &doc.text).unwrap();
    }
    d
}

struct Setup {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    cal: Calibration,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture(tmp.path());
    let cal = Calibration {
        source: CalibSource::Dir(corpus(tmp.path(), &["en", "zh"])),
        ctx: 64,
        chunks: Some(2),
        cache: CacheDir::Dir(tmp.path().join("cache")),
        ..Default::default()
    };
    Setup {
        _tmp: tmp,
        model,
        cal,
    }
}

/// Calibrates; returns the statistics, what the cache did and the warnings.
fn calibrate(model: &Path, cal: &Calibration) -> (calib::Importance, Outcome, Vec<String>) {
    let ck = Checkpoint::open(model.to_str().unwrap()).unwrap();
    let warnings = Mutex::new(Vec::new());
    let run = cal
        .calibrate(&ck, 2, true, &|p| {
            if let Progress::Warning(w) = p {
                warnings.lock().unwrap().push(w.to_string());
            }
        })
        .unwrap();
    (run.importance, run.cache, warnings.into_inner().unwrap())
}

fn reused(o: &Outcome) -> bool {
    matches!(o, Outcome::Reused { .. })
}

fn stored(o: &Outcome) -> bool {
    matches!(o, Outcome::Stored { .. })
}

#[test]
fn reuse_writes_the_same_bytes_as_a_fresh_calibration() {
    let s = setup();
    let out = s._tmp.path();
    let job = |cache: CacheDir, name: &str| Job {
        model: s.model.to_str().unwrap().into(),
        options: ConvertOptions {
            outtype: OutType::parse("q4_k_m", false).unwrap(),
            output: Some(out.join(name)),
            ..Default::default()
        },
        calibration: Calibration {
            cache,
            ..s.cal.clone()
        },
    };
    let fresh = job(CacheDir::Off, "fresh.gguf").run(2, &|_| {}).unwrap();
    let first = job(s.cal.cache.clone(), "first.gguf")
        .run(2, &|_| {})
        .unwrap();
    let again = job(s.cal.cache.clone(), "again.gguf")
        .run(2, &|_| {})
        .unwrap();
    let status =
        |r: &laquant::pipeline::ConvertReport| r.calibration.as_ref().unwrap().cache.clone();
    assert_eq!(status(&fresh), Some(Outcome::Off));
    assert!(stored(&status(&first).unwrap()));
    assert!(reused(&status(&again).unwrap()));
    let bytes = |n: &str| std::fs::read(out.join(n)).unwrap();
    assert_eq!(bytes("fresh.gguf"), bytes("first.gguf"));
    assert_eq!(bytes("fresh.gguf"), bytes("again.gguf"));
}

#[test]
fn every_part_of_the_key_misses_and_the_language_weights_do_not() {
    let s = setup();
    let (base, o, _) = calibrate(&s.model, &s.cal);
    assert!(stored(&o));
    let (again, o, _) = calibrate(&s.model, &s.cal);
    assert!(reused(&o));
    assert_eq!(again, base);

    // Language weights: reused, balanced as a fresh run balances.
    let weighted = Calibration {
        lang_weights: vec![("zh".into(), 3.0)],
        ..s.cal.clone()
    };
    let (w, o, _) = calibrate(&s.model, &weighted);
    assert!(reused(&o));
    let (fresh, _, _) = calibrate(
        &s.model,
        &Calibration {
            cache: CacheDir::Off,
            ..weighted.clone()
        },
    );
    assert_eq!(w, fresh);
    assert_eq!(w.weights, vec![0.25, 0.75]);

    // Each change of the key: a miss (stored anew), then a hit.
    let changes: Vec<(&str, Calibration)> = vec![
        (
            "ctx",
            Calibration {
                ctx: 48,
                ..s.cal.clone()
            },
        ),
        (
            "chunks",
            Calibration {
                chunks: Some(1),
                ..s.cal.clone()
            },
        ),
        (
            "tokens",
            Calibration {
                chunks: None,
                tokens: Some(192),
                ..s.cal.clone()
            },
        ),
    ];
    for (what, c) in &changes {
        let (_, o, _) = calibrate(&s.model, c);
        assert!(stored(&o), "{what}: {o:?}");
        assert!(reused(&calibrate(&s.model, c).1), "{what}");
    }
    // The text.
    let CalibSource::Dir(d) = &s.cal.source else {
        unreachable!()
    };
    let en = d.join("en.txt");
    let text = std::fs::read_to_string(&en).unwrap();
    // (At its start: past the chunks read, a change is rightly not seen.)
    std::fs::write(&en, format!("Hello. {text}")).unwrap();
    assert!(stored(&calibrate(&s.model, &s.cal).1), "text");
    std::fs::write(&en, &text).unwrap();
    assert!(reused(&calibrate(&s.model, &s.cal).1), "text restored");
    // The output head's input.
    let ck = Checkpoint::open(s.model.to_str().unwrap()).unwrap();
    let r = s.cal.calibrate(&ck, 2, false, &|_| {}).unwrap();
    assert!(stored(&r.cache), "process_output");
    drop(ck);
    // The weights: one value changed inside a sampled window (a tensor's
    // start), its file's time restored; and the time alone.
    let st = s.model.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let mtime = std::fs::metadata(&st).unwrap().modified().unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut b = bytes.clone();
    b[8 + header + 1] ^= 0x01;
    std::fs::write(&st, &b).unwrap();
    std::fs::File::options()
        .append(true)
        .open(&st)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert!(stored(&calibrate(&s.model, &s.cal).1), "weights");
    std::fs::write(&st, &bytes).unwrap();
    std::fs::File::options()
        .append(true)
        .open(&st)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert!(reused(&calibrate(&s.model, &s.cal).1), "weights restored");
    let later = mtime + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .append(true)
        .open(&st)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert!(stored(&calibrate(&s.model, &s.cal).1), "modification time");
    // config.json.
    let cfg = s.model.join("config.json");
    let c = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, c.replacen('{', "{\n  \"laquant_test\": 1,", 1)).unwrap();
    assert!(stored(&calibrate(&s.model, &s.cal).1), "config.json");
}

#[test]
fn a_damaged_entry_is_reported_and_recomputed() {
    let s = setup();
    let (base, o, _) = calibrate(&s.model, &s.cal);
    let Outcome::Stored { file } = o else {
        panic!("{o:?}")
    };
    let full = std::fs::read(&file).unwrap();
    let damage: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", full[..full.len() - 9].to_vec()),
        ("empty", Vec::new()),
        ("flipped", {
            let mut b = full.clone();
            let n = b.len();
            b[n - 100] ^= 0x40;
            b
        }),
    ];
    for (what, bytes) in damage {
        std::fs::write(&file, &bytes).unwrap();
        let (imp, o, warnings) = calibrate(&s.model, &s.cal);
        assert!(stored(&o), "{what}: {o:?}");
        assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
        assert!(
            warnings[0].contains("ignoring the cached calibration"),
            "{}",
            warnings[0]
        );
        assert_eq!(imp, base, "{what}");
        assert_eq!(std::fs::read(&file).unwrap(), full, "{what}: rewritten");
        assert!(reused(&calibrate(&s.model, &s.cal).1));
    }
}

#[test]
fn the_thread_count_does_not_change_the_statistics() {
    let s = setup();
    let cal = Calibration {
        cache: CacheDir::Off,
        ..s.cal.clone()
    };
    let ck = Checkpoint::open(s.model.to_str().unwrap()).unwrap();
    let one = cal.calibrate(&ck, 1, true, &|_| {}).unwrap().importance;
    let two = cal.calibrate(&ck, 2, true, &|_| {}).unwrap().importance;
    let three = cal.calibrate(&ck, 3, true, &|_| {}).unwrap().importance;
    assert_eq!(one, two);
    assert_eq!(one, three);
}

#[test]
fn the_estimate_comes_first_and_the_size_is_reported() {
    let s = setup();
    let ck = Checkpoint::open(s.model.to_str().unwrap()).unwrap();
    let order = Mutex::new(Vec::new());
    let cal = Calibration {
        chunks: None,
        tokens: Some(100),
        cache: CacheDir::Off,
        ..s.cal.clone()
    };
    let run = cal
        .calibrate(&ck, 2, true, &|p| {
            let tag = match p {
                Progress::CalibrationEstimate(_) => "estimate",
                Progress::Calibration(_) => "progress",
                Progress::CalibrationCache(_) => "cache",
                _ => "other",
            };
            let mut o = order.lock().unwrap();
            if o.last() != Some(&tag) {
                o.push(tag);
            }
        })
        .unwrap();
    let order = order.into_inner().unwrap();
    assert_eq!(order.first(), Some(&"estimate"), "{order:?}");
    assert_eq!(order.last(), Some(&"cache"), "{order:?}");
    // 100 tokens per language in chunks of 64: 2 chunks each, as run.
    let e = &run.estimate;
    assert_eq!(e.size.max_chunks, Some(2));
    assert_eq!(e.chunks, 4);
    assert_eq!(e.tokens, run.importance.tokens());
    assert!(e.matmul_macs > 0.0 && e.attention_macs > 0.0);
}

/// The measured sensitivity is cached too: `plan` then `convert` of one la-mix
/// measures once, the reused measurement writes the bytes of a fresh one, and a
/// second `--target-bpw` size (same base types) reuses the first's.
#[test]
fn the_measured_sensitivity_is_measured_once() {
    let s = setup();
    let out = s._tmp.path();
    let job = |outtype: OutType, cache: CacheDir, name: &str| Job {
        model: s.model.to_str().unwrap().into(),
        options: ConvertOptions {
            outtype,
            output: Some(out.join(name)),
            ..Default::default()
        },
        calibration: Calibration {
            cache,
            ..s.cal.clone()
        },
    };
    let lamix = || OutType::parse("la-mix", false).unwrap();
    let lines = Mutex::new(Vec::new());
    let said = |p: Progress| {
        if let Progress::SensitivityCache(o) = p {
            lines
                .lock()
                .unwrap()
                .push(o.describe_as("sensitivity", "measures"));
        }
    };
    let cache = s.cal.cache.clone();
    let (_, planned) = job(lamix(), cache.clone(), "plan.gguf")
        .plan(2, &said)
        .unwrap();
    assert!(!out.join("plan.gguf").exists());
    let said_first = lines.lock().unwrap().clone();
    assert!(
        said_first.len() == 1 && said_first[0].starts_with("sensitivity: cached in"),
        "{said_first:?}"
    );
    let sens = |r: &laquant::pipeline::ConvertReport| r.sensitivity.as_ref().unwrap().cache.clone();
    let fresh = job(lamix(), CacheDir::Off, "fresh.gguf")
        .run(2, &|_| {})
        .unwrap();
    assert_eq!(sens(&fresh), Outcome::Off);
    let again = job(lamix(), cache.clone(), "again.gguf")
        .run(2, &said)
        .unwrap();
    assert!(reused(&sens(&again)), "{:?}", sens(&again));
    assert!(lines.lock().unwrap()[1].starts_with("sensitivity: reused from the cache"));
    let bytes = |n: &str| std::fs::read(out.join(n)).unwrap();
    assert_eq!(bytes("fresh.gguf"), bytes("again.gguf"));
    let types = |p: &[laquant::pipeline::TensorPlan]| -> Vec<String> {
        p.iter().map(|t| format!("{} {:?}", t.name, t.ty)).collect()
    };
    assert_eq!(types(&planned), types(&again.tensors));
    // --target-bpw (in a cache of its own: its probes may be la-mix's): a
    // first size stores, a second reuses, and writes what a fresh measurement
    // writes.
    let cache = CacheDir::Dir(out.join("cache-bpw"));
    let first = job(OutType::TargetBpw(4.5), cache.clone(), "t45.gguf")
        .run(2, &|_| {})
        .unwrap();
    assert!(stored(&sens(&first)), "{:?}", sens(&first));
    let second = job(OutType::TargetBpw(3.5), cache.clone(), "t35.gguf")
        .run(2, &|_| {})
        .unwrap();
    assert!(reused(&sens(&second)), "{:?}", sens(&second));
    job(OutType::TargetBpw(3.5), CacheDir::Off, "t35-fresh.gguf")
        .run(2, &|_| {})
        .unwrap();
    assert_eq!(bytes("t35.gguf"), bytes("t35-fresh.gguf"));
}

/// An encoder's calibration (no output head to tap, whatever
/// `--process-output` says) is stored, then reused without a warning.
#[test]
fn an_encoder_calibration_is_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/xlmr");
    let cal = Calibration {
        source: CalibSource::Dir(corpus(tmp.path(), &["en", "zh"])),
        ctx: 64,
        chunks: Some(1),
        cache: CacheDir::Dir(tmp.path().join("cache")),
        ..Default::default()
    };
    let (first, o, w) = calibrate(&model, &cal);
    assert!(stored(&o) && w.is_empty(), "{o:?} {w:?}");
    let (again, o, w) = calibrate(&model, &cal);
    assert!(reused(&o) && w.is_empty(), "{o:?} {w:?}");
    assert_eq!(first.langs, again.langs);
}
