//! A GGUF file seen as the forward pass's [`WeightSource`]: every Hugging Face
//! tensor name is mapped to its GGUF name ([`crate::arch::map_name`]), the
//! tensor is dequantized with our kernels ([`crate::quant::dequantize`]), and
//! the transform the converter applied ([`crate::arch::Transform::invert`])
//! is undone, so the forward pass reads the file's weights in HF layout.
//!
//! [`check`] compares the file with the checkpoint before anything is loaded:
//! architecture, tensor names, shapes and types, with errors that name the
//! file and the tensor.

use super::EvalError;
use crate::arch;
use crate::calib::actquant::ActQuant;
use crate::calib::{CalibError, WeightSource};
use crate::gguf::{GgufFile, TensorInfo};
use crate::hf::{Checkpoint, Config};

/// The file's tensors by HF name.
pub struct GgufWeights<'a> {
    file: &'a GgufFile,
    cfg: &'a Config,
    /// Round matmul inputs as ggml's CPU backend does (see [`crate::calib::actquant`]).
    pub round_activations: bool,
}

impl<'a> GgufWeights<'a> {
    /// The weights of `file`, a conversion of the model `cfg` describes.
    pub fn new(file: &'a GgufFile, cfg: &'a Config) -> GgufWeights<'a> {
        GgufWeights {
            file,
            cfg,
            round_activations: true,
        }
    }

    fn lookup(&self, hf_name: &str) -> Result<(&'a TensorInfo, arch::Mapped), CalibError> {
        let m = arch::map_name(self.cfg, hf_name)
            .map_err(|e| CalibError::Weights(e.to_string()))?
            .ok_or_else(|| {
                CalibError::Weights(format!("{hf_name} has no counterpart in a GGUF file"))
            })?;
        let t = self.file.tensor(&m.gguf_name).ok_or_else(|| {
            CalibError::Weights(format!("no tensor {} (the model's {hf_name})", m.gguf_name))
        })?;
        Ok((t, m))
    }
}

/// Whether two torch-order shapes are the same tensor's: equal, or equal once
/// leading 1s are dropped (llama-quantize writes ggml's dims, without their
/// trailing 1s: Qwen2-MoE's `[n_embd, 1]` shared-expert gate as `[n_embd]`).
fn same_shape(a: &[usize], b: &[usize]) -> bool {
    let strip = |s: &[usize]| s.iter().skip_while(|&&d| d == 1).count();
    a == b || (strip(a) == strip(b) && a[a.len() - strip(a)..] == b[b.len() - strip(b)..])
}

/// GGUF dims (`ne[0]` first) in torch order.
fn torch_shape(t: &TensorInfo) -> Vec<usize> {
    t.dims.iter().rev().map(|&d| d as usize).collect()
}

