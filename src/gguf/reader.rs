//! Bounds-checked GGUF reader over a memory map. Every count, length and
//! offset is checked against the bytes that remain before anything is
//! allocated from it, so a hostile file yields an error, never a panic or a
//! huge allocation.

use super::{align_up, GgmlType, Metadata, Value, ValueType, DEFAULT_ALIGNMENT, MAGIC};
use memmap2::Mmap;
use std::path::{Path, PathBuf};

/// What is wrong with a GGUF file. Every variant names the file (`path`; for
/// [`GgufFile::from_bytes`], `<memory>`); the message says what was being read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file cannot be opened, measured or mapped.
    // `error`, not `source`: printed once (a source would repeat under anyhow's `{:#}`).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("{path}: not a GGUF file (magic {magic:?})")]
    Magic {
        /// The file.
        path: PathBuf,
        /// Its first bytes (fewer than four if it is that short).
        magic: Vec<u8>,
    },
    /// A version other than 2 or 3.
    #[error("{path}: GGUF version {version} is not supported (2 and 3 are)")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it declares.
        version: u32,
    },
    /// The file ends before something it declares (a string, an array, the data
    /// of a tensor or the padding after the last one).
    #[error("{path}: truncated at byte {at} while reading {what}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The byte offset where more was needed (the file's length for tensor data).
        at: usize,
        /// What was being read, naming the metadata key or tensor.
        what: String,
    },
    /// Bytes that are present but that ggml would refuse: an unknown type id, a
    /// repeated key or tensor, a bad alignment, overlapping or misplaced tensor
    /// data, a width that is not a whole number of blocks, counts beyond the
    /// reader's limits.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the metadata key or tensor.
        what: String,
    },
    /// A tensor's data could not be dequantized ([`GgufFile::tensor_f32`]).
    // `error`, not `source`, as for `Io`.
    #[error("{path}: tensor {tensor}: {error}")]
    Dequantize {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What the kernel said.
        error: crate::quant::QuantError,
    },
}

/// One tensor's info as stored in the file (ggml's `gguf_tensor_info`), checked
/// when the file was opened: 1 to 4 dimensions, a width that is a whole number
/// of the type's blocks, data inside the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, `ne[0]` (the row width) first: the reverse of PyTorch's shape.
    pub dims: Vec<u64>,
    /// The element type.
    pub ty: GgmlType,
    /// Offset of the data in bytes, relative to the start of the data section
    /// ([`GgufFile::data_offset`]); a multiple of the alignment.
    pub offset: u64,
    /// Size of the data in bytes, without padding.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The number of elements: the product of the dimensions.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file: its metadata and tensor infos, with the tensor data left
/// in a memory map (or the bytes given to [`Self::from_bytes`]). Opening checks
/// the layout as ggml's `gguf_init_from_file` does (tensors in header order,
/// each padded to the alignment, the data section whole), so every tensor's
/// data is in bounds.
pub struct GgufFile {
    /// The file, as given (named in every error).
    pub path: PathBuf,
    /// The GGUF version, 2 or 3.
    pub version: u32,
    /// The metadata pairs in file order.
    pub metadata: Metadata,
    /// The tensor infos in file order (which is also the order of their data).
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or [`super::DEFAULT_ALIGNMENT`]: a power of two.
    pub alignment: u64,
    /// Byte offset of the data section from the start of the file: the end of
    /// the header rounded up to the alignment.
    pub data_offset: u64,
    map: Option<Mmap>,
    bytes: Option<Vec<u8>>,
}

