//! The resume state of `laquant batch`: one JSON file per shard
//! (`state.json`, or `state-I-of-N.json` with `--shard I/N`) in the output
//! root, recording every finished output with its size, modification time,
//! BLAKE3 hash and the fingerprints of its input checkpoint and options. A
//! rerun skips an output whose record matches (fingerprints equal, file of the
//! recorded size and time, or of the recorded hash when the time differs or
//! `--verify` is given) and redoes the others. The file is replaced atomically
//! after every finished output, so a kill loses at most the output in flight.
//! With `--eval`, a record also keeps the output's quality and the fingerprint
//! of the evaluation settings that produced it.

use super::quality::Quality;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

const VERSION: u32 = 1;

/// A finished output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub bytes: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: u128,
    pub blake3: String,
    /// Fingerprint of the checkpoint's files.
    pub input: String,
    /// Fingerprint of the output's options (type, overrides, importance source, laquant version).
    pub options: String,
    pub outtype: String,
    pub n_params: u64,
    pub bits_per_weight: f64,
    pub seconds: f64,
    /// The output's evaluation (`--eval`), if it was scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalRecord>,
}

/// A finished evaluation of an output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Fingerprint of the evaluation settings ([`super::quality::fingerprint`]).
    pub settings: String,
    pub quality: Quality,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    shard: Option<String>,
    /// Keyed by the output's path relative to the output root (`name/name-TYPE.gguf`).
    outputs: BTreeMap<String, Record>,
}

/// The state of one shard, plus the records of the other state files in the
/// same folder (read-only: a finished output is finished whichever run made it).
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    shard: Option<String>,
    own: BTreeMap<String, Record>,
    others: BTreeMap<String, Record>,
}

/// The state file name for a shard.
pub fn file_name(shard: Option<(usize, usize)>) -> String {
    match shard {
        Some((i, n)) => format!("state-{i}-of-{n}.json"),
        None => "state.json".into(),
    }
}

/// A state file that cannot be used (the batch stops before converting).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file cannot be read.
    #[error("{}", path.display())]
    Read {
        /// The state file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a state file this laquant wrote.
    #[error("{}: not a laquant batch state file; move it away to start over", path.display())]
    NotState {
        /// The state file.
        path: PathBuf,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// The file is of another state version.
    #[error("{}: state version {found} (this laquant writes {VERSION}); move it away to start over", path.display())]
    Version {
        /// The state file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

fn read(path: &Path) -> Result<StateFile, StateError> {
    let bytes = crate::hf::read_capped(path, crate::hf::limits::INDEX_BYTES).map_err(|source| {
        StateError::Read {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let s: StateFile = serde_json::from_slice(&bytes).map_err(|source| StateError::NotState {
        path: path.to_path_buf(),
        source,
    })?;
    if s.version != VERSION {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: s.version,
        });
    }
    Ok(s)
}

impl State {
    /// Loads this shard's state (empty if none) and the other shards' records.
    pub fn load(root: &Path, shard: Option<(usize, usize)>) -> Result<State, StateError> {
        let name = file_name(shard);
        let path = root.join(&name);
        let own = if path.exists() {
            read(&path)?.outputs
        } else {
            BTreeMap::new()
        };
        let mut others = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(root) {
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with("state") && n.ends_with(".json") && *n != name
                    })
                })
                .collect();
            files.sort();
            for f in files {
                // Another shard's file is a hint only: skip one we cannot read.
                if let Ok(s) = read(&f) {
                    others.extend(s.outputs);
                }
            }
        }
        Ok(State {
            path,
            shard: shard.map(|(i, n)| format!("{i}/{n}")),
            own,
            others,
        })
    }

    /// The record of an output, this shard's first.
    pub fn get(&self, key: &str) -> Option<&Record> {
        self.own.get(key).or_else(|| self.others.get(key))
    }

    /// This shard's own record of an output.
    pub fn own(&self, key: &str) -> Option<&Record> {
        self.own.get(key)
    }

    /// Records a finished output and rewrites the state file atomically.
    pub fn finish(&mut self, key: String, rec: Record) -> std::io::Result<()> {
        self.own.insert(key, rec);
        self.save()
    }

    /// Adds an evaluation to this shard's record of an output and rewrites the
    /// state file (nothing happens when the output has no record of its own).
    pub fn set_eval(&mut self, key: &str, eval: EvalRecord) -> std::io::Result<()> {
        match self.own.get_mut(key) {
            Some(r) => {
                r.eval = Some(eval);
                self.save()
            }
            None => Ok(()),
        }
    }

    /// Forgets an output (it is being redone).
    pub fn forget(&mut self, key: &str) -> std::io::Result<()> {
        if self.own.remove(key).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> std::io::Result<()> {
        let s = StateFile {
            version: VERSION,
            shard: self.shard.clone(),
            outputs: self.own.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&s).map_err(std::io::Error::other)?;
        write_atomic(&self.path, &bytes)
    }
}

/// Writes a small file through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::outputs::write(path, bytes, true)
}

