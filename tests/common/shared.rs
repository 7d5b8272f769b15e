//! The data CI keeps beside the checkout (`../shared/`: the real polyglot-25m
//! model, the calibration and evaluation corpora), which a clone does not have.
//!
//! A test that needs it asks [`shared_data`] and returns when it gets `None`:
//!
//! ```ignore
//! let Some(model) = common::shared_data("models/polyglot-25m") else { return };
//! ```
//!
//! Away from CI the test is then skipped with its reason printed. Under CI
//! (`CI=true`, which `.ci/run` exports) a missing folder fails the test instead,
//! so CI never skips one silently.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether the tests run under CI: `CI` set to anything but empty, `0` or `false`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// `../shared/<rel>` beside the checkout when it exists. When it does not: under
/// CI a panic naming it; elsewhere `None`, with the skip printed to the terminal.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel);
    if path.exists() {
        return Some(path);
    }
    assert!(
        !under_ci(),
        "{} is missing: under CI (CI=true) the shared model and corpus must sit beside the checkout",
        path.display()
    );
    // Straight to the terminal: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {} not found (the shared model and corpus sit beside the checkout in CI; \
         see docs/verification.md)",
        path.display()
    );
    None
}
