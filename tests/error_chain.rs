//! Errors with nested causes print the whole chain: what was being done (the
//! batch job, the manifest entry), the file, and what is wrong with it, down to
//! the innermost cause (the regex parser's own message).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_laquant");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn laquant(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BIN)
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A copy of a fixture whose `model.safetensors` header is not JSON.
fn corrupt_copy(dir: &Path) -> PathBuf {
    let model = dir.join("corrupt");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(fixture("qwen2-tied")).unwrap().flatten() {
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let st = model.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    bytes[8..12].copy_from_slice(b"\xff\xfe!!");
    std::fs::write(&st, bytes).unwrap();
    model
}

#[test]
fn a_batch_job_on_a_corrupt_checkpoint_names_the_job_the_file_and_the_fault() {
    let d = tempfile::tempdir().unwrap();
    let model = corrupt_copy(d.path());
    let manifest = d.path().join("zoo.toml");
    std::fs::write(
        &manifest,
        format!(
            "types = [\"q8_0\"]\n[calib]\ncorpus = \"none\"\n[[models]]\npath = {:?}\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let out = d.path().join("out");
    let o = laquant(&[
        "batch".as_ref(),
        manifest.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("FAILED"))
        .unwrap_or_else(|| panic!("no FAILED line: {err}"));
    assert!(line.contains("corrupt Q8_0"), "the job: {line}");
    assert!(
        line.contains(&model.join("model.safetensors").display().to_string()),
        "the file: {line}"
    );
    assert!(
        line.contains("invalid safetensors header"),
        "the fault: {line}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let row_err = summary["rows"][0]["error"].as_str().unwrap();
    assert!(
        row_err.contains("model.safetensors") && row_err.contains("invalid safetensors header"),
        "{row_err}"
    );
    assert!(!out.join("corrupt").join("corrupt-Q8_0.gguf").exists());
}

#[test]
fn a_bad_regex_in_a_manifest_prints_the_entry_and_the_regex_error() {
    let d = tempfile::tempdir().unwrap();
    let manifest = d.path().join("zoo.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[models]]\npath = {:?}\nname = \"m\"\n\
             types = [{{ type = \"q4_k_m\", tensor_type = [\"attn_(=q8_0\"], label = \"x\" }}]\n",
            fixture("qwen2-tied").display().to_string()
        ),
    )
    .unwrap();
    let o = laquant(&["batch".as_ref(), manifest.as_os_str(), "--dry-run".as_ref()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // Each level: the manifest, the entry, the flag, and the regex parser's message.
    for part in [
        "zoo.toml",
        "models[0] (m): types",
        "--tensor-type attn_(=q8_0: bad regex",
        "unclosed group",
    ] {
        assert!(err.contains(part), "{part:?} missing: {err}");
    }
}

#[test]
fn a_bad_regex_on_the_command_line_prints_the_regex_error() {
    let d = tempfile::tempdir().unwrap();
    let o = laquant(&[
        "convert".as_ref(),
        fixture("qwen2-tied").as_os_str(),
        "--outtype".as_ref(),
        "q4_k_m".as_ref(),
        "--calib".as_ref(),
        "none".as_ref(),
        "--tensor-type".as_ref(),
        "attn_(=q8_0".as_ref(),
        "-o".as_ref(),
        d.path().join("x.gguf").as_os_str(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--tensor-type attn_(=q8_0: bad regex") && err.contains("unclosed group"),
        "{err}"
    );
    assert!(!d.path().join("x.gguf").exists());
}

/// `laquant CMD FILE -o OUT` on a file holding `bytes`: refused, naming the file and saying
/// `says`, writing nothing.
fn model_file_refused(cmd: &str, bytes: &[u8], says: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("model.bin");
    std::fs::write(&file, bytes).unwrap();
    let out = d.path().join("out");
    let o = laquant(&[
        cmd.as_ref(),
        file.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&file.display().to_string()), "{e}");
    for s in says {
        assert!(e.contains(s), "{s:?} not in: {e}");
    }
    assert!(!out.exists());
}

#[test]
fn a_file_that_is_not_a_gguf_given_as_model_says_what_model_can_be() {
    model_file_refused(
        "convert",
        b"not a model",
        &[
            "neither a folder nor a GGUF file",
            "or, for `convert`, `plan` and `eval`, a GGUF file",
        ],
    );
}

#[test]
fn a_gguf_given_to_a_command_that_reads_checkpoints_only_says_so() {
    // The magic is enough: the command refuses before reading further.
    model_file_refused("calibrate", b"GGUF\x03\x00\x00\x00", &["is a GGUF file"]);
}
