//! llama.cpp importance-matrix files: the GGUF form `llama-imatrix` writes
//! (`IMatrixCollector::save_imatrix`: `general.type = imatrix`,
//! `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`, and per
//! weight an F32 `<name>.in_sum2` of `ne0 × n_mat` and an F32 `<name>.counts` of
//! `1 × n_mat`, tensors sorted by name) and the legacy `.dat` form
//! (`save_imatrix_legacy`, read by `common_imatrix_load_legacy`). `llama-quantize`
//! uses `in_sum2 / counts` per column (legacy: `sums / ncall`).

use super::CalibError;
use crate::gguf::{GgmlType, GgufFile, GgufWriter, Metadata, TensorSpec, Value, ValueType};
use std::collections::BTreeMap;
use std::path::Path;

/// One weight's statistics: `sums` has `n_mat` rows of columns, `counts` one value per row.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// Per matrix (an expert of a stacked tensor, or the one matrix) and column, the
    /// sum of the squared input over the tokens that reached it.
    pub sums: Vec<f32>,
    /// Per matrix, how many tokens reached it.
    pub counts: Vec<f32>,
}

impl ImatrixEntry {
    /// Per column `sums / count` (1 where the count is 0, as llama-quantize does).
    pub fn mean(&self) -> Vec<f32> {
        let n_mat = self.counts.len().max(1);
        let ne0 = self.sums.len() / n_mat;
        let mut out = Vec::with_capacity(self.sums.len());
        for (m, &c) in self.counts.iter().enumerate() {
            for &s in &self.sums[m * ne0..(m + 1) * ne0] {
                out.push(if c > 0.0 { s / c } else { 1.0 });
            }
        }
        out
    }
}

/// An importance-matrix file in memory.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Imatrix {
    /// The statistics per weight, by GGUF tensor name.
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// The text it was collected on (`imatrix.datasets`).
    pub datasets: Vec<String>,
    /// Chunks processed (`imatrix.chunk_count`).
    pub chunk_count: u32,
    /// Tokens per chunk (`imatrix.chunk_size`).
    pub chunk_size: u32,
    /// Read from a legacy `.dat`: `sums` are already `mean × ncall`, `counts` hold `ncall`.
    pub legacy: bool,
}

fn err(path: &Path, what: impl std::fmt::Display) -> CalibError {
    CalibError::Imatrix(format!("{}: {what}", path.display()))
}

/// The largest imatrix file read.
pub const MAX_FILE_BYTES: u64 = 4 << 30;

impl Imatrix {
    /// The per-column mean statistic of one weight, as llama-quantize computes it.
    pub fn mean(&self, name: &str) -> Option<Vec<f32>> {
        self.entries.get(name).map(ImatrixEntry::mean)
    }

    /// The GGUF image (`save_imatrix`).
    pub fn to_gguf_bytes(&self) -> Result<Vec<u8>, CalibError> {
        let mut metadata: Metadata = vec![
            ("general.type".into(), Value::str("imatrix")),
            (
                "imatrix.datasets".into(),
                Value::strings(self.datasets.iter().cloned()),
            ),
            ("imatrix.chunk_count".into(), Value::U32(self.chunk_count)),
            ("imatrix.chunk_size".into(), Value::U32(self.chunk_size)),
        ];
        if self.datasets.is_empty() {
            metadata[1].1 = Value::Array(ValueType::String, Vec::new());
        }
        let mut specs = Vec::new();
        for (name, e) in &self.entries {
            let n_mat = e.counts.len();
            if n_mat == 0 || e.sums.is_empty() || e.sums.len() % n_mat != 0 {
                return Err(CalibError::Imatrix(format!(
                    "{name}: {} sums do not split into {n_mat} matrices",
                    e.sums.len()
                )));
            }
            let ne0 = (e.sums.len() / n_mat) as u64;
            // ggml_n_dims drops trailing 1s, so a dense weight's tensors are 1-D.
            let (d_sum, d_cnt) = if n_mat == 1 {
                (vec![ne0], vec![1])
            } else {
                (vec![ne0, n_mat as u64], vec![1, n_mat as u64])
            };
            specs.push(TensorSpec {
                name: format!("{name}.in_sum2"),
                dims: d_sum,
                ty: GgmlType::F32,
            });
            specs.push(TensorSpec {
                name: format!("{name}.counts"),
                dims: d_cnt,
                ty: GgmlType::F32,
            });
        }
        let io = |e: std::io::Error| CalibError::Imatrix(format!("writing the imatrix GGUF: {e}"));
        let mut w = GgufWriter::new(Vec::new(), &metadata, specs).map_err(io)?;
        for (name, e) in &self.entries {
            w.write_tensor(&format!("{name}.in_sum2"), &f32_bytes(&e.sums))
                .map_err(io)?;
            w.write_tensor(&format!("{name}.counts"), &f32_bytes(&e.counts))
                .map_err(io)?;
        }
        w.finish().map_err(io)
    }

