//! Reading Hugging Face checkpoints: `config.json`, memory-mapped safetensors
//! (single or sharded), and MODEL resolution in the local hub cache.

pub mod config;
pub mod convert_py;
pub mod hub;
pub mod safetensors;
pub mod tokenizer;

pub use config::{Arch, Config, ConfigError, RopeScaling};

use std::borrow::Cow;
use std::path::PathBuf;

/// Reads a whole file that must be a regular file of at most `limit` bytes.
/// Refuses devices and pipes (a `config.json` symlinked to `/dev/zero` would
/// otherwise be read forever) and stops reading at the limit even if the file
/// grows meanwhile, so no input costs more memory than its format deserves.
pub fn read_capped(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let meta = f.metadata()?;
    let too_big = |n: u64| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{n} bytes is more than the {limit}-byte limit for this file"),
        )
    };
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(meta.len() as usize)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::OutOfMemory, e.to_string()))?;
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// Opens a file for reading only if it is a regular file (after following
/// symlinks). The open does not block: a FIFO (named pipe) would otherwise wait
/// forever for a writer, so it is opened with `O_NONBLOCK` and refused.
pub fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let ft = f.metadata()?.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_dir() {
            "a folder"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("not a regular file ({kind})"),
        ));
    }
    Ok(f)
}

/// [`read_capped`], then UTF-8.
pub fn read_capped_string(path: &std::path::Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, limit)?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not valid UTF-8 (byte {} is not part of a UTF-8 character)",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Size limits of the JSON files of a checkpoint (real ones are far smaller).
pub mod limits {
    /// `config.json`, `generation_config.json`.
    pub const CONFIG_BYTES: u64 = 16 << 20;
    /// `README.md` (model cards are a few kB; the largest real ones under 1 MB).
    pub const CARD_BYTES: u64 = 16 << 20;
    /// `model.safetensors.index.json` (DeepSeek-V3's, with 90k tensors, is 9 MB).
    pub const INDEX_BYTES: u64 = 128 << 20;
    /// `tokenizer.json` and the other tokenizer files (the largest real ones are ~35 MB;
    /// parsed, JSON takes ~11x its size in memory).
    pub const TOKENIZER_BYTES: u64 = 128 << 20;
}

/// What is wrong with a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// MODEL is neither a folder nor a hub id in the local Hugging Face cache;
    /// the message says where it was looked for and how to download it.
    #[error("{0}")]
    NotFound(String),
    /// `config.json` is missing, unreadable or describes no architecture
    /// laquant supports.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file of the checkpoint is unusable: it cannot be opened or read, or its
    /// safetensors header or index is malformed or contradicts the files.
    #[error("{}: {what}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor where there is one.
        what: String,
    },
    /// A tensor asked for by its HF name is in no shard.
    #[error("tensor {0} is not in the checkpoint")]
    MissingTensor(String),
}

/// An HF checkpoint folder: config and memory-mapped safetensors shards.
pub struct Checkpoint {
    /// The checkpoint folder (for a hub id, its snapshot in the cache).
    pub dir: PathBuf,
    /// The parsed `config.json`.
    pub config: Config,
    /// The safetensors shards, mapped, with every tensor's place.
    pub shards: safetensors::Shards,
    /// Whether every weight is stored as an `nn.Linear` weight is, `[out, in]`,
    /// whatever the spec says: a checkpoint rebuilt from a GGUF file, whose
    /// `Conv1D` weights the converter transposed
    /// ([`crate::gguf_input::rebuild`]); nothing is transposed on read then.
    pub linear_layout: bool,
}

