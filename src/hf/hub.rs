//! Resolves MODEL: a local folder, or a hub id `org/name` found in the local
//! Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`,
//! layout `models--org--name/snapshots/<revision>`). Nothing is downloaded.
//! The revision named by `refs/main` is used only if it is a plain folder name
//! (a commit hash in practice): the file is data, not a path to follow.

use super::HfError;
use std::path::{Path, PathBuf};

/// The hub cache folders to search, in precedence order.
pub fn cache_roots() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        v.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        v.push(PathBuf::from(p).join("hub"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".cache/huggingface/hub"));
    }
    v
}

fn looks_like_hub_id(model: &str) -> bool {
    let parts: Vec<&str> = model.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Whether `rev` (from `refs/main`) can name a folder of `snapshots/`: a
/// commit hash, or at least one path component (no `/`, `\`, `.`, `..`, NUL or
/// other control characters).
fn valid_revision(rev: &str) -> bool {
    !rev.is_empty()
        && rev != "."
        && rev != ".."
        && rev
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `refs/main` holds a commit hash (40 hex digits and a newline).
const REFS_BYTES: u64 = 4096;

/// Finds the snapshot folder of `org/name` under one cache root.
fn snapshot_in(root: &Path, id: &str) -> Result<Option<PathBuf>, HfError> {
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    let snaps = repo.join("snapshots");
    let refs = repo.join("refs/main");
    let rev = match super::read_capped(&refs, REFS_BYTES) {
        Ok(rev) => Some(rev),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(HfError::File {
                path: refs,
                what: format!("cannot read: {e}"),
            })
        }
    };
    if let Some(rev) = rev {
        let rev = String::from_utf8_lossy(&rev);
        let rev = rev.trim();
        if !valid_revision(rev) {
            return Err(HfError::File {
                path: refs,
                what: format!(
                    "holds {:?}, which is not a revision: expected a commit hash naming a \
                     folder of {} (fix or delete refs/main)",
                    rev.chars().take(80).collect::<String>(),
                    snaps.display()
                ),
            });
        }
        let p = snaps.join(rev);
        if p.is_dir() {
            return Ok(Some(p));
        }
        // Another snapshot would be another revision of the model: refuse.
        return Err(HfError::File {
            path: refs,
            what: format!(
                "names revision {rev}, but {} does not exist (an interrupted download?); \
                 download that revision again, or fix or delete refs/main",
                p.display()
            ),
        });
    }
    // Otherwise the most recently modified snapshot.
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    let Ok(rd) = std::fs::read_dir(&snaps) else {
        return Ok(None);
    };
    for e in rd.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        let t = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
            best = Some((t, p));
        }
    }
    Ok(best.map(|b| b.1))
}

/// Resolves MODEL to a folder holding `config.json`.
pub fn resolve(model: &str) -> Result<PathBuf, HfError> {
    let p = Path::new(model);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        // `convert`, `plan` and `eval` take a GGUF file before they get here.
        let what = if crate::gguf_input::is_gguf(model) {
            "is a GGUF file, which only `convert`, `plan` and `eval` read; \
             here MODEL is a checkpoint folder or a hub id `org/name`"
        } else {
            "is neither a folder nor a GGUF file (it does not begin with `GGUF`); MODEL is a \
             checkpoint folder, a hub id `org/name` or, for `convert`, `plan` and `eval`, a GGUF file"
        };
        return Err(HfError::File {
            path: p.into(),
            what: what.into(),
        });
    }
    if looks_like_hub_id(model) {
        let roots = cache_roots();
        for r in &roots {
            if let Some(s) = snapshot_in(r, model)? {
                return Ok(s);
            }
        }
        return Err(HfError::NotFound(format!(
            "`{model}` is not a folder and is not in the local Hugging Face cache (searched {}); \
             download it first, e.g. `huggingface-cli download {model}`",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Err(HfError::NotFound(format!(
        "`{model}`: no such folder or file"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_id_shape() {
        assert!(looks_like_hub_id("HuggingFaceTB/SmolLM2-135M"));
        assert!(!looks_like_hub_id("../x/y"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("noslash"));
    }

    #[test]
    fn finds_snapshot_by_ref() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("models--org--m");
        std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/old")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc\n").unwrap();
        assert_eq!(
            snapshot_in(d.path(), "org/m").unwrap().unwrap(),
            repo.join("snapshots/abc")
        );
        assert!(snapshot_in(d.path(), "org/other").unwrap().is_none());
    }

    #[test]
    fn refs_main_is_a_revision_not_a_path() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("models--org--m");
        std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        // A folder outside the snapshots that refs/main must not lead to.
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        for bad in [
            "../../outside",
            "..",
            ".",
            "abc/../../../outside",
            "/etc",
            "ab\0c",
            "",
            "a\\b",
        ] {
            std::fs::write(repo.join("refs/main"), bad).unwrap();
            let e = snapshot_in(d.path(), "org/m").unwrap_err().to_string();
            assert!(
                e.contains("refs/main") && e.contains("not a revision"),
                "{bad:?}: {e}"
            );
        }
        // A hash, with the newline the hub writes, is fine.
        std::fs::rename(
            repo.join("snapshots/abc"),
            repo.join("snapshots/0123abcdef"),
        )
        .unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcdef\n").unwrap();
        assert_eq!(
            snapshot_in(d.path(), "org/m").unwrap().unwrap(),
            repo.join("snapshots/0123abcdef")
        );
    }
}