    /// Writes the GGUF form atomically; an existing `path` is an error unless `force`.
    pub fn write_gguf(&self, path: &Path, force: bool) -> Result<(), CalibError> {
        write_atomic(path, &self.to_gguf_bytes()?, force)
    }

    /// The legacy `.dat` image (`save_imatrix_legacy`): per entry
    /// `(sum/count) * ncall` with `ncall = ceil(count / chunk_size)`.
    pub fn to_dat_bytes(&self) -> Vec<u8> {
        let chunk = self.chunk_size.max(1) as f64;
        let mut out = Vec::new();
        out.extend_from_slice(&(self.entries.len() as i32).to_le_bytes());
        for (name, e) in &self.entries {
            out.extend_from_slice(&(name.len() as i32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            let max_count = e.counts.iter().cloned().fold(0f32, f32::max) as f64;
            let ncall = if self.legacy {
                max_count as i32
            } else {
                (max_count / chunk).ceil() as i32
            };
            out.extend_from_slice(&ncall.to_le_bytes());
            out.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
            let vals: Vec<f32> = if self.legacy {
                e.sums.clone()
            } else {
                e.mean().iter().map(|m| m * ncall as f32).collect()
            };
            out.extend_from_slice(&f32_bytes(&vals));
        }
        out.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let ds = self.datasets.first().cloned().unwrap_or_default();
        out.extend_from_slice(&(ds.len() as i32).to_le_bytes());
        out.extend_from_slice(ds.as_bytes());
        out
    }

    /// Reads either form: GGUF when the file starts with `GGUF`, else legacy `.dat`.
    pub fn read(path: &Path) -> Result<Imatrix, CalibError> {
        // Regular files only (not /dev/zero, not a FIFO). 4 GiB is beyond any real
        // imatrix (DeepSeek-V3's, 256 experts in 58 layers, is about 1 GB).
        let bytes = crate::hf::read_capped(path, MAX_FILE_BYTES)
            .map_err(|e| err(path, format!("cannot read: {e}")))?;
        Self::from_bytes(bytes, path)
    }

    /// Parses an image; `path` only names the source in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Imatrix, CalibError> {
        if bytes.starts_with(crate::gguf::MAGIC) {
            Self::from_gguf(bytes, path)
        } else {
            Self::from_dat(&bytes, path)
        }
    }

    /// `common_imatrix_load`, GGUF branch.
    fn from_gguf(bytes: Vec<u8>, path: &Path) -> Result<Imatrix, CalibError> {
        // The reader's errors name the file already.
        let f = GgufFile::from_bytes_named(bytes, path)
            .map_err(|e| CalibError::Imatrix(e.to_string()))?;
        let mut out = Imatrix::default();
        if let Some(v) = f.get("imatrix.datasets").and_then(Value::as_array) {
            out.datasets = v
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
        }
        out.chunk_count = f
            .get("imatrix.chunk_count")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        out.chunk_size = f
            .get("imatrix.chunk_size")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        type Pair = (Option<Vec<f32>>, Option<Vec<f32>>);
        let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
        for t in &f.tensors {
            let (base, is_sum) = if let Some(b) = t.name.strip_suffix(".in_sum2") {
                (b, true)
            } else if let Some(b) = t.name.strip_suffix(".counts") {
                (b, false)
            } else {
                continue;
            };
            if t.ty != GgmlType::F32 {
                return Err(err(
                    path,
                    format!("tensor {} is {}, must be F32", t.name, t.ty),
                ));
            }
            let data = f
                .tensor_f32(t)
                .map_err(|e| CalibError::Imatrix(e.to_string()))?;
            let slot = pairs.entry(base.to_string()).or_default();
            if is_sum {
                slot.0 = Some(data);
            } else {
                slot.1 = Some(data);
            }
        }
        if pairs.is_empty() {
            return Err(err(
                path,
                "no <weight>.in_sum2 / <weight>.counts tensors: not an imatrix file",
            ));
        }
        for (name, (sums, counts)) in pairs {
            let (Some(sums), Some(counts)) = (sums, counts) else {
                return Err(err(
                    path,
                    format!("{name}: has only one of .in_sum2 and .counts"),
                ));
            };
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                return Err(err(
                    path,
                    format!(
                        "{name}: {} sums do not split into {} counts",
                        sums.len(),
                        counts.len()
                    ),
                ));
            }
            check_values(path, &name, ".in_sum2", &sums)?;
            check_values(path, &name, ".counts", &counts)?;
            // llama.cpp rounds counts to integers on load (std::lround).
            let counts = counts.iter().map(|c| c.round()).collect();
            out.entries.insert(name, ImatrixEntry { sums, counts });
        }
        Ok(out)
    }

