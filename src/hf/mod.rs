//! Reading Hugging Face checkpoints: `config.json`, memory-mapped safetensors
//! (single or sharded), and MODEL resolution in the local hub cache.

pub mod config;
pub mod convert_py;
pub mod hub;
pub mod safetensors;
pub mod tokenizer;

pub use config::{Arch, Config, ConfigError, RopeScaling};

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
}

impl Checkpoint {
    /// MODEL is a folder or a hub id `org/name` resolved in the local HF cache.
    pub fn open(model: &str) -> Result<Checkpoint, HfError> {
        let dir = hub::resolve(model)?;
        let config = Config::load(&dir)?;
        let mut shards = safetensors::Shards::open(&dir)?;
        shards.as_text_model()?;
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
        // Conv1D weights (`[in, out]`) are read as the Linear weights they stand for.
        let stored_transposed: Vec<String> = shards
            .order
            .iter()
            .filter(|n| crate::arch::stored_transposed(&config, n))
            .cloned()
            .collect();
        for name in stored_transposed {
            shards.transpose(&name)?;
        }
        Ok(Checkpoint {
            dir,
            config,
            shards,
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

    /// Shape in torch order (rows first: [out, in] for a Linear weight).
    pub fn tensor_shape(&self, hf_name: &str) -> Result<Vec<usize>, HfError> {
        self.shards
            .entry(hf_name)
            .map(|e| e.shape.clone())
            .ok_or_else(|| HfError::MissingTensor(hf_name.to_string()))
    }

    /// The tensor widened to f32 (from F32/F16/BF16), torch order, row-major.
    pub fn tensor_f32(&self, hf_name: &str) -> Result<Vec<f32>, HfError> {
        let n: usize = self.tensor_shape(hf_name)?.iter().product();
        let mut v = vec![0f32; n];
        self.shards.read_f32_into(hf_name, &mut v)?;
        Ok(v)
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
