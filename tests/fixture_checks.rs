//! `fixtures/checks.txt`, the one fixture list `.ci/run` and the interop scripts read (through
//! `scripts/fixtures.sh`), against the fixtures and the family registry: every fixture folder listed
//! once, every listed fixture a folder, every check one the scripts know, every family of
//! [`laquant::arch::ARCHS`] with a fixture of its class, and every family of the registry in README's
//! architecture tables. Adding a family is then its spec file, its registry line, its fixture and its
//! line here (and README's row); a family without them fails this test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The checks `scripts/fixtures.sh` knows (its `CHECKS`).
const CHECKS: &[&str] = &[
    "presets",
    "presets-own-imatrix",
    "logits",
    "imatrix",
    "eval",
    "ollama",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The list's fixtures and their checks, in file order.
fn listed() -> Vec<(String, Vec<String>)> {
    let path = root().join("fixtures/checks.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut w = l.split_whitespace().map(str::to_string);
            let fx = w.next().unwrap();
            (fx, w.filter(|c| c != "-").collect())
        })
        .collect()
}

/// `architectures[0]` of a fixture's config.json.
fn hf_class(dir: &Path) -> String {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["architectures"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_fixture_is_listed_once_with_known_checks() {
    let mut seen = BTreeMap::new();
    for (fx, checks) in listed() {
        assert!(
            root()
                .join("fixtures")
                .join(&fx)
                .join("config.json")
                .is_file(),
            "fixtures/checks.txt lists {fx}, which is not a fixture folder with a config.json"
        );
        for c in &checks {
            assert!(
                CHECKS.contains(&c.as_str()),
                "fixtures/checks.txt: {fx}: unknown check {c}"
            );
        }
        assert!(
            seen.insert(fx.clone(), checks).is_none(),
            "fixtures/checks.txt lists {fx} twice"
        );
    }
    for e in std::fs::read_dir(root().join("fixtures")).unwrap() {
        let dir = e.unwrap().path();
        if dir.join("config.json").is_file() {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                seen.contains_key(&name),
                "fixtures/{name} is not in fixtures/checks.txt (one line: its name and the checks CI runs on it)"
            );
        }
    }
}

#[test]
fn every_family_has_a_fixture_and_a_readme_row() {
    let classes: Vec<String> = listed()
        .iter()
        .map(|(fx, _)| hf_class(&root().join("fixtures").join(fx)))
        .collect();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for spec in laquant::arch::ARCHS {
        assert!(
            spec.hf_classes
                .iter()
                .any(|c| classes.iter().any(|f| f == c)),
            "no fixture in fixtures/checks.txt converts with the {} spec ({:?})",
            spec.gguf_arch,
            spec.hf_classes
        );
        let row = format!("| `{}`", spec.hf_classes[0]);
        assert!(
            readme.lines().any(|l| l.starts_with(&row)),
            "README.md's architecture tables have no row starting with {row}"
        );
    }
}

/// Every listed fixture has its row in fixtures/README.md's table and is a complete, small HF folder:
/// config.json, tokenizer.json and tokenizer_config.json present, a safetensors file, under 5 MB in all
/// (so the default test run and the repository stay small).
#[test]
fn every_fixture_is_described_complete_and_small() {
    let path = root().join("fixtures/README.md");
    let readme =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (fx, _) in listed() {
        let row = format!("| {fx} |");
        assert!(
            readme.lines().any(|l| l.starts_with(&row)),
            "fixtures/README.md's table has no row starting with {row}"
        );
        let dir = root().join("fixtures").join(&fx);
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            assert!(dir.join(f).is_file(), "fixtures/{fx}: {f} missing");
        }
        let mut total = 0;
        let mut safetensors = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            total += e.metadata().unwrap().len();
            safetensors += usize::from(e.path().extension().is_some_and(|x| x == "safetensors"));
        }
        assert!(safetensors > 0, "fixtures/{fx}: no safetensors file");
        assert!(total < 5_000_000, "fixtures/{fx}: {total} bytes, over 5 MB");
    }
}
