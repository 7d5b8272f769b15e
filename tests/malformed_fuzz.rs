//! The fuzz targets' bodies (fuzz/fuzz_targets/bodies.rs) on stable Rust, in
//! the default test suite: every committed seed (fuzz/seeds/<target>/), every
//! crash input saved as a regression (fuzz/regressions/<target>/), and a
//! deterministic smoke of mutations of the seeds (bit flips, truncations,
//! boundary integers, spliced bytes). The long runs are libFuzzer's
//! (scripts/fuzz.sh); this keeps found crashes fixed and catches gross
//! regressions on every `cargo test`.

#[path = "../fuzz/fuzz_targets/bodies.rs"]
mod bodies;

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, Vec<u8>)> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

/// Runs one input; on a panic, saves it where `scripts/fuzz.sh` users look and fails naming it.
fn run(target: &str, body: fn(&[u8]), what: &str, data: &[u8]) {
    let r = std::panic::catch_unwind(|| body(data));
    if r.is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{target}-{}", what.replace('/', "_")));
        std::fs::write(&p, data).unwrap();
        panic!(
            "fuzz target {target} panicked on {what} (input saved to {})",
            p.display()
        );
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const BOUNDARY: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
];

/// One mutation of `seed`, libFuzzer-style.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let n = b.len();
        match rng.below(7) {
            0 if n > 0 => {
                let i = rng.below(n);
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(n + 1)),
            2 if n > 0 => {
                // A boundary integer at a random offset, 1 to 8 bytes wide.
                let v = BOUNDARY[rng.below(BOUNDARY.len())].to_le_bytes();
                let i = rng.below(n);
                let w = [1, 2, 4, 8][rng.below(4)].min(n - i);
                b[i..i + w].copy_from_slice(&v[..w]);
            }
            3 if n > 0 => {
                let i = rng.below(n);
                b[i] = [0u8, 0xff, b'"', b'{', b'[', b'-', b'9', b'\\'][rng.below(8)];
            }
            4 if n > 0 => {
                // Duplicate a chunk of the input in place.
                let i = rng.below(n);
                let len = rng.below((n - i).min(64)) + 1;
                let chunk = b[i..i + len].to_vec();
                let at = rng.below(n + 1);
                b.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                // Splice in a chunk of another seed.
                let i = rng.below(other.len());
                let len = rng.below((other.len() - i).min(64)) + 1;
                let at = rng.below(n + 1);
                b.splice(at..at, other[i..i + len].iter().copied());
            }
            _ if n > 0 => {
                let i = rng.below(n);
                b.remove(i);
            }
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

#[test]
fn fuzz_bodies_on_seeds_regressions_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let per_target: usize = std::env::var("LAQUANT_FUZZ_SMOKE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10000);
    for &(target, body) in bodies::TARGETS {
        let seeds = inputs(&root.join("seeds").join(target));
        assert!(
            !seeds.is_empty(),
            "{target}: no seeds in fuzz/seeds/{target}"
        );
        for (p, b) in &seeds {
            run(target, body, &format!("seed {}", p.display()), b);
        }
        for (p, b) in inputs(&root.join("regressions").join(target)) {
            run(target, body, &format!("regression {}", p.display()), &b);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
        for i in 0..per_target {
            let s = &seeds[i % seeds.len()].1;
            let o = &seeds[rng.below(seeds.len())].1;
            let m = mutate(&mut rng, s, o);
            run(target, body, &format!("mutation {i}"), &m);
        }
    }
    bodies::cleanup();
}
