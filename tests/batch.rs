//! `laquant batch` end to end on the committed fixtures: a manifest of
//! fixtures × types run whole matches single `laquant convert` runs byte for
//! byte; a run killed in the middle resumes, skipping what was finished, to the
//! same outputs; two shards together equal the unsharded run; a failing model
//! does not stop the others and makes the exit code 1; a ChatML fixture gets
//! the expected Modelfile.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_laquant");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The types every model is converted to, with the `convert` flags that make
/// the same file (calibration on the fixture corpus, kept short).
const TYPES: &[(&str, &str, &[&str])] = &[
    ("\"q8_0\"", "Q8_0", &["--outtype", "q8_0"]),
    ("\"q4_k_m\"", "Q4_K_M", &["--outtype", "q4_k_m"]),
    ("\"la-mix\"", "la-mix", &["--outtype", "la-mix"]),
    ("{ target_bpw = 5.0 }", "5bpw", &["--target-bpw", "5.0"]),
];
const MODELS: &[&str] = &["qwen2-tied", "tinyllama-spm", "mistral-spm"];
const CALIB: &[&str] = &["--ctx", "64", "--chunks", "1"];

fn manifest_text(models: &[&str], extra: &str) -> String {
    let types: Vec<&str> = TYPES.iter().map(|t| t.0).collect();
    let mut s = format!(
        "types = [{}]\n[calib]\ncorpus = {:?}\nctx = 64\nchunks = 1\n",
        types.join(", "),
        fixtures().join("corpus").display().to_string()
    );
    for m in models {
        s.push_str(&format!(
            "[[models]]\npath = {:?}\n",
            fixtures().join(m).display().to_string()
        ));
    }
    s.push_str(extra);
    s
}

fn write_manifest(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("zoo.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn batch(manifest: &Path, out: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--threads", "2", "batch"])
        .arg(manifest)
        .arg("-o")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every GGUF under `root` (relative path -> bytes).
fn ggufs(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for d in std::fs::read_dir(root).unwrap().flatten() {
        if !d.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".gguf") {
                let rel = format!("{}/{name}", d.file_name().to_string_lossy());
                out.insert(rel, std::fs::read(f.path()).unwrap());
            }
        }
    }
    out
}

/// Files whose names start with a dot (temporary files) anywhere under `root`.
fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
        }
    }
    out
}

fn summary(root: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(root.join(name)).unwrap()).unwrap()
}

fn statuses(s: &Value) -> Vec<(String, String, String)> {
    s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["type"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The unsharded, uninterrupted run that the other tests compare with.
struct Reference {
    _dir: tempfile::TempDir,
    out: PathBuf,
    files: BTreeMap<String, Vec<u8>>,
    seconds: f64,
}

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let m = write_manifest(dir.path(), &manifest_text(MODELS, ""));
        let out = dir.path().join("out");
        let t = Instant::now();
        let o = batch(&m, &out, &["--jobs", "2", "--quiet"]);
        let seconds = t.elapsed().as_secs_f64();
        ok(&o);
        let files = ggufs(&out);
        Reference {
            _dir: dir,
            out,
            files,
            seconds,
        }
    })
}

#[test]
fn whole_batch_equals_single_converts() {
    let r = reference();
    eprintln!("batch of {} outputs: {:.2}s", r.files.len(), r.seconds);
    assert_eq!(r.files.len(), MODELS.len() * TYPES.len());
    let s = summary(&r.out, "summary.json");
    assert_eq!(s["done"], 12);
    assert_eq!(s["failed"], 0);
    assert_eq!(s["jobs"], 2);
    // Calibration ran once per model, not once per output.
    assert_eq!(s["calibrations"].as_array().unwrap().len(), MODELS.len());
    assert!(r.out.join("state.json").exists() && r.out.join("summary.md").exists());
    assert!(temp_files(&r.out).is_empty());
    let d = tempfile::tempdir().unwrap();
    for m in MODELS {
        for (_, label, flags) in TYPES {
            let key = format!("{m}/{m}-{label}.gguf");
            let single = d.path().join(format!("{m}-{label}.gguf"));
            let o = Command::new(BIN)
                .args(["--threads", "2", "-q", "convert"])
                .arg(fixtures().join(m))
                .args(*flags)
                .arg("--calib")
                .arg(fixtures().join("corpus"))
                .args(CALIB)
                .arg("-o")
                .arg(&single)
                .arg("--report")
                .arg(single.with_extension("json"))
                .output()
                .unwrap();
            ok(&o);
            assert!(
                std::fs::read(&single).unwrap() == r.files[&key],
                "{key} differs from `laquant convert {flags:?}`"
            );
            // The per-output report is convert's: the same plan, the same
            // calibration (timed in both) and sensitivity sizing.
            let rep: Value = serde_json::from_slice(
                &std::fs::read(r.out.join(format!("{m}/{m}-{label}.json"))).unwrap(),
            )
            .unwrap();
            let conv: Value =
                serde_json::from_slice(&std::fs::read(single.with_extension("json")).unwrap())
                    .unwrap();
            assert!(rep["bytes"].as_u64().unwrap() > 0);
            assert!(rep["tensors"].as_array().unwrap().len() > 5);
            assert_eq!(rep["tensors"], conv["tensors"], "{key}");
            let untimed = |v: &Value| {
                let mut c = v["calibration"].clone();
                assert!(c["seconds"].as_f64().is_some_and(|s| s > 0.0), "{key}: {c}");
                c.as_object_mut().unwrap().remove("seconds");
                // Which run stored the calibration and which reused it, and
                // the time estimated from its first part, differ by run.
                assert!(c["cache"]["status"].is_string(), "{key}: {c}");
                c.as_object_mut().unwrap().remove("cache");
                for k in ["seconds", "measured_share"] {
                    c["estimate"].as_object_mut().unwrap().remove(k);
                }
                c
            };
            assert_eq!(untimed(&rep), untimed(&conv), "{key}");
            assert_eq!(
                rep["sensitivity"]["sizing"], conv["sensitivity"]["sizing"],
                "{key}"
            );
            assert!(rep["timings"]["calibration"].is_number(), "{key}");
        }
    }
}