impl Checkpoint {
    /// MODEL is a folder or a hub id `org/name` resolved in the local HF cache.
    pub fn open(model: &str) -> Result<Checkpoint, HfError> {
        let dir = hub::resolve(model)?;
        let config = Config::load(&dir)?;
        let mut shards = safetensors::Shards::open(&dir)?;
        shards.as_text_model()?;
        if let Some(rename) = crate::arch::hf_rename(config.arch) {
            shards.as_family(rename)?;
        }
        if let Some(present) = crate::arch::hf_views(config.arch) {
            present(&mut shards)?;
        }
        if let (Some(n), Some(pos)) = (
            config.position_offset,
            config.arch.tensors.global_name(crate::arch::Role::PosEmbd),
        ) {
            shards.drop_leading_rows(&pos, n as usize)?;
        }
        // Saved from the base model (GPT-2's own checkpoints: `h.0.…`, `wte`):
        // the names lack the first part of the spec's layer prefix
        // (`transformer.`, transformers' `base_model_prefix`).
        let lp = config.arch.tensors.layer_prefix;
        if let Some((base, inner)) = lp.split_once('.').filter(|(_, i)| !i.is_empty()) {
            let has = |p: &str| shards.order.iter().any(|n| n.starts_with(p));
            if !has(lp) && has(inner) {
                shards.add_prefix(&format!("{base}."))?;
            }
        }
        Ok(Checkpoint {
            dir,
            config,
            shards,
            linear_layout: false,
        })
    }

    /// HF tensor names in llama.cpp's converter order.
    pub fn tensor_names(&self) -> Vec<String> {
        self.shards.order.clone()
    }

    /// Whether the checkpoint holds a tensor of this HF name.
    pub fn has_tensor(&self, hf_name: &str) -> bool {
        self.shards.entry(hf_name).is_some()
    }

    /// Whether HF tensor `hf_name` is a `Conv1D` weight, stored `[in, out]`
    /// and read transposed, as the `nn.Linear` weight it stands for
    /// ([`crate::arch::TransformRule::Transpose`]).
    pub fn stored_transposed(&self, hf_name: &str) -> bool {
        !self.linear_layout && crate::arch::stored_transposed(&self.config, hf_name)
    }

    /// Shape in torch order (rows first: [out, in] for a Linear weight, and
    /// for a Conv1D weight, which is stored [in, out]).
    pub fn tensor_shape(&self, hf_name: &str) -> Result<Vec<usize>, HfError> {
        let e = self.entry(hf_name)?;
        match self.stored_transposed(hf_name) {
            true => self.conv1d_dims(hf_name, e).map(|(i, o)| vec![o, i]),
            false => Ok(e.shape.clone()),
        }
    }