/// An output file's size and modification time.
pub fn stat(path: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(path).ok()?;
    let t = m.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some((m.len(), t.as_nanos()))
}

/// BLAKE3 of a file, memory-mapped and hashed on the current rayon pool.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path)?;
    Ok(h.finalize().to_hex().to_string())
}

/// Why an output must be (re)done, or `None` if its record still matches.
pub fn check(
    rec: Option<&Record>,
    path: &Path,
    input: &str,
    options: &str,
    verify: bool,
) -> Option<String> {
    let Some(rec) = rec else {
        return Some("new".into());
    };
    if rec.input != input {
        return Some("input checkpoint changed".into());
    }
    if rec.options != options {
        return Some("options changed".into());
    }
    let Some((bytes, mtime)) = stat(path) else {
        return Some("output missing".into());
    };
    if bytes != rec.bytes {
        return Some(format!(
            "output is {bytes} bytes, {} were written",
            rec.bytes
        ));
    }
    if verify || mtime != rec.mtime_ns {
        match hash_file(path) {
            Ok(h) if h == rec.blake3 => {}
            Ok(_) => return Some("output content changed (hash)".into()),
            Err(e) => return Some(format!("cannot hash output: {e}")),
        }
    }
    None
}

/// A fingerprint of a checkpoint folder: every file's name, size and
/// modification time (not contents: hashing tens of GB on every run would cost
/// more than it saves). Hub snapshots are symlinks to blobs; the blobs' times count.
pub fn input_fingerprint(dir: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    h.update(canon.to_string_lossy().as_bytes());
    fingerprint_dir(dir, &mut h)?;
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// Whether `name` is one of the files `batch` keeps in its output root: the
/// state (`state.json`, `state-I-of-N.json`) and the summary (`summary.json`,
/// `summary.md`, `summary-I-of-N.*`). A model may not be named so, and a model
/// folder that is also the output root does not count them as input.
pub fn is_bookkeeping(name: &str) -> bool {
    let sharded = |stem: &str, rest: &str| {
        rest.strip_prefix(stem)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.split_once("-of-"))
            .is_some_and(|(i, n)| {
                [i, n]
                    .iter()
                    .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
            })
    };
    match name.rsplit_once('.') {
        Some((stem, "json")) => {
            ["state", "summary"].contains(&stem)
                || sharded("state", stem)
                || sharded("summary", stem)
        }
        Some((stem, "md")) => stem == "summary" || sharded("summary", stem),
        _ => false,
    }
}