    /// `common_imatrix_load_legacy`, with every length checked against the bytes left.
    fn from_dat(b: &[u8], path: &Path) -> Result<Imatrix, CalibError> {
        let mut pos = 0usize;
        let i32_at = |what: &str, pos: &mut usize| -> Result<i32, CalibError> {
            let s = b
                .get(*pos..*pos + 4)
                .ok_or_else(|| err(path, format!("truncated at byte {pos} reading {what}")))?;
            *pos += 4;
            Ok(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        };
        let n = i32_at("the entry count", &mut pos)?;
        if n < 1 {
            return Err(err(
                path,
                format!("not an imatrix file (neither GGUF nor a .dat with entries; count {n})"),
            ));
        }
        let mut out = Imatrix {
            legacy: true,
            ..Default::default()
        };
        for i in 0..n {
            let len = i32_at("a name length", &mut pos)?;
            if len < 0 || pos + len as usize > b.len() {
                return Err(err(
                    path,
                    format!("entry {}: name length {len} runs past the end", i + 1),
                ));
            }
            let name = String::from_utf8(b[pos..pos + len as usize].to_vec())
                .map_err(|_| err(path, format!("entry {}: name is not UTF-8", i + 1)))?;
            pos += len as usize;
            let ncall = i32_at("ncall", &mut pos)?;
            let nval = i32_at("the value count", &mut pos)?;
            if nval < 1 || pos + 4 * nval as usize > b.len() {
                return Err(err(
                    path,
                    format!("{name}: {nval} values do not fit in the file"),
                ));
            }
            let sums: Vec<f32> = b[pos..pos + 4 * nval as usize]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            pos += 4 * nval as usize;
            check_values(path, &name, "values", &sums)?;
            if ncall < 0 {
                return Err(err(path, format!("{name}: negative ncall {ncall}")));
            }
            // A name given twice: the later entry replaces the earlier, as in
            // common_imatrix_load_legacy (`imatrix.entries[name]`), so llama-quantize
            // and laquant read the same file the same way.
            out.entries.insert(
                name,
                ImatrixEntry {
                    sums,
                    counts: vec![ncall as f32],
                },
            );
        }
        // Optional trailer: chunk count, dataset name.
        if pos + 4 <= b.len() {
            out.chunk_count = i32_at("the chunk count", &mut pos)?.max(0) as u32;
            if pos + 4 <= b.len() {
                let len = i32_at("the dataset name length", &mut pos)?;
                if len > 0 && pos + len as usize <= b.len() {
                    out.datasets
                        .push(String::from_utf8_lossy(&b[pos..pos + len as usize]).into_owned());
                }
            }
        }
        Ok(out)
    }
}

/// Importance statistics are sums of squares and counts: finite and non-negative.
/// Anything else would steer quantization with NaN weights, so it is refused here
/// (llama-quant.cpp's `llama_model_quantize_impl` refuses non-finite values too).
fn check_values(path: &Path, name: &str, what: &str, v: &[f32]) -> Result<(), CalibError> {
    match v.iter().position(|x| !x.is_finite() || *x < 0.0) {
        None => Ok(()),
        Some(i) => Err(err(
            path,
            format!(
                "{name}: {what}[{i}] = {} (must be finite and not negative)",
                v[i]
            ),
        )),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `bytes` to `path` through [`crate::atomic::AtomicFile`] (a temporary file
/// beside it, renamed into place when complete).
pub fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<(), CalibError> {
    crate::outputs::write(path, bytes, force).map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut m = Imatrix {
            datasets: vec!["laquant:en,zh".into()],
            chunk_count: 3,
            chunk_size: 512,
            ..Default::default()
        };
        m.entries.insert(
            "blk.0.attn_q.weight".into(),
            ImatrixEntry {
                sums: vec![1.0, 4.0, 9.0],
                counts: vec![1536.0],
            },
        );
        m.entries.insert(
            "blk.0.ffn_down_exps.weight".into(),
            ImatrixEntry {
                sums: vec![2.0, 2.0, 6.0, 6.0],
                counts: vec![2.0, 0.0],
            },
        );
        m
    }

    #[test]
    fn gguf_round_trip() {
        let m = sample();
        let bytes = m.to_gguf_bytes().unwrap();
        let back = Imatrix::from_bytes(bytes.clone(), Path::new("x.gguf")).unwrap();
        assert_eq!(back, m);
        let f = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(
            f.get("general.type").and_then(Value::as_str),
            Some("imatrix")
        );
        let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blk.0.attn_q.weight.in_sum2",
                "blk.0.attn_q.weight.counts",
                "blk.0.ffn_down_exps.weight.in_sum2",
                "blk.0.ffn_down_exps.weight.counts"
            ]
        );
        assert_eq!(f.tensors[0].dims, vec![3]);
        assert_eq!(f.tensors[2].dims, vec![2, 2]);
        assert_eq!(f.tensors[3].dims, vec![1, 2]);
        assert_eq!(
            back.mean("blk.0.ffn_down_exps.weight").unwrap(),
            vec![1.0, 1.0, 1.0, 1.0]
        );
    }

    #[test]
    fn dat_round_trip_keeps_means() {
        let mut m = sample();
        m.entries.remove("blk.0.ffn_down_exps.weight");
        let dat = m.to_dat_bytes();
        let back = Imatrix::from_bytes(dat, Path::new("x.dat")).unwrap();
        assert!(back.legacy);
        assert_eq!(back.chunk_count, 3);
        assert_eq!(back.datasets, m.datasets);
        let e = &back.entries["blk.0.attn_q.weight"];
        assert_eq!(e.counts, vec![3.0]);
        let want = m.mean("blk.0.attn_q.weight").unwrap();
        for (a, b) in back.mean("blk.0.attn_q.weight").unwrap().iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs());
        }
    }

    #[test]
    fn bad_files_are_errors() {
        let p = Path::new("bad.dat");
        assert!(Imatrix::from_bytes(vec![], p).is_err());
        assert!(Imatrix::from_bytes(vec![0, 0, 0, 0], p).is_err());
        let mut dat = sample().to_dat_bytes();
        dat.truncate(20);
        let e = Imatrix::from_bytes(dat, p).unwrap_err().to_string();
        assert!(e.contains("bad.dat"), "{e}");
        let mut g = sample().to_gguf_bytes().unwrap();
        g.truncate(g.len() / 2);
        assert!(Imatrix::from_bytes(g, Path::new("x.gguf")).is_err());
    }
}