#[test]
fn rerun_skips_everything_and_redoes_a_changed_output() {
    let r = reference();
    let d = tempfile::tempdir().unwrap();
    let m = write_manifest(d.path(), &manifest_text(MODELS, ""));
    let out = d.path().join("out");
    copy_dir(&r.out, &out);
    let t = Instant::now();
    let o = batch(&m, &out, &["--quiet"]);
    ok(&o);
    eprintln!("rerun, all skipped: {:.3}s", t.elapsed().as_secs_f64());
    let s = summary(&out, "summary.json");
    assert_eq!(s["skipped"], 12, "{s}");
    // copy_dir kept the times, so nothing was hashed; now damage one output
    // (same size) and add a type to one model.
    let victim = out.join("tinyllama-spm/tinyllama-spm-Q8_0.gguf");
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let text = manifest_text(MODELS, "").replace(
        &format!("path = {:?}\n", fixtures().join("qwen2-tied").display().to_string()),
        &format!(
            "path = {:?}\ntypes = [\"q8_0\", \"q4_k_m\", \"la-mix\", {{ target_bpw = 5.0 }}, \"q6_k\"]\n",
            fixtures().join("qwen2-tied").display().to_string()
        ),
    );
    let m = write_manifest(d.path(), &text);
    // A dry run says what would be done and changes nothing.
    let before = std::fs::read(out.join("summary.json")).unwrap();
    let o = batch(&m, &out, &["--quiet", "--dry-run"]);
    ok(&o);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("13 outputs: 2 to do, 0 done, 11 skipped"),
        "{table}"
    );
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), before);
    assert_eq!(std::fs::read(&victim).unwrap(), bytes);
    let o = batch(&m, &out, &["--quiet"]);
    ok(&o);
    let s = summary(&out, "summary.json");
    let st = statuses(&s);
    assert_eq!(s["done"], 2, "{st:?}");
    assert_eq!(s["skipped"], 11, "{st:?}");
    let row = |model: &str, ty: &str| {
        s["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == model && r["type"] == ty)
            .unwrap()
            .clone()
    };
    assert_eq!(row("tinyllama-spm", "Q8_0")["status"], "done");
    assert!(row("tinyllama-spm", "Q8_0")["notes"][0]
        .as_str()
        .unwrap()
        .contains("hash"));
    assert_eq!(row("qwen2-tied", "Q6_K")["status"], "done");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        r.files["tinyllama-spm/tinyllama-spm-Q8_0.gguf"]
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
            let t = std::fs::metadata(e.path()).unwrap().modified().unwrap();
            std::fs::File::options()
                .write(true)
                .open(&dst)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
}