const MAX_DIMS: u32 = 4;
const MAX_STRING: u64 = 1 << 30;
/// Metadata pairs per file.
const MAX_KV: u64 = 1 << 16;
/// Metadata array elements in the whole file. Each parsed element costs a
/// [`Value`] (32 bytes) however few bytes it takes on disk, so without a budget a
/// large `u8` array would cost 32 times the file's size in memory. Real files
/// hold a few million (a 256k-token vocabulary with scores, types and merges).
const MAX_ARRAY_ELEMENTS: u64 = 1 << 26;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Array elements still allowed (see [`MAX_ARRAY_ELEMENTS`]).
    elements_left: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated {
                path: self.path.into(),
                at: self.pos,
                what: what.into(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn invalid(&self, what: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.into(),
            what,
        }
    }
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(self.invalid(format!("{what}: string length {n} is absurd")));
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| self.invalid(format!("{what}: string is not UTF-8")))
    }
    fn value(&mut self, t: ValueType, what: &str, depth: u32) -> Result<Value, GgufError> {
        let b = |c: &mut Self, n| c.take(n, what);
        Ok(match t {
            ValueType::U8 => Value::U8(b(self, 1)?[0]),
            ValueType::I8 => Value::I8(b(self, 1)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(b(self, 2)?.try_into().unwrap())),
            ValueType::I16 => Value::I16(i16::from_le_bytes(b(self, 2)?.try_into().unwrap())),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(self.u32(what)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(what)?)),
            ValueType::Bool => {
                let v = b(self, 1)?[0];
                if v > 1 {
                    return Err(self.invalid(format!("{what}: bool value {v}")));
                }
                Value::Bool(v == 1)
            }
            ValueType::String => Value::String(self.string(what)?),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(self.u64(what)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(what)?)),
            ValueType::Array => {
                if depth > 8 {
                    return Err(self.invalid(format!("{what}: arrays nested too deep")));
                }
                let et_id = self.u32(what)?;
                let et = ValueType::from_id(et_id).ok_or_else(|| {
                    self.invalid(format!("{what}: unknown array element type {et_id}"))
                })?;
                let n = self.u64(what)?;
                // Every element takes at least one byte (strings and arrays at least 8).
                let min = et.fixed_size().unwrap_or(8) as u64;
                let remaining = (self.buf.len() - self.pos) as u64;
                if n.saturating_mul(min) > remaining {
                    return Err(self.invalid(format!(
                        "{what}: array of {n} elements does not fit in the {remaining} bytes left"
                    )));
                }
                if n > self.elements_left {
                    return Err(self.invalid(format!(
                        "{what}: array of {n} elements exceeds the limit of {MAX_ARRAY_ELEMENTS} metadata array elements per file"
                    )));
                }
                self.elements_left -= n;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(et, what, depth + 1)?);
                }
                Value::Array(et, items)
            }
        })
    }
}

/// Parses the header of a GGUF image; returns (version, metadata, tensors, alignment, data offset).
fn parse(buf: &[u8], path: &Path) -> Result<(u32, Metadata, Vec<TensorInfo>, u64, u64), GgufError> {
    let mut c = Cursor {
        buf,
        pos: 0,
        path,
        elements_left: MAX_ARRAY_ELEMENTS,
    };
    let (version, n_tensors, n_kv) = parse_header(&mut c)?;
    let metadata = parse_metadata(&mut c, n_kv)?;
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if *a != 0 && a.is_power_of_two() => *a as u64,
        Some((_, v)) => {
            return Err(c.invalid(format!("general.alignment {v} is not a power-of-two u32")))
        }
    };
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut names = std::collections::HashSet::new();
    for i in 0..n_tensors {
        tensors.push(parse_tensor_info(&mut c, i, alignment, &mut names)?);
    }
    let data_offset = align_up(c.pos as u64, alignment);
    check_data_layout(&c, &tensors, alignment, data_offset)?;
    Ok((version, metadata, tensors, alignment, data_offset))
}

/// The magic, the version (2 or 3) and the tensor and metadata counts, bounded
/// by what the rest of the file can hold.
fn parse_header(c: &mut Cursor) -> Result<(u32, u64, u64), GgufError> {
    let (buf, path) = (c.buf, c.path);
    let magic = c.take(4, "magic").map_err(|_| GgufError::Magic {
        path: path.into(),
        magic: buf.to_vec(),
    })?;
    if magic != MAGIC {
        return Err(GgufError::Magic {
            path: path.into(),
            magic: magic.to_vec(),
        });
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::Version {
            path: path.into(),
            version,
        });
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    let remaining = (buf.len() - c.pos) as u64;
    // Each pair costs ~9x its 12 bytes in memory; real files have a few dozen
    // (the vocabulary is one array).
    if n_kv > MAX_KV {
        return Err(c.invalid(format!(
            "header declares {n_kv} metadata pairs, more than the limit of {MAX_KV}"
        )));
    }
    // A metadata pair takes at least 12 bytes, a tensor info at least 24.
    if n_kv.saturating_mul(12) > remaining || n_tensors.saturating_mul(24) > remaining {
        return Err(c.invalid(format!(
            "header declares {n_kv} metadata pairs and {n_tensors} tensors, more than {remaining} bytes can hold"
        )));
    }
    Ok((version, n_tensors, n_kv))
}

