//! Atomic output under hostile conditions (issue #7): a conversion killed with
//! SIGKILL at random points never leaves a file at the target path, the next
//! run succeeds and writes the same bytes as an uninterrupted run, and the
//! temporary files of killed runs are cleaned up; a full disk (a size-limited
//! tmpfs where mounting is permitted, and always a file-size limit) gives a
//! clear error and leaves no partial file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// A Llama big enough that converting it takes a noticeable moment
/// (hidden 256, 4 layers, vocab 4096, ffn 1024: about 6.3M parameters, 25 MB of F32).
fn write_big_llama(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (h, ffn, vocab, layers, kv) = (256usize, 1024usize, 4096usize, 4usize, 128usize);
    let mut c = common::llama_config();
    c["hidden_size"] = h.into();
    c["intermediate_size"] = ffn.into();
    c["vocab_size"] = vocab.into();
    c["num_hidden_layers"] = layers.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let mut tok = common::tokenizer_json();
    let vocab_map = tok["model"]["vocab"].as_object_mut().unwrap();
    for i in vocab_map.len()..vocab {
        vocab_map.insert(format!("tok{i}"), i.into());
    }
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let t = common::llama_tensors_sized(vocab, h, kv, ffn, layers);
    common::write_safetensors(&dir.join("model.safetensors"), &t);
}

fn convert_cmd(model: &Path, out: &Path, outtype: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_laquant"));
    c.args([
        "convert",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--outtype",
        outtype,
        "--calib",
        "none",
        "--quiet",
        "--threads",
        "2",
    ]);
    c
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// xorshift: random kill points, reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn sigkill_at_random_points_leaves_nothing_and_the_next_run_succeeds() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    write_big_llama(&model);
    let outdir = d.path().join("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let target = outdir.join("m.gguf");

    // The reference: an uninterrupted run, timed.
    let reference = d.path().join("reference.gguf");
    let t0 = Instant::now();
    let o = convert_cmd(&model, &reference, "q8_0").output().unwrap();
    let full = t0.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = std::fs::read(&reference).unwrap();

    let seed = std::env::var("LAQUANT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill points from LAQUANT_KILL_SEED={seed}; uninterrupted run {full:?}");
    let mut rng = Rng(seed);
    let mut killed = 0;
    let mut killed_with_temp = 0;
    // The span kill points are drawn from: halved whenever a run finishes
    // first (the timed run may have been slower than the others, on a cold
    // cache or a loaded machine), so that most rounds still kill mid-run.
    let mut span = full;
    for round in 0..20 {
        if killed >= 5 {
            break;
        }
        let at = span.mul_f64(0.05 + 0.9 * rng.next_f64());
        let mut child = convert_cmd(&model, &target, "q8_0")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        // Child::kill sends SIGKILL on Unix: no destructor, no cleanup runs.
        let _ = child.kill();
        let status = child.wait().unwrap();
        // It finished first, or was killed between the rename and its exit:
        // either way the file under the final name must be complete; start over.
        if status.success() || target.exists() {
            assert_eq!(std::fs::read(&target).unwrap(), want, "round {round}");
            std::fs::remove_file(&target).unwrap();
            span = span.mul_f64(0.5);
            continue;
        }
        killed += 1;
        assert!(
            !target.exists(),
            "round {round}: killed after {at:?}, yet {} exists",
            target.display()
        );
        let left = files_in(&outdir);
        assert!(
            left.iter()
                .all(|f| f.starts_with(".m.gguf.laquant-") && f.ends_with(".tmp")),
            "round {round}: unexpected files {left:?}"
        );
        if !left.is_empty() {
            killed_with_temp += 1;
        }
    }
    assert!(
        killed >= 3,
        "only {killed} runs were killed before finishing (uninterrupted run {full:?})"
    );
    eprintln!("{killed} runs killed, {killed_with_temp} of them mid-write");

    // The next run succeeds, writes the reference bytes and removes the dead runs' temp files.
    let o = convert_cmd(&model, &target, "q8_0").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&target).unwrap() == want,
        "the run after the kills differs from the uninterrupted run"
    );
    assert_eq!(files_in(&outdir), vec!["m.gguf".to_string()]);
}

/// Checks a conversion that runs out of space: exit 1, a clear message naming
/// the output, nothing left in `dir`.
fn assert_clean_failure(o: &std::process::Output, dir: &Path, fragments: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for f in fragments {
        assert!(err.contains(f), "stderr lacks {f:?}: {err}");
    }
    let left = files_in(dir);
    assert!(left.is_empty(), "partial files left: {left:?}");
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_gives_a_clear_error_and_no_partial_file() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    let mnt = d.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    // 64 KiB: the F32 output of the tiny Llama (about 350 KB) does not fit.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root); the file-size-limit test covers write errors");
        return;
    }
    let _guard = Mount(mnt.clone());
    let out = mnt.join("x.gguf");
    let o = convert_cmd(&model, &out, "f32").output().unwrap();
    // The error names the target, not the temporary file beside it.
    let target = format!("{}: ", out.display());
    assert_clean_failure(&o, &mnt, &[&target, "No space left on device"]);
    // With room, the same conversion succeeds.
    let roomy = d.path().join("x.gguf");
    let o = convert_cmd(&model, &roomy, "f32").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn write_error_mid_file_gives_a_clear_error_and_no_partial_file() {
    // RLIMIT_FSIZE (ulimit -f, in 1 KiB blocks for bash, 512 B for POSIX sh) makes
    // writes past the limit fail with EFBIG once SIGXFSZ is ignored: an injected
    // write error that needs no privileges.
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    common::write_llama(&model);
    let outdir = d.path().join("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("x.gguf");
    let o = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 64 && exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_laquant"))
        .args([
            "convert",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--outtype",
            "f32",
            "--calib",
            "none",
            "--quiet",
        ])
        .output()
        .unwrap();
    // The error names the target, not the temporary file beside it.
    let target = format!("{}: ", out.display());
    assert_clean_failure(&o, &outdir, &[&target, "too large"]);
}