impl WeightSource for GgufWeights<'_> {
    fn weight(&self, hf_name: &str) -> Result<Vec<f32>, CalibError> {
        let (t, m) = self.lookup(hf_name)?;
        let shape = torch_shape(t);
        let want = arch::expected_shape(self.cfg, &m);
        if let Some(e) = m.expert {
            // One expert of a mixture's stacked `[n_expert, rows, cols]` tensor.
            let n_expert = self.cfg.n_expert.unwrap_or(0);
            if shape.len() != 3 || shape[0] != n_expert || shape[1..] != want[..] || e >= n_expert {
                return Err(CalibError::Weights(format!(
                    "tensor {} is {shape:?} (torch order), the model's {n_expert} experts of \
                     {hf_name} need [{n_expert}, {}]",
                    t.name,
                    want.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            return self
                .file
                .tensor_rows_f32(t, e * want[0], want[0])
                .map_err(|e| CalibError::Weights(e.to_string()));
        }
        if !same_shape(&shape, &want) {
            return Err(CalibError::Weights(format!(
                "tensor {} is {shape:?} (torch order), the model's {hf_name} needs {want:?}",
                t.name
            )));
        }
        let v = self
            .file
            .tensor_f32(t)
            .map_err(|e| CalibError::Weights(e.to_string()))?;
        let cols = if want.len() > 1 { want[1] } else { 1 };
        Ok(m.transform.invert(&v, want[0], cols))
    }

    fn has_weight(&self, hf_name: &str) -> bool {
        self.lookup(hf_name).is_ok()
    }

    /// Only the rows asked, dequantized from the file, when the converter
    /// stored the rows as they are (an encoder reads its token embeddings so,
    /// once per window); else through [`Self::weight`].
    fn rows(&self, hf_name: &str, width: usize, rows: &[usize]) -> Result<Vec<f32>, CalibError> {
        let (t, m) = self.lookup(hf_name)?;
        let shape = torch_shape(t);
        if m.expert.is_some() || m.transform != arch::Transform::None || shape.len() != 2 {
            return crate::calib::forward::rows_of(&self.weight(hf_name)?, hf_name, width, rows);
        }
        if shape[1] != width {
            return Err(CalibError::Weights(format!(
                "tensor {} has rows of {}, {width} asked (the model's {hf_name})",
                t.name, shape[1]
            )));
        }
        let mut out = Vec::with_capacity(rows.len() * width);
        for &r in rows {
            if r >= shape[0] {
                return Err(CalibError::Weights(format!(
                    "row {r} of tensor {} asked, it has {}",
                    t.name, shape[0]
                )));
            }
            let row = self
                .file
                .tensor_rows_f32(t, r, 1)
                .map_err(|e| CalibError::Weights(e.to_string()))?;
            out.extend(row);
        }
        Ok(out)
    }

    /// llama.cpp rounds a matmul's input to the stored type's `vec_dot_type`.
    fn activation(&self, hf_name: &str) -> ActQuant {
        match self.lookup(hf_name) {
            Ok((t, _)) if self.round_activations => ActQuant::for_weight(t.ty),
            _ => ActQuant::F32,
        }
    }

    /// A Q4_1/Q5_1 tensor's block minima, rows as [`Self::weight`] gives them
    /// (one expert's of a stacked tensor, the converter's row order undone).
    fn block_minima(&self, hf_name: &str) -> Result<Option<Vec<f32>>, CalibError> {
        let (t, m) = self.lookup(hf_name)?;
        if !self.round_activations || crate::quant::min_offset(t.ty).is_none() {
            return Ok(None);
        }
        let want = arch::expected_shape(self.cfg, &m);
        // Rows of the last dim's width: a tensor the checkpoint stores
        // stacked (gpt-oss's `[n_expert, rows, cols]` experts) has every expert's.
        let cols = match want.len() {
            0 | 1 => 1,
            n => want[n - 1],
        };
        let rows = want.iter().product::<usize>() / cols.max(1);
        let rb = t.ty.row_bytes(cols as u64).unwrap_or(0) as usize;
        let first = m.expert.map_or(0, |e| e * rows);
        let bad = || {
            CalibError::Weights(format!(
                "tensor {}: rows {first}..{} of {cols} values asked",
                t.name,
                first + rows
            ))
        };
        let bytes = self
            .file
            .tensor_data(t)
            .get(first * rb..(first + rows) * rb)
            .ok_or_else(bad)?;
        let mins = crate::quant::block_minima(t.ty, bytes).ok_or_else(bad)?;
        let per_row = mins.len() / rows.max(1);
        Ok(match m.expert {
            Some(_) => Some(mins),
            None if m.transform.moves_rows_only() => Some(m.transform.invert(&mins, rows, per_row)),
            None => None,
        })
    }
}

/// Checks that `file` holds the checkpoint's tensors, under their GGUF names,
/// with the same shapes, in types laquant can dequantize, and nothing else
/// (besides the tensors the converter derives from the config: llama3's
/// `rope_freqs.weight`, LongRoPE's factors).
pub fn check(file: &GgufFile, ckpt: &Checkpoint) -> Result<(), EvalError> {
    let cfg = &ckpt.config;
    let path = file.path.clone();
    let model = ckpt.dir.display().to_string();
    let mismatch = |what: String| EvalError::Mismatch {
        path: path.clone(),
        model: model.clone(),
        what,
    };
    let want_arch = cfg.arch.gguf_arch;
    match file.get("general.architecture").and_then(|v| v.as_str()) {
        None => return Err(mismatch("general.architecture is missing".into())),
        Some(a) if a != want_arch => {
            return Err(mismatch(format!(
                "it is a `{a}` model, the checkpoint a `{want_arch}` one"
            )))
        }
        Some(_) => {}
    }
    let mut problems = Vec::new();
    let mut expected: std::collections::HashSet<String> = (cfg.generated_tensors().into_iter())
        .map(|g| g.0.to_string())
        .collect();
    for hf in ckpt.tensor_names() {
        let m = match arch::map_name(cfg, &hf) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => return Err(EvalError::Calib(CalibError::Weights(e.to_string()))),
        };
        expected.insert(m.gguf_name.clone());
        let Some(t) = file.tensor(&m.gguf_name) else {
            problems.push(format!(
                "tensor {} (the model's {hf}) is missing",
                m.gguf_name
            ));
            continue;
        };
        let hf_shape = ckpt.tensor_shape(&hf)?;
        let mut shape = torch_shape(t);
        if m.expert.is_some() && shape.first() == cfg.n_expert.as_ref() {
            // A mixture's stacked experts: each expert's shape.
            shape.remove(0);
        }
        if !same_shape(&shape, &hf_shape) {
            problems.push(format!(
                "tensor {} is {shape:?} (torch order), the model's {hf} is {hf_shape:?}",
                m.gguf_name
            ));
        }
    }
    for t in &file.tensors {
        if !expected.contains(&t.name) {
            problems.push(format!("tensor {} is not in the model", t.name));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        let mut what = problems.into_iter().take(5).collect::<Vec<_>>().join("; ");
        if n > 5 {
            what.push_str(&format!("; and {} more", n - 5));
        }
        return Err(mismatch(format!("{n} tensor difference(s): {what}")));
    }
    for t in &file.tensors {
        if !crate::quant::supports(t.ty) {
            return Err(EvalError::UnsupportedType {
                path: path.clone(),
                tensor: t.name.clone(),
                ty: t.ty.name().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::arch::Transform;

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        let (rows, cols) = (24, 3);
        let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        for n_head in [1, 2, 3, 6] {
            let t = Transform::PermuteHeads { n_head };
            let p = t.apply(&data, rows, cols);
            assert_ne!(p, data, "n_head {n_head}: the permutation moves rows");
            assert_eq!(t.invert(&p, rows, cols), data, "n_head {n_head}");
        }
    }
}