/// The `n_kv` metadata pairs, each key once.
fn parse_metadata(c: &mut Cursor, n_kv: u64) -> Result<Metadata, GgufError> {
    let mut metadata = Vec::with_capacity(n_kv as usize);
    // A set, not a scan of `metadata`: millions of tiny pairs must not take quadratic time.
    let mut keys = std::collections::HashSet::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        if !keys.insert(key.clone()) {
            return Err(c.invalid(format!("metadata key {key} appears twice")));
        }
        let tid = c.u32(&key)?;
        let t = ValueType::from_id(tid)
            .ok_or_else(|| c.invalid(format!("{key}: unknown value type {tid}")))?;
        let v = c.value(t, &key, 0)?;
        metadata.push((key, v));
    }
    Ok(metadata)
}

/// Tensor info `#i`: a name not in `names` yet, dimensions (their product
/// bounded), type and an aligned offset; its byte size from the type's block.
fn parse_tensor_info(
    c: &mut Cursor,
    i: u64,
    alignment: u64,
    names: &mut std::collections::HashSet<String>,
) -> Result<TensorInfo, GgufError> {
    let name = c.string(&format!("tensor #{i} name"))?;
    if !names.insert(name.clone()) {
        return Err(c.invalid(format!("tensor {name} appears twice")));
    }
    let nd = c.u32(&name)?;
    if nd == 0 || nd > MAX_DIMS {
        return Err(c.invalid(format!(
            "tensor {name}: {nd} dimensions (1 to {MAX_DIMS} allowed)"
        )));
    }
    let mut dims = Vec::with_capacity(nd as usize);
    // The product of the non-zero dimensions bounds every partial product (rows
    // below), so a zero dimension cannot hide an overflowing one (ggml's
    // gguf_init_from_file_impl checks each ne against INT64_MAX the same way).
    let mut n: u64 = 1;
    for _ in 0..nd {
        let d = c.u64(&name)?;
        n = n
            .checked_mul(d.max(1))
            .filter(|&n| n < (1u64 << 62))
            .ok_or_else(|| c.invalid(format!("tensor {name}: element count overflows")))?;
        dims.push(d);
    }
    let tid = c.u32(&name)?;
    let ty = GgmlType::from_id(tid)
        .ok_or_else(|| c.invalid(format!("tensor {name}: unknown ggml type {tid}")))?;
    let offset = c.u64(&name)?;
    if offset % alignment != 0 {
        return Err(c.invalid(format!(
            "tensor {name}: offset {offset} is not aligned to {alignment}"
        )));
    }
    let rows: u64 = dims[1..].iter().product();
    let n_bytes = ty
        .row_bytes(dims[0])
        .and_then(|b| b.checked_mul(rows))
        .ok_or_else(|| {
            c.invalid(format!(
                "tensor {name}: width {} is not a multiple of {ty}'s block",
                dims[0]
            ))
        })?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes,
    })
}