fn recorded(out: &Path) -> Vec<String> {
    let Ok(b) = std::fs::read(out.join("state.json")) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<Value>(&b) else {
        return Vec::new();
    };
    v["outputs"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn killed_batch_resumes_to_the_same_outputs() {
    interrupted_batch_resumes(false);
}

#[test]
fn terminated_batch_cleans_up_and_resumes() {
    interrupted_batch_resumes(true);
}

/// Stops a batch in the middle (SIGKILL, or SIGTERM when `term`), checks what
/// it left, resumes it, and compares with the reference run.
fn interrupted_batch_resumes(term: bool) {
    let r = reference();
    let d = tempfile::tempdir().unwrap();
    let m = write_manifest(d.path(), &manifest_text(MODELS, ""));
    let out = d.path().join("out");
    let mut child = Command::new(BIN)
        .args(["--threads", "1", "-q", "batch"])
        .arg(&m)
        .arg("-o")
        .arg(&out)
        .args(["--jobs", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill as soon as a few outputs are finished: the batch is in the middle
    // (each later model still has to calibrate).
    let t = Instant::now();
    while recorded(&out).len() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "batch made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "batch ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    if term {
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    } else {
        child.kill().unwrap();
    }
    let ended = child.wait_with_output().unwrap();
    if term {
        // The signal handler removed the temporary files of the outputs in flight,
        // and says that the finished ones are kept.
        assert!(temp_files(&out).is_empty(), "{:?}", temp_files(&out));
        assert_eq!(ended.status.code(), Some(130));
        let err = String::from_utf8_lossy(&ended.stderr);
        assert!(
            err.contains("interrupted; the outputs finished so far are kept")
                && !err.contains("no output written"),
            "{err}"
        );
    }
    let finished = recorded(&out);
    eprintln!(
        "killed after {} of {} outputs",
        finished.len(),
        r.files.len()
    );
    assert!(
        finished.len() < r.files.len(),
        "killed after everything was done: {finished:?}"
    );
    // No finished output is lost, and no file under a final name is partial.
    let partial = ggufs(&out);
    for k in &finished {
        assert!(partial.contains_key(k), "{k} recorded but missing");
    }
    for (k, bytes) in &partial {
        assert!(bytes == &r.files[k], "{k} is not the complete output");
    }
    let o = batch(&m, &out, &["--quiet", "--jobs", "2"]);
    ok(&o);
    let s = summary(&out, "summary.json");
    assert_eq!(
        s["skipped"].as_u64().unwrap() as usize,
        finished.len(),
        "{s}"
    );
    assert_eq!(
        s["done"].as_u64().unwrap() as usize,
        r.files.len() - finished.len()
    );
    for (model, ty, st) in statuses(&s) {
        let key = format!("{model}/{model}-{ty}.gguf");
        assert_eq!(st == "skipped", finished.contains(&key), "{key}: {st}");
    }
    assert!(
        ggufs(&out) == r.files,
        "resumed outputs differ from the reference"
    );
    assert!(temp_files(&out).is_empty(), "{:?}", temp_files(&out));
}

#[test]
fn two_shards_equal_the_unsharded_run() {
    let r = reference();
    let d = tempfile::tempdir().unwrap();
    let m = write_manifest(d.path(), &manifest_text(MODELS, ""));
    let out = d.path().join("out");
    let mut seen = Vec::new();
    for i in 0..2 {
        let o = batch(&m, &out, &["--quiet", "--shard", &format!("{i}/2")]);
        ok(&o);
        assert!(out.join(format!("state-{i}-of-2.json")).exists());
        let s = summary(&out, &format!("summary-{i}-of-2.json"));
        assert_eq!(s["shard"], format!("{i}/2"));
        seen.extend(statuses(&s));
    }
    assert!(!out.join("state.json").exists());
    assert_eq!(
        seen.len(),
        r.files.len(),
        "the shards overlap or miss items"
    );
    assert!(
        ggufs(&out) == r.files,
        "sharded outputs differ from the unsharded run"
    );
    // An unsharded rerun over the shards' outputs finds everything finished.
    let o = batch(&m, &out, &["--quiet"]);
    ok(&o);
    assert_eq!(summary(&out, "summary.json")["skipped"], 12);
}

#[test]
fn a_failing_model_does_not_stop_the_others() {
    let d = tempfile::tempdir().unwrap();
    // A checkpoint whose config.json is broken, and one that does not exist.
    let broken = d.path().join("broken");
    copy_dir(&fixtures().join("qwen2-tied"), &broken);
    std::fs::write(broken.join("config.json"), b"{ not json").unwrap();
    let extra = format!(
        "[[models]]\npath = {:?}\n[[models]]\npath = \"missing-model\"\n",
        broken.display().to_string()
    );
    let text = manifest_text(&["tinyllama-spm"], &extra).replace("types = [", "types = [\"f16\", ");
    let m = write_manifest(d.path(), &text);
    let out = d.path().join("out");
    let o = batch(&m, &out, &["--quiet", "--jobs", "2"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("10 of 15 outputs failed"), "{stderr}");
    let s = summary(&out, "summary.json");
    assert_eq!(
        (s["done"].as_u64(), s["failed"].as_u64()),
        (Some(5), Some(10))
    );
    for row in s["rows"].as_array().unwrap() {
        let err = row["error"].as_str().unwrap_or("");
        match row["model"].as_str().unwrap() {
            "tinyllama-spm" => assert_eq!(row["status"], "done"),
            "broken" => assert!(err.contains("config.json"), "{err}"),
            "missing-model" => assert!(err.contains("missing-model"), "{err}"),
            other => panic!("unexpected model {other}"),
        }
    }
    assert_eq!(ggufs(&out).len(), 5);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("FAILED") && table.contains("5 done, 0 skipped, 10 failed"));
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("| broken | Q8_0 | - | - | - | FAILED |"),
        "{md}"
    );
}

#[test]
fn ollama_modelfile_for_a_chatml_fixture() {
    let d = tempfile::tempdir().unwrap();
    let m = write_manifest(
        d.path(),
        &format!(
            "types = [\"q8_0\"]\n[calib]\ncorpus = \"none\"\n[[models]]\npath = {:?}\nname = \"qwen\"\n[[models]]\npath = {:?}\n",
            fixtures().join("qwen2-tied").display().to_string(),
            fixtures().join("llama-bpe").display().to_string()
        ),
    );
    let out = d.path().join("out");
    ok(&batch(&m, &out, &["--quiet", "--ollama"]));
    let mf = std::fs::read_to_string(out.join("qwen/qwen-Q8_0.Modelfile")).unwrap();
    let want = format!(
        "# Made by laquant {}\n\
         FROM ./qwen-Q8_0.gguf\n\
         TEMPLATE \"\"\"{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}\n\
         {{{{ .Content }}}}<|im_end|>\n\
         {{{{ end }}}}<|im_start|>assistant\n\"\"\"\n\
         PARAMETER stop \"<|im_start|>\"\n\
         PARAMETER stop \"<|im_end|>\"\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(mf, want);
    let mf = std::fs::read_to_string(out.join("llama-bpe/llama-bpe-Q8_0.Modelfile")).unwrap();
    assert!(
        mf.contains("<|start_header_id|>assistant<|end_header_id|>\n\n\"\"\""),
        "{mf}"
    );
    assert!(mf.contains("PARAMETER stop \"<|eot_id|>\""), "{mf}");
    let s = summary(&out, "summary.json");
    assert_eq!(s["rows"][0]["template"], "chatml");
    assert_eq!(s["rows"][0]["modelfile"], "qwen/qwen-Q8_0.Modelfile");
    assert_eq!(s["rows"][1]["template"], "llama3");
}

#[test]
fn hub_ids_resolve_in_the_local_cache_and_a_new_revision_is_redone() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("hub");
    let repo = cache.join("models--org--Tiny-Chat");
    copy_dir(
        &fixtures().join("tinyllama-spm"),
        &repo.join("snapshots/rev1"),
    );
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "rev1").unwrap();
    let m = write_manifest(
        d.path(),
        "types = [\"q8_0\"]\n[[models]]\nhub = \"org/Tiny-Chat\"\n",
    );
    let out = d.path().join("out");
    let run = || {
        Command::new(BIN)
            .args(["-q", "batch"])
            .arg(&m)
            .arg("-o")
            .arg(&out)
            .env("HF_HUB_CACHE", &cache)
            .output()
            .unwrap()
    };
    ok(&run());
    let first = std::fs::read(out.join("Tiny-Chat/Tiny-Chat-Q8_0.gguf")).unwrap();
    assert_eq!(summary(&out, "summary.json")["done"], 1);
    ok(&run());
    assert_eq!(summary(&out, "summary.json")["skipped"], 1);
    // The hub updates the model: a new snapshot, refs/main moves.
    copy_dir(
        &fixtures().join("tinyllama-spm"),
        &repo.join("snapshots/rev2"),
    );
    std::fs::write(repo.join("refs/main"), "rev2").unwrap();
    ok(&run());
    let s = summary(&out, "summary.json");
    assert_eq!(s["done"], 1, "{s}");
    assert!(s["rows"][0]["notes"][0]
        .as_str()
        .unwrap()
        .contains("input checkpoint changed"));
    assert_eq!(
        std::fs::read(out.join("Tiny-Chat/Tiny-Chat-Q8_0.gguf"))
            .unwrap()
            .len(),
        first.len()
    );
}

/// A manifest of two fixtures × two types without calibration, evaluated on
/// three languages of the embedded held-out text in one short chunk each.
const EVAL_MODELS: &[&str] = &["tinyllama-spm", "llama-bpe"];
const EVAL_LANGS: &[&str] = &["en", "ru", "zh"];

fn eval_manifest(dir: &Path) -> PathBuf {
    let mut s = String::from(
        "types = [\"q8_0\", \"q4_k_m\"]\n[calib]\ncorpus = \"none\"\n\
         [eval]\nlanguages = [\"en\", \"zh\", \"ru\"]\nctx = 64\nchunks = 1\n",
    );
    for m in EVAL_MODELS {
        s.push_str(&format!(
            "[[models]]\npath = {:?}\n",
            fixtures().join(m).display().to_string()
        ));
    }
    write_manifest(dir, &s)
}

fn eval_of(s: &Value, model: &str, ty: &str) -> Value {
    s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == model && r["type"] == ty)
        .unwrap_or_else(|| panic!("no row {model} {ty}: {s}"))["eval"]
        .clone()
}

fn eval_statuses(s: &Value) -> Vec<String> {
    s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["eval"]["status"].as_str().unwrap_or("none").to_string())
        .collect()
}

