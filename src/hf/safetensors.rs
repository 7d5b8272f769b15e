//! Memory-mapped safetensors shards: a single `model.safetensors`, or shards
//! listed by `model.safetensors.index.json`. Headers are validated by the
//! `safetensors` crate (offsets contiguous, sizes matching dtype x shape, data
//! covering the file exactly); the index is checked here (shards inside the
//! folder and present, every listed tensor found where it says, no tensor in
//! two shards).

use super::HfError;
use memmap2::Mmap;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

/// One mapped shard with its parsed header.
pub struct Shard {
    /// The shard's file.
    pub path: PathBuf,
    map: Mmap,
    /// The bytes of the map that describe its tensors (a safetensors file's
    /// JSON header; a GGUF file's header, for [`Shard::view`]).
    header: std::ops::Range<usize>,
    /// Its tensors, sorted by name (their `shard` is set by [`Shards`]).
    listed: Vec<(String, TensorEntry)>,
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Index of its shard in [`Shards::shards`].
    pub shard: usize,
    /// Its stored dtype.
    pub dtype: Dtype,
    /// Its torch shape (a view's, for a [`View`]).
    pub shape: Vec<usize>,
    /// How the stored rows were moved from the tensor's (a GGUF file's
    /// Q/K permutation, for [`Shard::view`]); reads through
    /// [`Shards::bytes`] undo it. `Transform::None` for safetensors.
    pub stored_rows: crate::arch::Transform,
    start: usize,
    end: usize,
    /// Set when the tensor is a strided view of the stored bytes (a
    /// pre-stacked expert tensor's half, transposed): read by gathering.
    pub view: Option<View>,
    /// Set when the tensor is MXFP4 (gpt-oss's experts; `start..end` are
    /// the blocks): its values read as F32, dequantized, its ggml blocks by
    /// [`Shards::mxfp4_rows`].
    pub mxfp4: Option<Box<Mxfp4>>,
}

/// How an MXFP4 tensor's codes and scales are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mxfp4 {
    /// Blocks and scales apart, as openai's gpt-oss checkpoint stores them.
    Pair(Mxfp4Pair),
    /// ggml's `block_mxfp4`s, row-major, in place (a GGUF file's tensor):
    /// per 32 values the scale byte, then 16 bytes holding element `j` in
    /// the low nibble of byte `j` and element `j + 16` in the high one.
    Ggml,
}

/// The stored parts of an MXFP4 tensor `[.., rows, cols]` whose blocks are
/// `uint8 [.., rows · step, cols / 32, 16]` (element `2i` of a block in the
/// low nibble of byte `i`, `2i + 1` in the high one) and scales `uint8 [..,
/// rows · step, cols / 32]` (E8M0 exponent bytes): row `r` of the tensor is
/// stored row `r · step + offset` (gpt-oss's `gate_up_proj` holds gate and up
/// in alternate rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mxfp4Pair {
    /// The scales' shard (index into [`Shards::shards`]) and bytes in it.
    pub scales: (usize, std::ops::Range<usize>),
    /// Stored rows per row of the tensor.
    pub step: usize,
    /// The stored row of the tensor's first.
    pub offset: usize,
}

/// A tensor presented as a strided view of another's stored elements:
/// element `(i_0, .., i_n)` of the view is stored element
/// `offset + Σ i_k · strides[k]` (in elements) of its entry's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Per dimension of the view, the stored elements between neighbours.
    pub strides: Vec<usize>,
    /// The stored element of the view's first.
    pub offset: usize,
}

impl View {
    /// The stored element index of each element of a view of `shape`, in
    /// the view's row-major order, from element `first` on, `n` of them.
    pub fn source_indices(&self, shape: &[usize], first: usize, n: usize) -> Vec<usize> {
        (first..first + n)
            .map(|mut i| {
                let mut src = self.offset;
                for (d, &len) in shape.iter().enumerate().rev() {
                    src += (i % len.max(1)) * self.strides[d];
                    i /= len.max(1);
                }
                src
            })
            .collect()
    }

    /// The elements `first..first + n` of a view of `shape` gathered from
    /// `raw` (elements of `size` bytes).
    pub fn gather(
        &self,
        raw: &[u8],
        size: usize,
        shape: &[usize],
        first: usize,
        n: usize,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(n * size);
        for src in self.source_indices(shape, first, n) {
            out.extend_from_slice(&raw[src * size..(src + 1) * size]);
        }
        out
    }
}

/// F32 values `s` (little-endian bytes) replaced by `s - 1`: a norm weight
/// a GGUF file stores as `1 + w` read back as `w`.
pub fn unit_offset_removed(f32_bytes: &mut [u8]) {
    for b in f32_bytes.chunks_exact_mut(4) {
        let s = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        b.copy_from_slice(&(s - 1.0).to_le_bytes());
    }
}

