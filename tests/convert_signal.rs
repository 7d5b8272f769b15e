//! Ctrl-C and SIGTERM during a conversion (issue 5): the process removes its
//! temporary file itself and exits with 130, leaving nothing at the target and
//! nothing beside it; a run after that succeeds.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A Llama large enough that converting it to Q4_K_M on one thread takes a
/// moment (hidden 512, ffn 1536, 4 layers: 13.6M parameters, 55 MB of F32).
fn write_slow_llama(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (h, ffn, layers, kv) = (512usize, 1536usize, 4usize, 256usize);
    let mut c = common::llama_config();
    c["hidden_size"] = h.into();
    c["intermediate_size"] = ffn.into();
    c["num_hidden_layers"] = layers.into();
    c["num_attention_heads"] = 8.into();
    c["num_key_value_heads"] = 4.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        common::tokenizer_json().to_string(),
    )
    .unwrap();
    let t = common::llama_tensors_sized(96, h, kv, ffn, layers);
    common::write_safetensors(&dir.join("model.safetensors"), &t);
}

fn convert(model: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_laquant"));
    c.args(["--threads", "1", "-q", "convert"])
        .arg(model)
        .arg("-o")
        .arg(out)
        .args(["--outtype", "q4_k_m"]);
    c
}

fn kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Starts a conversion, waits for its temporary file, freezes it (SIGSTOP), sends
/// `sig`, and resumes it: the signal is handled in the middle of the tensors.
/// Returns the exit code, or None when the conversion won the race and finished.
fn interrupt(model: &Path, out: &Path, sig: &str) -> Option<i32> {
    let mut child = convert(model, out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = out.parent().unwrap();
    let t0 = Instant::now();
    let has_tmp = || {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
    };
    while !has_tmp() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("conversion ended ({st}) before its temporary file was seen");
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no temporary file");
        std::thread::sleep(Duration::from_micros(200));
    }
    kill(child.id(), "-STOP");
    kill(child.id(), sig);
    kill(child.id(), "-CONT");
    let out = child.wait_with_output().unwrap();
    match out.status.code() {
        Some(0) => None,
        Some(c) => {
            if c == 130 {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("interrupted"), "{err}");
            }
            Some(c)
        }
        None => panic!(
            "killed by a signal instead of handling it: {:?}",
            out.status
        ),
    }
}

#[test]
fn sigint_and_sigterm_leave_no_partial_file() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    write_slow_llama(&model);
    let outdir = d.path().join("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("m.gguf");
    let mut interrupted = 0;
    for sig in ["-INT", "-TERM", "-INT"] {
        match interrupt(&model, &out, sig) {
            Some(code) => {
                assert_eq!(code, 130, "{sig}");
                interrupted += 1;
                let left: Vec<_> = std::fs::read_dir(&outdir).unwrap().flatten().collect();
                assert!(left.is_empty(), "{sig} left {left:?}");
            }
            // Finished before the signal arrived: a complete file, which is fine; start over.
            None => std::fs::remove_file(&out).unwrap(),
        }
    }
    assert!(
        interrupted >= 2,
        "only {interrupted} of 3 runs were interrupted"
    );
    let st = convert(&model, &out).status().unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read_dir(&outdir).unwrap().count(), 1);
}