#[test]
fn eval_scores_every_output_per_language_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let m = eval_manifest(d.path());
    let out = d.path().join("out");
    let o = batch(&m, &out, &[]);
    ok(&o);
    let s = summary(&out, "summary.json");
    assert_eq!(s["done"], 4, "{s}");
    assert_eq!(eval_statuses(&s), ["done"; 4]);
    assert_eq!(s["eval"]["ctx"], 64);
    assert_eq!(s["eval"]["chunks"], 1);
    // One evaluation per model, over both of its outputs (one reference run).
    let evals = s["evaluations"].as_array().unwrap();
    assert_eq!(evals.len(), EVAL_MODELS.len(), "{s}");
    assert!(evals
        .iter()
        .all(|e| e["outputs"] == 2 && e["error"].is_null()));
    for model in EVAL_MODELS {
        for ty in ["Q8_0", "Q4_K_M"] {
            let e = eval_of(&s, model, ty);
            let langs = e["languages"].as_object().unwrap();
            assert_eq!(
                langs.keys().map(String::as_str).collect::<Vec<_>>(),
                EVAL_LANGS,
                "{model} {ty}"
            );
            for (l, x) in langs {
                for k in ["ppl", "ppl_ref", "kld_mean", "kld_p99", "top1"] {
                    assert!(
                        x[k].as_f64().is_some_and(f64::is_finite),
                        "{model} {ty} {l} {k}: {x}"
                    );
                }
                assert_eq!(x["tokens"], 64 - 1 - 32, "{model} {ty} {l}");
            }
            assert!(e["kld_mean"].as_f64().unwrap() > 0.0);
        }
        // The 4-bit output loses more than the 8-bit one.
        let kld = |ty| eval_of(&s, model, ty)["kld_mean"].as_f64().unwrap();
        assert!(kld("Q4_K_M") > 3.0 * kld("Q8_0"), "{model}");
    }
    // The numbers are `laquant eval`'s on the same outputs.
    let tiny = fixtures().join("tinyllama-spm");
    let single = Command::new(BIN)
        .args(["--threads", "2", "-q", "eval"])
        .arg(&tiny)
        .arg(out.join("tinyllama-spm/tinyllama-spm-Q8_0.gguf"))
        .arg(out.join("tinyllama-spm/tinyllama-spm-Q4_K_M.gguf"))
        .args(["--ctx", "64", "--chunks", "1", "--json", "-"])
        .output()
        .unwrap();
    ok(&single);
    let single: Value = serde_json::from_slice(&single.stdout).unwrap();
    for (i, ty) in ["Q8_0", "Q4_K_M"].iter().enumerate() {
        let e = eval_of(&s, "tinyllama-spm", ty);
        for l in EVAL_LANGS {
            for k in ["ppl", "ppl_ref", "kld_mean", "top1"] {
                let (a, b) = (
                    e["languages"][l][k].as_f64().unwrap(),
                    single["files"][i]["languages"][l][k].as_f64().unwrap(),
                );
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1e-12),
                    "{ty} {l} {k}: batch {a}, eval {b}"
                );
            }
        }
    }
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("mean KLD, worst language"), "{table}");
    assert!(
        table.contains("evaluations: 4 done, 0 skipped, 0 failed"),
        "{table}"
    );
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("## Quality per language") && md.contains("### llama-bpe"),
        "{md}"
    );
    assert!(
        md.contains("| lang | PPL ref | PPL Q8_0 | KLD Q8_0 | PPL Q4_K_M | KLD Q4_K_M |"),
        "{md}"
    );
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| zh |")).count(),
        2,
        "{md}"
    );

    // A rerun with the same settings scores nothing again.
    let state = std::fs::read(out.join("state.json")).unwrap();
    let o = batch(&m, &out, &[]);
    ok(&o);
    let s2 = summary(&out, "summary.json");
    assert_eq!(s2["skipped"], 4);
    assert_eq!(eval_statuses(&s2), ["skipped"; 4]);
    assert!(s2["evaluations"].as_array().unwrap().is_empty(), "{s2}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("evaluated"));
    assert_eq!(
        eval_of(&s2, "llama-bpe", "Q4_K_M"),
        Value::from(
            eval_of(&s, "llama-bpe", "Q4_K_M")
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (
                    k.clone(),
                    if k == "status" {
                        "skipped".into()
                    } else {
                        v.clone()
                    }
                ))
                .collect::<serde_json::Map<_, _>>()
        )
    );
    assert_eq!(std::fs::read(out.join("state.json")).unwrap(), state);

    // Other settings (from the command line, over the manifest's) redo every
    // evaluation but no conversion; a dry run says so.
    let o = batch(&m, &out, &["--quiet", "--dry-run", "--eval-chunks", "2"]);
    ok(&o);
    let table = String::from_utf8_lossy(&o.stdout);
    assert_eq!(table.matches("to evaluate").count(), 4, "{table}");
    let o = batch(&m, &out, &["--quiet", "--eval-chunks", "2"]);
    ok(&o);
    let s3 = summary(&out, "summary.json");
    assert_eq!(s3["skipped"], 4);
    assert_eq!(eval_statuses(&s3), ["done"; 4]);
    assert_eq!(s3["eval"]["chunks"], 2);
    assert_eq!(
        eval_of(&s3, "tinyllama-spm", "Q8_0")["languages"]["en"]["tokens"],
        2 * (64 - 1 - 32)
    );

    // A failing evaluation fails the run (exit 1) and says why, keeps the
    // GGUFs and the earlier results.
    let o = batch(
        &m,
        &out,
        &["--quiet", "--eval-chunks", "2", "--eval-languages", "en,xx"],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("evaluation of 4 of 4 outputs failed"),
        "{stderr}"
    );
    let s4 = summary(&out, "summary.json");
    assert_eq!(
        (s4["skipped"].as_u64(), s4["failed"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(s4["eval_failed"], 4);
    let e = eval_of(&s4, "llama-bpe", "Q8_0");
    assert_eq!(e["status"], "failed");
    assert!(e["error"].as_str().unwrap().contains("\"xx\""), "{e}");
    assert_eq!(ggufs(&out).len(), 4);
    let o = batch(&m, &out, &["--quiet", "--eval-chunks", "2"]);
    ok(&o);
    assert_eq!(
        eval_statuses(&summary(&out, "summary.json")),
        ["skipped"; 4]
    );
}

#[test]
fn one_output_that_cannot_be_evaluated_fails_alone() {
    let d = tempfile::tempdir().unwrap();
    let conv = |model: &str, ty: &str| {
        let p = d.path().join(format!("{model}-{ty}.gguf"));
        ok(&Command::new(BIN)
            .args(["-q", "convert"])
            .arg(fixtures().join(model))
            .args(["--outtype", ty, "--calib", "none", "-o"])
            .arg(&p)
            .output()
            .unwrap());
        p
    };
    let good = conv("tinyllama-spm", "q8_0");
    let other = conv("llama-bpe", "q8_0");
    let missing = d.path().join("missing.gguf");
    let settings = laquant::batch::manifest::EvalSettings {
        languages: vec!["en".into()],
        ctx: Some(64),
        chunks: Some(1),
        ..Default::default()
    };
    let tiny = fixtures().join("tinyllama-spm");
    let ev = laquant::batch::quality::evaluate(
        tiny.to_str().unwrap(),
        &[other.clone(), good.clone(), missing],
        &settings,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(ev.passes, 1);
    let r = ev.results;
    assert_eq!(r.len(), 3);
    let e = r[0].as_ref().unwrap_err();
    assert!(
        e.contains("llama-bpe-q8_0.gguf") && e.contains("not a quantization"),
        "{e}"
    );
    let q = r[1].as_ref().unwrap();
    assert!(q.languages["en"].kld_mean > 0.0 && q.worst_language == "en");
    assert!(r[2].as_ref().unwrap_err().contains("missing.gguf"));
    // With room for only one output beside the reference, each output gets its
    // own pass, with the same results.
    let q4 = conv("tinyllama-spm", "q4_k_m");
    let files = [good, q4];
    let together =
        laquant::batch::quality::evaluate(tiny.to_str().unwrap(), &files, &settings, &mut |_| {})
            .unwrap();
    let tight = laquant::batch::manifest::EvalSettings {
        memory_bytes: Some(1),
        ..settings.clone()
    };
    let apart =
        laquant::batch::quality::evaluate(tiny.to_str().unwrap(), &files, &tight, &mut |_| {})
            .unwrap();
    assert_eq!((together.passes, apart.passes), (1, 2));
    for (a, b) in together.results.iter().zip(&apart.results) {
        assert_eq!(a.as_ref().unwrap(), b.as_ref().unwrap());
    }
    // A problem with the model or the text fails them all.
    let bad = laquant::batch::manifest::EvalSettings {
        languages: vec!["xx".into()],
        ..settings
    };
    let e = laquant::batch::quality::evaluate(tiny.to_str().unwrap(), &[other], &bad, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"xx\"") && e.contains("embedded held-out text"),
        "{e}"
    );
}

/// Two fixtures × Q8_0, evaluated globally on three languages in one chunk;
/// llama-bpe has its own `eval` entry (`model_eval`).
fn per_model_eval_manifest(dir: &Path, model_eval: &str) -> PathBuf {
    let mut s = String::from(
        "types = [\"q8_0\"]\n[calib]\ncorpus = \"none\"\n\
         [eval]\nlanguages = [\"en\", \"zh\", \"ru\"]\nctx = 64\nchunks = 1\n",
    );
    for m in EVAL_MODELS {
        s.push_str(&format!(
            "[[models]]\npath = {:?}\n",
            fixtures().join(m).display().to_string()
        ));
        if *m == "llama-bpe" {
            s.push_str(&format!("eval = {model_eval}\n"));
        }
    }
    write_manifest(dir, &s)
}

fn report(out: &Path, model: &str) -> Value {
    let p = out.join(format!("{model}/{model}-Q8_0.json"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn per_model_eval_settings_override_the_global_ones_and_resume_per_model() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let m = per_model_eval_manifest(d.path(), "{ languages = [\"en\"] }");
    ok(&batch(&m, &out, &["--quiet"]));
    let s = summary(&out, "summary.json");
    let langs = |e: &Value| -> Vec<String> {
        e["languages"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    // llama-bpe uses its own languages and the global ctx and chunks; the
    // other model keeps the global settings.
    assert_eq!(langs(&eval_of(&s, "tinyllama-spm", "Q8_0")), EVAL_LANGS);
    let bpe = eval_of(&s, "llama-bpe", "Q8_0");
    assert_eq!(langs(&bpe), ["en"]);
    assert_eq!(bpe["languages"]["en"]["tokens"], 64 - 1 - 32);
    assert_eq!(
        s["eval"]["languages"],
        serde_json::json!(["en", "zh", "ru"])
    );
    let own = &s["eval_models"];
    assert_eq!(own.as_object().unwrap().len(), 1, "{s}");
    assert_eq!(own["llama-bpe"]["languages"], serde_json::json!(["en"]));
    assert_eq!(own["llama-bpe"]["ctx"], 64);
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("### llama-bpe\n\nThis model's own settings: Text: ")
            && md.contains("; languages en."),
        "{md}"
    );

    // Each output's JSON report holds its evaluation, as summary.json does,
    // with the settings it was made with, beside the conversion report.
    for model in EVAL_MODELS {
        let r = report(&out, model);
        assert!(r["tensors"].is_array() && r["n_params"].is_u64(), "{r}");
        let e = &r["eval"];
        assert_eq!(e["status"], "done", "{model}: {r}");
        let row = eval_of(&s, model, "Q8_0");
        assert_eq!(e["languages"], row["languages"], "{model}");
        assert_eq!(e["kld_mean"], row["kld_mean"], "{model}");
        assert_eq!(e["worst_language"], row["worst_language"], "{model}");
        assert_eq!(e["settings"]["ctx"], 64);
        assert_eq!(e["settings"]["chunks"], 1);
    }
    assert_eq!(
        report(&out, "llama-bpe")["eval"]["settings"]["languages"],
        serde_json::json!(["en"])
    );

    // Changing llama-bpe's settings redoes its evaluation only, and its report.
    let tiny_report = std::fs::read(out.join("tinyllama-spm/tinyllama-spm-Q8_0.json")).unwrap();
    let m = per_model_eval_manifest(d.path(), "{ languages = [\"en\"], chunks = 2 }");
    ok(&batch(&m, &out, &["--quiet"]));
    let s2 = summary(&out, "summary.json");
    assert_eq!(s2["skipped"], 2, "{s2}");
    assert_eq!(eval_of(&s2, "tinyllama-spm", "Q8_0")["status"], "skipped");
    assert_eq!(
        eval_of(&s2, "tinyllama-spm", "Q8_0")["languages"],
        eval_of(&s, "tinyllama-spm", "Q8_0")["languages"]
    );
    let bpe2 = eval_of(&s2, "llama-bpe", "Q8_0");
    assert_eq!(bpe2["status"], "done");
    assert_eq!(bpe2["languages"]["en"]["tokens"], 2 * (64 - 1 - 32));
    let evals = s2["evaluations"].as_array().unwrap();
    assert_eq!(evals.len(), 1, "{s2}");
    assert_eq!(evals[0]["model"], "llama-bpe");
    let r = report(&out, "llama-bpe");
    assert_eq!(r["eval"]["languages"], bpe2["languages"]);
    assert_eq!(r["eval"]["settings"]["chunks"], 2);
    assert_eq!(
        std::fs::read(out.join("tinyllama-spm/tinyllama-spm-Q8_0.json")).unwrap(),
        tiny_report
    );

    // Without the global [eval], only the model with its own entry is
    // evaluated (still skipped: same settings); a report that lost its
    // evaluation gets it back from the state without scoring again.
    let p = out.join("llama-bpe/llama-bpe-Q8_0.json");
    let mut r = report(&out, "llama-bpe");
    r.as_object_mut().unwrap().remove("eval");
    std::fs::write(&p, serde_json::to_vec_pretty(&r).unwrap()).unwrap();
    let text = std::fs::read_to_string(&m).unwrap();
    let text = text.replace(
        "[eval]\nlanguages = [\"en\", \"zh\", \"ru\"]\nctx = 64\nchunks = 1\n",
        "",
    );
    let m = write_manifest(
        d.path(),
        &text.replace("{ languages", "{ ctx = 64, languages"),
    );
    ok(&batch(&m, &out, &["--quiet"]));
    let s3 = summary(&out, "summary.json");
    assert!(s3["eval"].is_null(), "{s3}");
    assert!(eval_of(&s3, "tinyllama-spm", "Q8_0").is_null(), "{s3}");
    assert_eq!(eval_of(&s3, "llama-bpe", "Q8_0")["status"], "skipped");
    assert!(s3["evaluations"].as_array().unwrap().is_empty(), "{s3}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("## Quality per language\n\nPPL: perplexity")
            && md.contains("This model's own settings: ")
            && !md.contains("### tinyllama-spm"),
        "{md}"
    );
    assert_eq!(report(&out, "llama-bpe")["eval"], r_eval(&s2));
}

/// llama-bpe's evaluation as its report holds it after the second run.
fn r_eval(s2: &Value) -> Value {
    let mut e = eval_of(s2, "llama-bpe", "Q8_0");
    e["settings"] = serde_json::json!({
        "text": s2["eval_models"]["llama-bpe"]["text"],
        "languages": ["en"],
        "ctx": 64,
        "chunks": 2,
    });
    e
}

#[test]
fn a_model_named_like_a_bookkeeping_file_is_refused() {
    // Issue 19: a model folder OUT/state.json/ collided with the state file,
    // and every rerun failed.
    for name in [
        "state.json",
        "summary.md",
        "summary.json",
        "state-0-of-2.json",
    ] {
        let d = tempfile::tempdir().unwrap();
        let m = write_manifest(
            d.path(),
            &format!(
                "types = [\"q8_0\"]\n[[models]]\npath = {:?}\nname = {name:?}\n",
                fixtures().join("llama-bpe").display().to_string()
            ),
        );
        let out = d.path().join("out");
        let o = batch(&m, &out, &["-q"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("zoo.toml") && err.contains(name) && err.contains("state or summary"),
            "{name}: {err}"
        );
        assert!(!out.join(name).exists(), "{name}");
    }
}

#[test]
fn the_model_folder_as_output_root_is_skipped_on_rerun() {
    // Issue 19: with -o equal to the model folder, the state and summary written
    // there changed the input fingerprint, so every rerun redid everything.
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("llama-bpe");
    copy_dir(&fixtures().join("llama-bpe"), &model);
    let m = write_manifest(
        d.path(),
        &format!(
            "types = [\"q8_0\"]\n[[models]]\npath = {:?}\n",
            model.display().to_string()
        ),
    );
    ok(&batch(&m, &model, &["-q"]));
    assert_eq!(summary(&model, "summary.json")["done"], 1);
    ok(&batch(&m, &model, &["-q"]));
    let s = summary(&model, "summary.json");
    assert_eq!(s["skipped"], 1, "{s}");
    assert_eq!(s["done"], 0, "{s}");
}

#[test]
fn a_sharded_model_in_a_hub_cache_with_blob_symlinks_converts() {
    // Issue 19: huggingface_hub stores snapshots/<rev>/<file> as relative
    // symlinks to ../../blobs/<sha>; sharded models were refused.
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("hub");
    let repo = cache.join("models--org--Sharded");
    let snap = repo.join("snapshots/abc123");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    // Two shards and an index, from the fixture's single file.
    let src = fixtures().join("llama-bpe");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let staging = d.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let mut wm = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &staging.join(file)).unwrap();
        for n in part {
            wm.insert(n.clone(), Value::from(file));
        }
    }
    std::fs::write(
        staging.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": wm}).to_string(),
    )
    .unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "model.safetensors" {
            std::fs::copy(e.path(), staging.join(&n)).unwrap();
        }
    }
    for (i, e) in std::fs::read_dir(&staging).unwrap().flatten().enumerate() {
        let blob = format!("{i:064x}");
        std::fs::rename(e.path(), repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snap.join(e.file_name()))
            .unwrap();
    }
    let m = write_manifest(
        d.path(),
        "types = [\"q8_0\"]\n[[models]]\nhub = \"org/Sharded\"\n",
    );
    let out = d.path().join("out");
    let o = Command::new(BIN)
        .args(["-q", "batch"])
        .arg(&m)
        .arg("-o")
        .arg(&out)
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    ok(&o);
    let s = summary(&out, "summary.json");
    assert_eq!(s["done"], 1, "{s}");
    // The same tensors as the single-file fixture gives.
    let plain = d.path().join("plain.gguf");
    let c = Command::new(BIN)
        .args(["-q", "convert"])
        .arg(&src)
        .args(["--outtype", "q8_0", "-o"])
        .arg(&plain)
        .output()
        .unwrap();
    ok(&c);
    let g = laquant::gguf::GgufFile::open(out.join("Sharded/Sharded-Q8_0.gguf")).unwrap();
    let p = laquant::gguf::GgufFile::open(&plain).unwrap();
    assert_eq!(g.tensors.len(), p.tensors.len());
    for (x, y) in g.tensors.iter().zip(&p.tensors) {
        assert_eq!(
            (x.name.as_str(), g.tensor_data(x)),
            (y.name.as_str(), p.tensor_data(y))
        );
    }
}

#[test]
fn failed_final_writes_keep_and_record_the_gguf_and_show_the_table() {
    // Issue 19: a full disk during batch's final writes kept the GGUF but did not
    // record it or print the table. Here the report beside the GGUF and the
    // summary cannot be written (folders stand where the files would go).
    let d = tempfile::tempdir().unwrap();
    let m = write_manifest(
        d.path(),
        &format!(
            "types = [\"q8_0\"]\n[[models]]\npath = {:?}\n",
            fixtures().join("llama-bpe").display().to_string()
        ),
    );
    let out = d.path().join("out");
    std::fs::create_dir_all(out.join("llama-bpe/llama-bpe-Q8_0.json")).unwrap();
    std::fs::create_dir_all(out.join("summary.md")).unwrap();
    let o = batch(&m, &out, &["-q"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("summary.md") && stderr.contains("cannot write"),
        "{stderr}"
    );
    // The table is printed, with the output done and the report's failure noted.
    assert!(
        stdout.contains("llama-bpe") && stdout.contains("done"),
        "{stdout}"
    );
    assert!(stdout.contains("report not written"), "{stdout}");
    assert!(out.join("llama-bpe/llama-bpe-Q8_0.gguf").exists());
    // Recorded: once the folders are gone, a rerun skips it.
    std::fs::remove_dir(out.join("summary.md")).unwrap();
    std::fs::remove_dir(out.join("llama-bpe/llama-bpe-Q8_0.json")).unwrap();
    ok(&batch(&m, &out, &["-q"]));
    let s = summary(&out, "summary.json");
    assert_eq!(
        (s["skipped"].as_u64(), s["done"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
}

#[test]
fn a_fifo_as_the_state_file_is_refused_not_read() {
    // Issue 19: opening a FIFO for reading blocks until a writer comes; the
    // state file is checked without blocking and refused.
    let d = tempfile::tempdir().unwrap();
    let m = write_manifest(
        d.path(),
        &format!(
            "types = [\"q8_0\"]\n[[models]]\npath = {:?}\n",
            fixtures().join("llama-bpe").display().to_string()
        ),
    );
    let out = d.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let st = Command::new("mkfifo")
        .arg(out.join("state.json"))
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = Command::new(BIN)
        .args(["-q", "batch"])
        .arg(&m)
        .arg("-o")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A guard against the old hang, not a timing assertion: the run takes milliseconds.
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("batch hung on a FIFO state file");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("state.json") && err.contains("FIFO"), "{err}");
}

/// `batch --eval` on an embedding model converts it and refuses to score it,
/// pointing at `laquant eval` (next-token quality does not apply); the GGUF
/// is kept and the run exits non-zero, as for any failed evaluation.
#[test]
fn eval_of_an_embedding_model_points_at_laquant_eval() {
    let d = tempfile::tempdir().unwrap();
    let xlmr = fixtures().join("xlmr").display().to_string();
    let m = write_manifest(
        d.path(),
        &format!(
            "types = [\"q8_0\"]\n[calib]\ncorpus = \"none\"\n[eval]\nctx = 64\nchunks = 1\n\
             [[models]]\npath = {xlmr:?}\nname = \"xlmr\"\n"
        ),
    );
    let out = d.path().join("out");
    let o = batch(&m, &out, &["--eval", "-q"]);
    assert!(!o.status.success());
    let s = summary(&out, "summary.json");
    assert_eq!(s["done"], 1, "{s}");
    let err = s["evaluations"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("is an embedding model (XLMRobertaModel)")
            && err.contains(&format!("laquant eval {xlmr} FILE.gguf")),
        "{err}"
    );
    assert!(out.join("xlmr/xlmr-Q8_0.gguf").is_file());
}