/// One tensor of a [`Shard::view`]: its name, dtype and torch shape, its bytes
/// in the file, and how its rows were moved there.
pub struct ViewedTensor {
    /// Its (HF) name.
    pub name: String,
    /// Its dtype: F32, F16 or BF16.
    pub dtype: Dtype,
    /// Its torch shape.
    pub shape: Vec<usize>,
    /// Its bytes in the file.
    pub bytes: std::ops::Range<usize>,
    /// How its rows were moved from the tensor's ([`TensorEntry::stored_rows`]).
    pub stored_rows: crate::arch::Transform,
    /// Its bytes are ggml's MXFP4 blocks ([`Mxfp4::Ggml`]; `dtype` is then
    /// F32, the type its values are read as).
    pub mxfp4: bool,
}

/// All shards of a checkpoint and the tensors in them.
pub struct Shards {
    /// The shards, sorted by file name.
    pub shards: Vec<Shard>,
    /// Tensor name -> entry, for lookups.
    pub tensors: HashMap<String, TensorEntry>,
    /// Names in llama.cpp's converter order: shards sorted by file name, names sorted within a shard.
    pub order: Vec<String>,
}

fn bad(path: &Path, what: impl Into<String>) -> HfError {
    HfError::File {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

impl Shard {
    /// Maps the file and checks its header (sizes, offsets, dtypes).
    pub fn open(path: &Path) -> Result<Shard, HfError> {
        let file = super::open_regular(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| bad(path, format!("cannot stat: {e}")))?
            .len();
        if len < 8 {
            return Err(bad(
                path,
                format!("truncated: {len} bytes, a safetensors file has at least 8"),
            ));
        }
        // SAFETY: read-only map of a file we never write; concurrent truncation by another
        // process is outside our guarantees, as for every mmap-based reader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(path, format!("cannot map: {e}")))?;
        Self::from_map(path, map)
    }

    /// A shard whose bytes are held in memory (fuzzing, tests); `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Shard, HfError> {
        if bytes.len() < 8 {
            return Err(bad(
                path,
                format!(
                    "truncated: {} bytes, a safetensors file has at least 8",
                    bytes.len()
                ),
            ));
        }
        let mut anon = memmap2::MmapMut::map_anon(bytes.len())
            .map_err(|e| bad(path, format!("cannot map: {e}")))?;
        anon.copy_from_slice(bytes);
        let map = anon
            .make_read_only()
            .map_err(|e| bad(path, format!("cannot map: {e}")))?;
        Self::from_map(path, map)
    }

    fn from_map(path: &Path, map: Mmap) -> Result<Shard, HfError> {
        let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            use safetensors::SafeTensorError as E;
            let what = match e {
                E::MetadataIncompleteBuffer => {
                    "data section does not match the header's offsets (truncated, or bytes left over)".to_string()
                }
                E::InvalidHeaderLength => "header length runs past the end of the file (truncated?)".to_string(),
                E::InvalidOffset(name) => format!("tensor {name}: offsets overlap or leave a gap"),
                E::TensorInvalidInfo => "a tensor's shape and dtype disagree with its byte range".to_string(),
                other => format!("invalid safetensors header: {other}"),
            };
            bad(path, what)
        })?;
        let base = 8 + header_len;
        let mut listed: Vec<(String, TensorEntry)> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                (
                    name,
                    TensorEntry {
                        shard: 0,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        stored_rows: crate::arch::Transform::None,
                        start: base + info.data_offsets.0,
                        end: base + info.data_offsets.1,
                        view: None,
                        mxfp4: None,
                    },
                )
            })
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            header: 8..base,
            listed,
        })
    }

    /// Tensors of another file read as a checkpoint's, in place (a GGUF
    /// file's, whose data is row-major F32, F16 or BF16 already): the file
    /// is mapped, bytes `0..header_end` describe the tensors, and each
    /// tensor's bytes must lie inside the file and match its dtype and shape.
    pub fn view(
        path: &Path,
        header_end: usize,
        tensors: Vec<ViewedTensor>,
    ) -> Result<Shard, HfError> {
        let file = super::open_regular(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
        // SAFETY: as in `open`: a read-only map of a file we never write.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(path, format!("cannot map: {e}")))?;
        if header_end > map.len() {
            return Err(bad(path, "truncated: the header runs past the end"));
        }
        let mut listed = Vec::with_capacity(tensors.len());
        for t in tensors {
            let n: usize = t.shape.iter().product();
            let fits = t.bytes.start <= t.bytes.end && t.bytes.end <= map.len();
            let (what, size) = match t.mxfp4 {
                // 17 bytes per 32 values, whole blocks per row.
                true if t.shape.last().is_some_and(|c| c % 32 == 0) => {
                    ("MXFP4".to_string(), Some(n / 32 * 17))
                }
                true => ("MXFP4".to_string(), None),
                false => (
                    format!("{:?}", t.dtype),
                    Some(n * dtype_size(t.dtype)).filter(|_| dtype_size(t.dtype) > 0),
                ),
            };
            if !fits || size != Some(t.bytes.len()) {
                return Err(bad(
                    path,
                    format!(
                        "tensor {}: bytes {:?} do not hold {what} {:?} in a file of {} bytes",
                        t.name,
                        t.bytes,
                        t.shape,
                        map.len()
                    ),
                ));
            }
            let e = TensorEntry {
                shard: 0,
                dtype: t.dtype,
                shape: t.shape,
                stored_rows: t.stored_rows,
                start: t.bytes.start,
                end: t.bytes.end,
                view: None,
                mxfp4: t.mxfp4.then(|| Box::new(Mxfp4::Ggml)),
            };
            listed.push((t.name, e));
        }
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            header: 0..header_end,
            listed,
        })
    }

    /// The bytes that describe its tensors (see [`Shard::view`]).
    pub fn header(&self) -> &[u8] {
        &self.map[self.header.clone()]
    }

    fn entries(&self, shard: usize) -> Vec<(String, TensorEntry)> {
        let mut v = self.listed.clone();
        for (_, e) in v.iter_mut() {
            e.shard = shard;
        }
        v
    }
}