/// The data section starting at `data_offset`: no tensor overlaps another or
/// runs past the file, and the tensors follow each other in header order with
/// the padding ggml expects.
fn check_data_layout(
    c: &Cursor,
    tensors: &[TensorInfo],
    alignment: u64,
    data_offset: u64,
) -> Result<(), GgufError> {
    let (buf, path) = (c.buf, c.path);
    // Measured from the start of the data section, which a header ending near the
    // end of the file can place past it: then even an empty tensor is out of bounds
    // (found by fuzzing: fuzz/regressions/gguf/empty-tensor-past-end).
    let data_len = match (buf.len() as u64).checked_sub(data_offset) {
        Some(n) => n,
        None if tensors.is_empty() => 0,
        None => {
            return Err(GgufError::Truncated {
                path: path.into(),
                at: buf.len(),
                what: format!("the data section (aligned to start at byte {data_offset})"),
            })
        }
    };
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| (t.offset, t.n_bytes, t.name.as_str()))
        .collect();
    spans.sort();
    let mut end = 0u64;
    for (off, len, name) in spans {
        if off < end {
            return Err(c.invalid(format!("tensor {name} overlaps the tensor before it")));
        }
        end = off
            .checked_add(len)
            .ok_or_else(|| c.invalid(format!("tensor {name}: offset overflows")))?;
        if end > data_len {
            return Err(GgufError::Truncated {
                path: path.into(),
                at: buf.len(),
                what: format!(
                    "tensor {name} data (needs {} bytes, file has {})",
                    data_offset.saturating_add(end),
                    buf.len()
                ),
            });
        }
    }
    // As ggml's gguf_init_from_file (ggml/src/gguf.cpp): every tensor starts
    // where the one before it in the header ends, padded to the alignment, and
    // the data section, the last tensor's padding included, is read whole.
    let mut expected = 0u64;
    for t in tensors {
        if t.offset != expected {
            return Err(c.invalid(format!(
                "tensor {}: offset {} where ggml expects {expected} (tensors follow each other \
                 in header order, each padded to {alignment} bytes)",
                t.name, t.offset
            )));
        }
        // Cannot overflow: the checks above put offset + size within the file.
        expected = align_up(t.offset + t.n_bytes, alignment);
    }
    if expected > data_len {
        let last = tensors.last().map_or("", |t| t.name.as_str());
        return Err(GgufError::Truncated {
            path: path.into(),
            at: buf.len(),
            what: format!(
                "the padding after the last tensor {last} (the data section, padded to \
                 {alignment} bytes, ends at byte {}, which ggml's gguf_init_from_file requires)",
                data_offset + expected
            ),
        });
    }
    Ok(())
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file; tensor data stays in the memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |error| GgufError::Io {
            path: path.into(),
            error,
        };
        let file = crate::hf::open_regular(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 24 {
            return Err(GgufError::Truncated {
                path: path.into(),
                at: len as usize,
                what: "header".into(),
            });
        }
        // SAFETY: the map is read-only; laquant never writes to files it reads, and
        // another process truncating the file under us is outside what we guard against
        // (as for every mmap reader, ggml's included).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (version, metadata, tensors, alignment, data_offset) = parse(&map, path)?;
        Ok(GgufFile {
            path: path.into(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            map: Some(map),
            bytes: None,
        })
    }

    /// Parses a GGUF image held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_bytes_named(bytes, Path::new("<memory>"))
    }

    /// Parses a GGUF image read from `path` (which names it in errors).
    pub fn from_bytes_named(bytes: Vec<u8>, path: &Path) -> Result<GgufFile, GgufError> {
        let path = path.to_path_buf();
        let (version, metadata, tensors, alignment, data_offset) = parse(&bytes, &path)?;
        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            map: None,
            bytes: Some(bytes),
        })
    }

    fn buf(&self) -> &[u8] {
        match (&self.map, &self.bytes) {
            (Some(m), _) => m,
            (_, Some(b)) => b,
            _ => &[],
        }
    }

    /// The value of metadata key `key`, if the file has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The info of the tensor named `name`, if the file has it.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked when the file was opened).
    ///
    /// # Panics
    ///
    /// If `t` is not one of this file's [`Self::tensors`] and lies outside its data.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.buf()[start..start + t.n_bytes as usize]
    }

    /// Rows `first..first + rows` (of `dims[0]` values each) of tensor `t`,
    /// dequantized: one expert of a mixture's stacked tensor without the others.
    pub fn tensor_rows_f32(
        &self,
        t: &TensorInfo,
        first: usize,
        rows: usize,
    ) -> Result<Vec<f32>, GgufError> {
        let width = t.dims[0] as usize;
        let rb = t.ty.row_bytes(width as u64).unwrap_or(0) as usize;
        let data = self.tensor_data(t);
        let bad = |what: String| GgufError::Invalid {
            path: self.path.clone(),
            what: format!("tensor {}: {what}", t.name),
        };
        let bytes = data
            .get(first * rb..(first + rows) * rb)
            .ok_or_else(|| bad(format!("rows {first}..{} asked", first + rows)))?;
        let mut out = vec![0f32; rows * width];
        for (o, d) in out
            .chunks_exact_mut(width.max(1))
            .zip(bytes.chunks_exact(rb.max(1)))
        {
            crate::quant::dequantize(t.ty, d, o).map_err(|e| bad(e.to_string()))?;
        }
        Ok(out)
    }

    /// A tensor dequantized to f32 as ggml's `to_float` would (bit-identical),
    /// in the file's element order.
    ///
    /// # Panics
    ///
    /// As [`Self::tensor_data`].
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let mut out = vec![0f32; t.n_elements() as usize];
        let width = t.dims[0] as usize;
        let rb = t.ty.row_bytes(width as u64).unwrap_or(0) as usize;
        let data = self.tensor_data(t);
        for (o, d) in out
            .chunks_exact_mut(width.max(1))
            .zip(data.chunks_exact(rb.max(1)))
        {
            crate::quant::dequantize(t.ty, d, o).map_err(|error| GgufError::Dequantize {
                path: self.path.clone(),
                tensor: t.name.clone(),
                error,
            })?;
        }
        Ok(out)
    }
}
