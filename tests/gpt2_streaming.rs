//! Opening a GPT-2 checkpoint holds none of its weights: its Conv1D weights
//! (stored `[in, out]`) are transposed each time one is read, one tensor at a
//! time, so what a run holds does not grow with the model. Counted by the
//! global allocator, not timed or sampled from RSS: the one test of its own
//! binary, so nothing else allocates meanwhile.

use laquant::hf::Checkpoint;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::borrow::Cow;
use std::path::Path;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn open_holds_no_weights_and_a_read_holds_its_own_tensor() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gpt2");
    let region = Region::new(GLOBAL);
    let ck = Checkpoint::open(dir.to_str().unwrap()).unwrap();
    let opened = region.change();

    let file = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    let mut conv1d = Vec::new();
    for name in ck.tensor_names() {
        // The map is read as stored: every tensor's bytes are the file's.
        let e = ck.shards.entry(&name).unwrap();
        assert_eq!(ck.shards.raw(e), st.tensor(&name).unwrap().data(), "{name}");
        if ck.stored_transposed(&name) {
            conv1d.push((name, ck.shards.raw(e).len()));
        }
    }
    assert_eq!(conv1d.len(), 8, "four Conv1D weights in each of 2 layers");
    let total: usize = conv1d.iter().map(|(_, n)| n).sum();
    let smallest = conv1d.iter().map(|&(_, n)| n).min().unwrap();
    // config.json and the safetensors header: a few kB, not the weights.
    assert!(
        opened.bytes_allocated < smallest,
        "opening allocated {} bytes; the Conv1D weights are {total} bytes, the smallest {smallest}",
        opened.bytes_allocated
    );

    // A read holds its own tensor transposed, and nothing more.
    for (name, bytes) in &conv1d {
        let region = Region::new(GLOBAL);
        let read = ck.tensor_bytes(name).unwrap();
        let held = region.change().bytes_allocated;
        assert!(matches!(read, Cow::Owned(_)), "{name}");
        assert_eq!(read.len(), *bytes, "{name}");
        assert!(
            (*bytes..bytes + 4096).contains(&held),
            "{name}: reading its {bytes} bytes allocated {held}"
        );
    }
}