/// Checks that an index entry names a plain file inside the model folder.
fn safe_shard_name(dir: &Path, index: &Path, name: &str) -> Result<PathBuf, HfError> {
    let p = Path::new(name);
    let plain = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(bad(
            index,
            format!("shard `{name}` is not a plain file name inside the model folder"),
        ));
    }
    let full = dir.join(p);
    let canon_dir = dir
        .canonicalize()
        .map_err(|e| bad(dir, format!("cannot resolve: {e}")))?;
    match full.canonicalize() {
        Ok(c) if c.starts_with(&canon_dir) || in_hub_blobs(&canon_dir, &c) => Ok(full),
        Ok(_) => Err(bad(
            index,
            format!("shard `{name}` resolves outside the model folder"),
        )),
        // A dangling or looping symlink exists as a link but does not resolve.
        Err(e) if full.symlink_metadata().is_ok() => {
            Err(bad(index, format!("shard `{name}`: cannot resolve: {e}")))
        }
        Err(_) => Err(bad(
            index,
            format!(
                "shard `{name}` is listed but missing from {}",
                dir.display()
            ),
        )),
    }
}

/// Whether `target` (resolved) is a blob of the Hugging Face cache repository
/// whose snapshot is `snapshot` (resolved): huggingface_hub stores
/// `models--org--name/snapshots/<rev>/<file>` as a relative symlink to
/// `../../blobs/<sha>`, so a shard of a cached model lives in `blobs/`.
fn in_hub_blobs(snapshot: &Path, target: &Path) -> bool {
    let Some(snapshots) = snapshot.parent() else {
        return false;
    };
    if snapshots.file_name().is_none_or(|n| n != "snapshots") {
        return false;
    }
    let Some(repo) = snapshots.parent() else {
        return false;
    };
    target.parent() == Some(repo.join("blobs").as_path())
}

/// Bytes per element of the checkpoint dtypes laquant reads (F32, F16, BF16;
/// 0 for the others, which [`widen`] refuses).
pub fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        _ => 0,
    }
}

/// Widens raw little-endian F32/F16/BF16 data to f32; `false` for other dtypes.
pub fn widen(dtype: Dtype, raw: &[u8], out: &mut [f32]) -> bool {
    match dtype {
        Dtype::F32 => crate::quant::float::bytes_to_f32(raw, out),
        Dtype::F16 => crate::quant::float::f16_bytes_to_f32(raw, out),
        Dtype::BF16 => crate::quant::float::bf16_bytes_to_f32(raw, out),
        _ => return false,
    }
    true
}

