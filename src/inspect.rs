//! `laquant inspect`: a GGUF file's metadata and tensor table, as text or JSON.

use crate::gguf::GgufFile;
use serde_json::json;
use std::fmt::Write;

/// The file as JSON: metadata (long arrays shortened) and tensors.
pub fn to_json(f: &GgufFile) -> serde_json::Value {
    let meta: serde_json::Map<String, serde_json::Value> = f
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json(16)))
        .collect();
    let tensors: Vec<serde_json::Value> = f
        .tensors
        .iter()
        .map(|t| json!({"name": t.name, "dims": t.dims, "type": t.ty.name(), "offset": t.offset, "bytes": t.n_bytes}))
        .collect();
    let params: u64 = f.tensors.iter().map(|t| t.n_elements()).sum();
    let bytes: u64 = f.tensors.iter().map(|t| t.n_bytes).sum();
    json!({
        "file": f.path, "version": f.version, "alignment": f.alignment, "data_offset": f.data_offset,
        "metadata": meta, "tensors": tensors, "n_params": params, "tensor_bytes": bytes,
        "bits_per_weight": if params > 0 { bytes as f64 * 8.0 / params as f64 } else { 0.0 },
    })
}

/// The file as a human-readable report.
pub fn to_text(f: &GgufFile) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: GGUF v{}, {} metadata keys, {} tensors",
        f.path.display(),
        f.version,
        f.metadata.len(),
        f.tensors.len()
    );
    for (k, v) in &f.metadata {
        let _ = writeln!(s, "  {k:<48} {v}");
    }
    let _ = writeln!(
        s,
        "\n  {:<40} {:>8} {:<24} {:>12}",
        "tensor", "type", "dims", "bytes"
    );
    for t in &f.tensors {
        let dims = format!("{:?}", t.dims);
        let _ = writeln!(
            s,
            "  {:<40} {:>8} {:<24} {:>12}",
            t.name,
            t.ty.name(),
            dims,
            t.n_bytes
        );
    }
    let params: u64 = f.tensors.iter().map(|t| t.n_elements()).sum();
    let bytes: u64 = f.tensors.iter().map(|t| t.n_bytes).sum();
    if params > 0 {
        let _ = writeln!(
            s,
            "\n  {params} parameters, {bytes} bytes of tensor data, {:.3} bits per weight",
            bytes as f64 * 8.0 / params as f64
        );
    }
    s
}
