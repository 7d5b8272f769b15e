//! Resolves MODEL: a local folder, or a hub id `org/name` found in the local
//! Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`,
//! layout `models--org--name/snapshots/<revision>`). Nothing is downloaded.

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

/// Finds the snapshot folder of `org/name` under one cache root.
fn snapshot_in(root: &Path, id: &str) -> Option<PathBuf> {
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    let snaps = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        let p = snaps.join(rev.trim());
        if p.is_dir() {
            return Some(p);
        }
    }
    // Otherwise the most recently modified snapshot.
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(&snaps).ok()?.flatten() {
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
    best.map(|b| b.1)
}

/// Resolves MODEL to a folder holding `config.json`.
pub fn resolve(model: &str) -> Result<PathBuf, HfError> {
    let p = Path::new(model);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        return Err(HfError::File {
            path: p.into(),
            what: "is not a folder; MODEL is a checkpoint folder or a hub id `org/name`".into(),
        });
    }
    if looks_like_hub_id(model) {
        let roots = cache_roots();
        for r in &roots {
            if let Some(s) = snapshot_in(r, model) {
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
    Err(HfError::NotFound(format!("`{model}`: no such folder")))
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
            snapshot_in(d.path(), "org/m").unwrap(),
            repo.join("snapshots/abc")
        );
        assert!(snapshot_in(d.path(), "org/other").is_none());
    }
}