impl Shards {
    /// A checkpoint of one in-memory `model.safetensors` image (fuzzing, tests):
    /// the same header and offset checks as [`Shards::open`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Shards, HfError> {
        let path = PathBuf::from("<memory>/model.safetensors");
        Ok(Self::single(Shard::from_bytes(&path, bytes)?))
    }

    /// The tensors of one shard (a [`Shard::view`], or an in-memory image).
    pub fn single(s: Shard) -> Shards {
        let mut tensors = HashMap::new();
        let mut order = Vec::new();
        for (name, e) in s.entries(0) {
            order.push(name.clone());
            tensors.insert(name, e);
        }
        Shards {
            shards: vec![s],
            tensors,
            order,
        }
    }

    /// Opens the checkpoint's safetensors in `dir`.
    pub fn open(dir: &Path) -> Result<Shards, HfError> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut names_from_index: Option<BTreeMap<String, String>> = None;
        let shard_files: Vec<PathBuf> = if index_path.is_file() {
            let text = super::read_capped(&index_path, super::limits::INDEX_BYTES)
                .map_err(|e| bad(&index_path, format!("cannot read: {e}")))?;
            let j: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| bad(&index_path, format!("not valid JSON: {e}")))?;
            let wm = j
                .get("weight_map")
                .and_then(|w| w.as_object())
                .ok_or_else(|| bad(&index_path, "key `weight_map` is missing or not an object"))?;
            let mut map = BTreeMap::new();
            for (t, f) in wm {
                let f = f
                    .as_str()
                    .ok_or_else(|| bad(&index_path, format!("weight_map.{t} is not a string")))?;
                map.insert(t.clone(), f.to_string());
            }
            let mut files: Vec<String> = map.values().cloned().collect();
            files.sort();
            files.dedup();
            let paths = files
                .iter()
                .map(|f| safe_shard_name(dir, &index_path, f))
                .collect::<Result<Vec<_>, _>>()?;
            names_from_index = Some(map);
            paths
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| bad(dir, format!("cannot list: {e}")))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    n.starts_with("model") && n.ends_with(".safetensors")
                })
                .collect();
            v.sort();
            if v.is_empty() {
                if dir.join("pytorch_model.bin").exists()
                    || dir.join("pytorch_model.bin.index.json").exists()
                {
                    return Err(bad(
                        dir,
                        "holds only pytorch_model.bin (a pickle, which laquant never loads because unpickling can run code); \
                         convert it to safetensors first, e.g. with the `convert` Space of huggingface/safetensors, \
                         or download the safetensors revision of the model",
                    ));
                }
                return Err(bad(
                    dir,
                    "no model*.safetensors files and no model.safetensors.index.json",
                ));
            }
            v
        };

        let mut shards = Vec::with_capacity(shard_files.len());
        let mut tensors: HashMap<String, TensorEntry> = HashMap::new();
        let mut order = Vec::new();
        for (i, p) in shard_files.iter().enumerate() {
            let s = Shard::open(p)?;
            for (name, e) in s.entries(i) {
                if let Some(prev) = tensors.get(&name) {
                    return Err(bad(
                        p,
                        format!(
                            "tensor {name} is also in {}",
                            shard_files[prev.shard].display()
                        ),
                    ));
                }
                order.push(name.clone());
                tensors.insert(name, e);
            }
            shards.push(s);
        }
        if let Some(map) = names_from_index {
            for (t, f) in &map {
                match tensors.get(t) {
                    None => {
                        return Err(bad(
                            &index_path,
                            format!("tensor {t} is listed in shard {f} but not found there"),
                        ))
                    }
                    Some(e) => {
                        let actual = shard_files[e.shard]
                            .file_name()
                            .and_then(|n| n.to_str())
                            .unwrap_or("");
                        if actual != f {
                            return Err(bad(
                                &index_path,
                                format!("tensor {t} is listed in {f} but is in {actual}"),
                            ));
                        }
                    }
                }
            }
            if let Some(extra) = order.iter().find(|n| !map.contains_key(*n)) {
                return Err(bad(
                    &shard_files[tensors[extra].shard],
                    format!("tensor {extra} is not listed in model.safetensors.index.json"),
                ));
            }
        }
        Ok(Shards {
            shards,
            tensors,
            order,
        })
    }

    /// The tensors as `convert_hf_to_gguf.py` sees a text model's: those of a
    /// multimodal checkpoint's other towers dropped (`TextModel.filter_tensors`:
    /// vision, audio, projectors), `language_model.` removed from the names
    /// (`ModelBase.filter_tensors`), every name keeping its place in the order.
    /// Two tensors that end up with one name are an error.
    pub fn as_text_model(&mut self) -> Result<(), HfError> {
        self.rename(text_model_name, "once `language_model.` is removed")
    }

    /// `prefix` put before every name that lacks it: a checkpoint saved from
    /// a base model (GPT-2's own `h.0.…`, `wte`) named as its LM-head class
    /// names it (`transformer.h.0.…`), both of which the converter's tensor
    /// map knows.
    pub fn add_prefix(&mut self, prefix: &str) -> Result<(), HfError> {
        self.rename(
            |n| {
                Some(match n.starts_with(prefix) {
                    true => n.to_string(),
                    false => format!("{prefix}{n}"),
                })
            },
            &format!("with `{prefix}` added"),
        )
    }

    /// The names as a family's own `filter_tensors` renames them
    /// ([`crate::arch::hf_rename`]: `None` drops a tensor).
    pub fn as_family(&mut self, rename: fn(&str) -> Option<String>) -> Result<(), HfError> {
        self.rename(rename, "once the converter renames it")
    }

    /// Tensor `name` without its first `n` rows, as the converter's slice
    /// `t[n:, :]` leaves it (XLM-R's position embeddings): the entry's shape
    /// and byte range shrink, nothing is copied. An error names the file and
    /// the tensor when it has fewer than `n` rows or is not 2-D.
    pub fn drop_leading_rows(&mut self, name: &str, n: usize) -> Result<(), HfError> {
        let Some(e) = self.tensors.get_mut(name) else {
            return Ok(());
        };
        let path = &self.shards[e.shard].path;
        let rows = match e.shape[..] {
            [rows, _] if rows > n => rows,
            _ => {
                return Err(bad(
                    path,
                    format!(
                        "tensor {name}: shape {:?} has no rows left once the first {n} \
                         (pad_token_id + 1) are dropped",
                        e.shape
                    ),
                ))
            }
        };
        let row_bytes = (e.end - e.start) / rows;
        e.start += n * row_bytes;
        e.shape[0] = rows - n;
        Ok(())
    }

    /// Every tensor renamed by `rename` (`None`: dropped), keeping its place
    /// in the order; two tensors that end up with one name are an error.
    fn rename(
        &mut self,
        rename: impl Fn(&str) -> Option<String>,
        how: &str,
    ) -> Result<(), HfError> {
        if !self.order.iter().any(|n| rename(n).as_deref() != Some(n)) {
            return Ok(());
        }
        let mut tensors = HashMap::with_capacity(self.tensors.len());
        let mut order = Vec::with_capacity(self.order.len());
        for name in &self.order {
            let Some(new) = rename(name) else {
                continue;
            };
            let e = self.tensors[name].clone();
            if tensors.contains_key(&new) {
                return Err(bad(
                    &self.shards[e.shard].path,
                    format!("tensor {name} is {new} {how}, as is another tensor"),
                ));
            }
            order.push(new.clone());
            tensors.insert(new, e);
        }
        self.tensors = tensors;
        self.order = order;
        Ok(())
    }

    /// Tensor `name` presented as `parts` in its place in the order: each a
    /// new name, shape and [`View`] of its stored elements (`None`: the
    /// tensor as stored, renamed). Nothing is copied; an error names the file
    /// and the tensor when a view reaches past the stored elements or a new
    /// name is taken.
    pub fn present_as(
        &mut self,
        name: &str,
        parts: Vec<(String, Vec<usize>, Option<View>)>,
    ) -> Result<(), HfError> {
        let Some(e) = self.tensors.remove(name) else {
            return Ok(());
        };
        let path = self.shards[e.shard].path.clone();
        let stored: usize = e.shape.iter().product();
        let at = self
            .order
            .iter()
            .position(|n| n == name)
            .unwrap_or(self.order.len());
        self.order.remove(at);
        for (i, (new, shape, view)) in parts.into_iter().enumerate() {
            if view.is_some() && dtype_size(e.dtype) == 0 {
                return Err(bad(
                    &path,
                    format!(
                        "tensor {name}: dtype {:?}, {new} can only be presented from F32, F16 or BF16",
                        e.dtype
                    ),
                ));
            }
            if let Some(v) = &view {
                let n: usize = shape.iter().product();
                let last = (n > 0).then(|| v.source_indices(&shape, n - 1, 1)[0]);
                if v.strides.len() != shape.len() || last.is_some_and(|l| l >= stored) {
                    return Err(bad(
                        &path,
                        format!(
                            "tensor {name}: shape {:?} holds no {new} of shape {shape:?}",
                            e.shape
                        ),
                    ));
                }
            }
            if self.tensors.contains_key(&new) {
                return Err(bad(
                    &path,
                    format!("tensor {name} is presented as {new}, as is another tensor"),
                ));
            }
            let part = TensorEntry {
                shape,
                view,
                ..e.clone()
            };
            self.order.insert(at + i, new.clone());
            self.tensors.insert(new, part);
        }
        Ok(())
    }

    /// Stored tensors `blocks` and `scales`, an MXFP4 pair as gpt-oss stores
    /// its experts (see [`Mxfp4Pair`]), presented as `parts` in the place of
    /// `scales` in the order: each a new name and the `step` and `offset` of
    /// its rows, shape `[.., rows / step, cols]`, read as F32 (dequantized).
    /// Nothing is copied; an error names the file and the tensor when the two
    /// are not such a pair (dtypes, shapes, one missing).
    pub fn present_mxfp4(
        &mut self,
        blocks: &str,
        scales: &str,
        parts: &[(String, usize, usize)],
    ) -> Result<(), HfError> {
        let (b, s) = match (self.tensors.get(blocks), self.tensors.get(scales)) {
            (Some(b), Some(s)) => (b.clone(), s.clone()),
            (Some(b), None) | (None, Some(b)) => {
                let (have, missing) = match self.tensors.contains_key(blocks) {
                    true => (blocks, scales),
                    false => (scales, blocks),
                };
                return Err(bad(
                    self.shard_path(b),
                    format!("tensor {have}: MXFP4 blocks and scales come in pairs, {missing} is missing"),
                ));
            }
            (None, None) => return Ok(()),
        };
        let err = |name: &str, e: &TensorEntry, what: String| {
            bad(self.shard_path(e), format!("tensor {name}: {what}"))
        };
        for (name, e) in [(blocks, &b), (scales, &s)] {
            if e.dtype != Dtype::U8 {
                return Err(err(
                    name,
                    e,
                    format!("dtype {:?}, MXFP4 blocks and scales are U8", e.dtype),
                ));
            }
        }
        let n = b.shape.len();
        if n < 3 || b.shape[n - 1] != 16 {
            return Err(err(
                blocks,
                &b,
                format!(
                    "shape {:?}, MXFP4 blocks are [.., rows, cols / 32, 16]",
                    b.shape
                ),
            ));
        }
        if s.shape[..] != b.shape[..n - 1] {
            return Err(err(
                scales,
                &s,
                format!(
                    "shape {:?}, the scales of {blocks} {:?} are {:?}",
                    s.shape,
                    b.shape,
                    &b.shape[..n - 1]
                ),
            ));
        }
        let rows = b.shape[n - 3];
        let at = self
            .order
            .iter()
            .position(|x| x == scales)
            .unwrap_or(self.order.len());
        let pair = Mxfp4Pair {
            scales: (s.shard, s.start..s.end),
            step: 1,
            offset: 0,
        };
        let mut named = Vec::new();
        for (new, step, offset) in parts {
            if *step == 0 || rows % step != 0 || offset >= step {
                return Err(err(
                    blocks,
                    &b,
                    format!(
                        "shape {:?}: its {rows} rows are not {step} interleaved tensors",
                        b.shape
                    ),
                ));
            }
            if self.tensors.contains_key(new) {
                return Err(err(
                    blocks,
                    &b,
                    format!("presented as {new}, as is another tensor"),
                ));
            }
            let mut shape = b.shape[..n - 2].to_vec();
            shape[n - 3] = rows / step;
            shape.push(b.shape[n - 2] * 32);
            let part = TensorEntry {
                dtype: Dtype::F32,
                shape,
                view: None,
                mxfp4: Some(Box::new(Mxfp4::Pair(Mxfp4Pair {
                    step: *step,
                    offset: *offset,
                    ..pair.clone()
                }))),
                ..b.clone()
            };
            named.push((new.clone(), part));
        }
        self.tensors.remove(blocks);
        self.tensors.remove(scales);
        for (i, (new, part)) in named.into_iter().enumerate() {
            self.order.insert(at + i, new.clone());
            self.tensors.insert(new, part);
        }
        self.order.retain(|x| x != blocks && x != scales);
        Ok(())
    }

    /// Rows `first..first + n` of MXFP4 tensor `name` (entry `e`; its rows
    /// counted over all leading dimensions) as ggml `block_mxfp4`s: per 32
    /// values the scale byte, then 16 bytes holding element `j` in the low
    /// nibble of byte `j` and element `j + 16` in the high one. The codes and
    /// scales are the stored ones: borrowed from the map when stored so
    /// ([`Mxfp4::Ggml`]), else moved ([`Mxfp4Pair`]), never recomputed. An
    /// error names the tensor and the row when a scale byte is 255 (E8M0's
    /// NaN, which llama.cpp refuses) or when `e` is not MXFP4.
    pub fn mxfp4_rows(
        &self,
        name: &str,
        e: &TensorEntry,
        first: usize,
        n: usize,
    ) -> Result<std::borrow::Cow<'_, [u8]>, HfError> {
        let nb = e.shape.last().copied().unwrap_or(0) / 32;
        let blocks = self.raw(e);
        let out = match e.mxfp4.as_deref() {
            None => {
                return Err(bad(
                    self.shard_path(e),
                    format!("tensor {name}: read as MXFP4 blocks, it is {:?}", e.dtype),
                ))
            }
            Some(Mxfp4::Ggml) => {
                std::borrow::Cow::Borrowed(&blocks[first * nb * 17..(first + n) * nb * 17])
            }
            Some(Mxfp4::Pair(p)) => {
                let scales = &self.shards[p.scales.0].map[p.scales.1.clone()];
                let mut out = Vec::with_capacity(n * nb * 17);
                for r in first..first + n {
                    // Row `r` of the tensor, over all leading dimensions, is stored row `r · step + offset`.
                    let stored = r * p.step + p.offset;
                    for k in stored * nb..(stored + 1) * nb {
                        let src = &blocks[k * 16..(k + 1) * 16];
                        let code = |i: usize| (src[i / 2] >> (4 * (i % 2))) & 0x0f;
                        out.push(scales[k]);
                        out.extend((0..16).map(|j| code(j) | (code(j + 16) << 4)));
                    }
                }
                std::borrow::Cow::Owned(out)
            }
        };
        if let Some(k) = out.chunks_exact(17).position(|b| b[0] == 0xff) {
            return Err(bad(
                self.shard_path(e),
                format!(
                    "tensor {name}: row {}, block {}: MXFP4 scale byte 255 (E8M0's NaN), \
                     which llama.cpp refuses",
                    first + k / nb.max(1),
                    k % nb.max(1)
                ),
            ));
        }
        Ok(out)
    }

    /// Rows `first..` of MXFP4 tensor `name` dequantized into `out` (whole
    /// rows), as ggml's `dequantize_row_mxfp4` computes them; errors as
    /// [`Self::mxfp4_rows`].
    pub fn mxfp4_f32_rows(
        &self,
        name: &str,
        e: &TensorEntry,
        first: usize,
        out: &mut [f32],
    ) -> Result<(), HfError> {
        let cols = e.shape.last().copied().unwrap_or(0).max(1);
        let q = self.mxfp4_rows(name, e, first, out.len() / cols)?;
        crate::quant::mxfp4::dequantize_row(&q, out);
        Ok(())
    }

    /// The tensor called `name`, if any.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// The raw bytes of a tensor as stored (the file's bytes, through the map;
    /// its rows in the file's order: [`TensorEntry::stored_rows`]).
    pub fn raw(&self, e: &TensorEntry) -> &[u8] {
        &self.shards[e.shard].map[e.start..e.end]
    }

    /// The bytes of tensor `name` (entry `e`) in its own row order: borrowed
    /// from the map, or, when the file moved its rows
    /// ([`TensorEntry::stored_rows`]) or the tensor is a [`View`], gathered
    /// into a buffer of its own (an F32 tensor the file stored as `1 + w`,
    /// [`crate::arch::Transform::AddOne`]: `w`, each value less 1; an MXFP4
    /// one: its values dequantized, as F32, or the error of
    /// [`Self::mxfp4_rows`]).
    pub fn bytes(
        &self,
        name: &str,
        e: &TensorEntry,
    ) -> Result<std::borrow::Cow<'_, [u8]>, HfError> {
        let raw = self.raw(e);
        if e.mxfp4.is_some() {
            let mut v = vec![0f32; e.shape.iter().product()];
            self.mxfp4_f32_rows(name, e, 0, &mut v)?;
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            return Ok(std::borrow::Cow::Owned(bytes));
        }
        if e.stored_rows == crate::arch::Transform::AddOne && e.dtype == Dtype::F32 {
            let mut out = raw.to_vec();
            unit_offset_removed(&mut out);
            return Ok(std::borrow::Cow::Owned(out));
        }
        if let Some(v) = &e.view {
            let n = e.shape.iter().product();
            return Ok(std::borrow::Cow::Owned(v.gather(
                raw,
                dtype_size(e.dtype),
                &e.shape,
                0,
                n,
            )));
        }
        let rows = e.shape.first().copied().unwrap_or(1);
        if e.stored_rows == crate::arch::Transform::None || rows == 0 {
            return Ok(std::borrow::Cow::Borrowed(raw));
        }
        let rb = raw.len() / rows;
        let mut out = vec![0u8; raw.len()];
        for (r, row) in out.chunks_exact_mut(rb.max(1)).enumerate() {
            let s = e.stored_rows.stored_row(r, rows);
            row.copy_from_slice(&raw[s * rb..(s + 1) * rb]);
        }
        Ok(std::borrow::Cow::Owned(out))
    }

    /// Widens a tensor to f32 into `out` (which must hold exactly its element count).
    pub fn read_f32_into(&self, name: &str, out: &mut [f32]) -> Result<(), HfError> {
        let e = self
            .entry(name)
            .ok_or_else(|| HfError::MissingTensor(name.to_string()))?;
        let raw = self.bytes(name, e)?;
        let path = &self.shards[e.shard].path;
        let n: usize = e.shape.iter().product();
        if out.len() != n {
            return Err(bad(
                path,
                format!("tensor {name}: {} values requested, it has {n}", out.len()),
            ));
        }
        if !widen(e.dtype, &raw, out) {
            return Err(bad(
                path,
                format!(
                    "tensor {name}: dtype {:?} is not supported (F32, F16, BF16 are)",
                    e.dtype
                ),
            ));
        }
        Ok(())
    }

    /// Drops a tensor's pages from this process's resident set once it has been
    /// converted, so reading a whole model through the map keeps RSS bounded.
    pub fn release(&self, e: &TensorEntry) {
        let map = &self.shards[e.shard].map;
        // SAFETY: MADV_DONTNEED on a read-only, file-backed mapping only discards
        // resident pages; any later access re-reads them from the file, so slices
        // into the map stay valid and see the same bytes.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, e.start, e.end - e.start)
        };
    }

    /// Tells the kernel every shard is read front to back once (aggressive readahead).
    pub fn advise_sequential(&self) {
        for s in &self.shards {
            let _ = s.map.advise(memmap2::Advice::Sequential);
        }
    }

    /// Starts reading bytes `range` of a tensor (relative to its first byte) into
    /// the page cache ahead of use. Out-of-range parts are ignored.
    pub fn prefetch(&self, e: &TensorEntry, range: std::ops::Range<usize>) {
        let (start, len) = (e.start + range.start, range.len());
        if range.start < range.end && start + len <= e.end {
            let _ = self.shards[e.shard]
                .map
                .advise_range(memmap2::Advice::WillNeed, start, len);
        }
    }

    /// [`Self::release`] for bytes `range` of a tensor (relative to its first byte),
    /// so that a large tensor streamed in chunks never becomes resident whole.
    pub fn release_range(&self, e: &TensorEntry, range: std::ops::Range<usize>) {
        let (start, len) = (e.start + range.start, range.len());
        if range.start < range.end && start + len <= e.end {
            // SAFETY: as in `release`: MADV_DONTNEED on a read-only file mapping only
            // drops resident pages, which later reads fetch again from the file.
            let _ = unsafe {
                self.shards[e.shard].map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    len,
                )
            };
        }
    }

    /// Path of the shard holding a tensor.
    pub fn shard_path(&self, e: &TensorEntry) -> &Path {
        &self.shards[e.shard].path
    }
}