    /// The tensor's raw bytes as read, in its stored dtype: borrowed from the
    /// map, except a Conv1D weight's, transposed here into a buffer of its
    /// own that lives as long as the caller keeps it. Transposing on each
    /// read (never at open) keeps what a run holds in memory to the tensors
    /// it is working on, whatever the checkpoint's size.
    pub fn tensor_bytes(&self, hf_name: &str) -> Result<Cow<'_, [u8]>, HfError> {
        let e = self.entry(hf_name)?;
        let raw = self.shards.bytes(hf_name, e)?;
        if !self.stored_transposed(hf_name) {
            return Ok(raw);
        }
        let (rows, cols) = self.conv1d_dims(hf_name, e)?;
        let size = self.element_size(hf_name, e)?;
        let mut out = vec![0u8; raw.len()];
        for (r, row) in raw.chunks_exact(cols * size).enumerate() {
            for (c, v) in row.chunks_exact(size).enumerate() {
                let dst = (c * rows + r) * size;
                out[dst..dst + size].copy_from_slice(v);
            }
        }
        Ok(Cow::Owned(out))
    }

    /// The tensor widened to f32 (from F32/F16/BF16), torch order, row-major.
    pub fn tensor_f32(&self, hf_name: &str) -> Result<Vec<f32>, HfError> {
        let e = self.entry(hf_name)?;
        let raw = self.tensor_bytes(hf_name)?;
        let mut v = vec![0f32; e.shape.iter().product()];
        if !safetensors::widen(e.dtype, &raw, &mut v) {
            return Err(self.unsupported_dtype(hf_name, e));
        }
        Ok(v)
    }

    /// Rows `rows` of the tensor (as read: a Conv1D weight's rows are its
    /// stored columns, gathered one by one) widened to f32, `width` values
    /// each, into `out`; nothing else of the tensor is read.
    pub fn tensor_rows_f32(
        &self,
        hf_name: &str,
        width: usize,
        rows: &[usize],
        out: &mut [f32],
    ) -> Result<(), HfError> {
        let e = self.entry(hf_name)?;
        let size = self.element_size(hf_name, e)?;
        let shape = self.tensor_shape(hf_name)?;
        let n: usize = shape.iter().product();
        let file = |what: String| HfError::File {
            path: self.shards.shard_path(e).to_path_buf(),
            what,
        };
        if width == 0 || !n.is_multiple_of(width) || out.len() != rows.len() * width {
            return Err(file(format!(
                "tensor {hf_name}: shape {shape:?} is not rows of {width} ({} values asked)",
                out.len()
            )));
        }
        let (raw, stride) = (self.shards.raw(e), n / width);
        let transposed = self.stored_transposed(hf_name);
        // Rows the file moved (a GGUF's Q/K permutation) are read where they are.
        let offset = e.stored_rows == crate::arch::Transform::AddOne;
        let moved = !offset && e.stored_rows != crate::arch::Transform::None;
        if moved && (transposed || e.shape.first() != Some(&stride)) {
            return Err(file(format!(
                "tensor {hf_name}: rows of {width} asked, its rows were moved as {:?}",
                e.stored_rows
            )));
        }
        if e.mxfp4.is_some() && shape.last() != Some(&width) {
            return Err(file(format!(
                "tensor {hf_name}: MXFP4 rows of {width} asked, its rows are {shape:?}'s last"
            )));
        }
        let mut bytes = vec![0u8; width * size];
        for (o, &r) in out.chunks_exact_mut(width).zip(rows) {
            if r >= stride {
                return Err(file(format!(
                    "tensor {hf_name}: row {r} asked, it has {stride}"
                )));
            }
            if e.mxfp4.is_some() {
                self.shards.mxfp4_f32_rows(hf_name, e, r, o)?;
                continue;
            }
            if let Some(v) = &e.view {
                bytes.copy_from_slice(&v.gather(raw, size, &e.shape, r * width, width));
            } else if transposed {
                for (c, b) in bytes.chunks_exact_mut(size).enumerate() {
                    let src = (c * stride + r) * size;
                    b.copy_from_slice(&raw[src..src + size]);
                }
            } else {
                let r = e.stored_rows.stored_row(r, stride);
                bytes.copy_from_slice(&raw[r * width * size..(r + 1) * width * size]);
                if offset && e.dtype == ::safetensors::Dtype::F32 {
                    safetensors::unit_offset_removed(&mut bytes);
                }
            }
            if !safetensors::widen(e.dtype, &bytes, o) {
                return Err(self.unsupported_dtype(hf_name, e));
            }
        }
        Ok(())
    }

    fn entry(&self, hf_name: &str) -> Result<&safetensors::TensorEntry, HfError> {
        self.shards
            .entry(hf_name)
            .ok_or_else(|| HfError::MissingTensor(hf_name.to_string()))
    }

    /// A Conv1D weight's stored `[in, out]`.
    fn conv1d_dims(
        &self,
        hf_name: &str,
        e: &safetensors::TensorEntry,
    ) -> Result<(usize, usize), HfError> {
        match e.shape[..] {
            [i, o] => Ok((i, o)),
            _ => Err(HfError::File {
                path: self.shards.shard_path(e).to_path_buf(),
                what: format!(
                    "tensor {hf_name}: shape {:?}, a Conv1D weight is 2-D ([in, out])",
                    e.shape
                ),
            }),
        }
    }

    /// Bytes per element of a tensor laquant reads (F32, F16, BF16).
    fn element_size(&self, hf_name: &str, e: &safetensors::TensorEntry) -> Result<usize, HfError> {
        match safetensors::dtype_size(e.dtype) {
            0 => Err(self.unsupported_dtype(hf_name, e)),
            size => Ok(size),
        }
    }

    fn unsupported_dtype(&self, hf_name: &str, e: &safetensors::TensorEntry) -> HfError {
        HfError::File {
            path: self.shards.shard_path(e).to_path_buf(),
            what: format!(
                "tensor {hf_name}: dtype {:?} is not supported (F32, F16, BF16 are)",
                e.dtype
            ),
        }
    }

    /// The model's display name: the folder name (hub snapshots use the repo name).
    pub fn model_name(&self) -> String {
        let comps: Vec<String> = self
            .dir
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        // .../models--org--name/snapshots/<rev>
        if comps.len() >= 3 && comps[comps.len() - 2] == "snapshots" {
            if let Some(n) = comps[comps.len() - 3].strip_prefix("models--") {
                return n.rsplit("--").next().unwrap_or(n).to_string();
            }
        }
        self.dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    }
}