/// Adds every regular file of `dir` (name, size, time) to `h`, sorted by name;
/// `batch`'s own files ([`is_bookkeeping`]) and hidden files (temporary files
/// being written) are left out, so a model folder used as the output root
/// keeps its fingerprint.
pub fn fingerprint_dir(dir: &Path, h: &mut blake3::Hasher) -> std::io::Result<()> {
    let rd = std::fs::read_dir(dir)?;
    let mut files: Vec<(String, u64, u128)> = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || is_bookkeeping(&name) {
            continue;
        }
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() {
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                files.push((e.file_name().to_string_lossy().into_owned(), m.len(), t));
            }
        }
    }
    files.sort();
    for (n, len, t) in files {
        h.update(format!("\0{n}\0{len}\0{t}").as_bytes());
    }
    Ok(())
}

/// A short hex fingerprint of a string.
pub fn fingerprint(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_names() {
        for n in [
            "state.json",
            "state-0-of-4.json",
            "summary.json",
            "summary.md",
            "summary-12-of-16.md",
        ] {
            assert!(is_bookkeeping(n), "{n}");
        }
        for n in [
            "state",
            "state.md",
            "summary-x-of-2.json",
            "config.json",
            "my-summary.md",
        ] {
            assert!(!is_bookkeeping(n), "{n}");
        }
    }

    fn rec(path: &Path) -> Record {
        let (bytes, mtime_ns) = stat(path).unwrap();
        Record {
            bytes,
            mtime_ns,
            blake3: hash_file(path).unwrap(),
            input: "in".into(),
            options: "opt".into(),
            outtype: "Q8_0".into(),
            n_params: 1,
            bits_per_weight: 8.5,
            seconds: 0.1,
            eval: None,
        }
    }

    #[test]
    fn records_survive_reload_and_shards_see_each_other() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.gguf");
        std::fs::write(&f, b"hello").unwrap();
        let mut s0 = State::load(d.path(), Some((0, 2))).unwrap();
        assert!(s0.get("a.gguf").is_none());
        s0.finish("a.gguf".into(), rec(&f)).unwrap();
        assert!(d.path().join("state-0-of-2.json").exists());
        let s1 = State::load(d.path(), Some((1, 2))).unwrap();
        assert_eq!(s1.get("a.gguf"), Some(&rec(&f)));
        let s = State::load(d.path(), None).unwrap();
        assert!(s.get("a.gguf").is_some());
        // Only the temp-free state file remains.
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn check_says_why_an_output_is_redone() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.gguf");
        std::fs::write(&f, b"hello").unwrap();
        let r = rec(&f);
        assert_eq!(check(Some(&r), &f, "in", "opt", false), None);
        assert_eq!(check(Some(&r), &f, "in", "opt", true), None);
        assert_eq!(check(None, &f, "in", "opt", false).unwrap(), "new");
        assert!(check(Some(&r), &f, "in2", "opt", false)
            .unwrap()
            .contains("input"));
        assert!(check(Some(&r), &f, "in", "opt2", false)
            .unwrap()
            .contains("options"));
        // Same size, new content: the time differs, so the hash is checked.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"jello").unwrap();
        assert!(check(Some(&r), &f, "in", "opt", false)
            .unwrap()
            .contains("hash"));
        std::fs::write(&f, b"hello!").unwrap();
        assert!(check(Some(&r), &f, "in", "opt", false)
            .unwrap()
            .contains("bytes"));
        std::fs::remove_file(&f).unwrap();
        assert!(check(Some(&r), &f, "in", "opt", false)
            .unwrap()
            .contains("missing"));
    }

    #[test]
    fn corrupt_state_is_an_error_that_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("state.json"), b"{not json").unwrap();
        let e = State::load(d.path(), None).unwrap_err();
        assert!(matches!(e, StateError::NotState { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("state.json") && e.contains("move it away"),
            "{e}"
        );
    }

    #[test]
    fn input_fingerprint_follows_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), b"{}").unwrap();
        let a = input_fingerprint(d.path()).unwrap();
        assert_eq!(a, input_fingerprint(d.path()).unwrap());
        std::fs::write(d.path().join("model.safetensors"), b"x").unwrap();
        assert_ne!(a, input_fingerprint(d.path()).unwrap());
    }
}