/// A tensor's name in the text model (`None`: a tensor of another modality,
/// which `TextModel.filter_tensors` of llama.cpp's converter skips).
pub fn text_model_name(name: &str) -> Option<String> {
    const PREFIXES: &[&str] = &[
        "mlp",
        "vit.",
        "vpm.",
        "siglip2.",
        "conformer.",
        "merger.",
        "resampler.",
        "sound_encoder.",
        "sound_projection.",
        "speech_embeddings.",
    ];
    const PARTS: &[&str] = &[
        "visual.",
        "vision.",
        "audio.",
        "talker.",
        "vision_",
        "audio_",
        "token2wav.",
        "code2wav.",
        "projector.",
        "pre_mm_projector_norm",
        "image_newline",
        "view_seperator",
        "patch_embed",
        "patch_embedding",
        "patch_merger.",
        "patch_merge_mlp.",
        "model.connector.",
    ];
    if PREFIXES.iter().any(|p| name.starts_with(p)) || PARTS.iter().any(|p| name.contains(p)) {
        return None;
    }
    Some(name.replace("language_model.", ""))
}

#[cfg(test)]
mod text_model_tests {
    use super::text_model_name as t;

    #[test]
    fn other_towers_drop_and_the_language_model_prefix_goes() {
        assert_eq!(
            t("language_model.model.layers.0.mlp.up_proj.weight").as_deref(),
            Some("model.layers.0.mlp.up_proj.weight")
        );
        assert_eq!(
            t("model.language_model.embed_tokens.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            t("language_model.lm_head.weight").as_deref(),
            Some("lm_head.weight")
        );
        for other in [
            "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
            "multi_modal_projector.mm_input_projection_weight",
            "model.visual.blocks.0.attn.qkv.weight",
            "mlp1.0.weight",
        ] {
            assert_eq!(t(other), None, "{other}");
        }
        assert_eq!(
            t("h.0.mlp.c_fc.weight").as_deref(),
            Some("h.0.mlp.c_fc.weight")
        );
    }
}
