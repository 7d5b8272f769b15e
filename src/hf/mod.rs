//! Reading Hugging Face checkpoints: `config.json`, memory-mapped safetensors
//! (single or sharded), and MODEL resolution in the local hub cache.

pub mod card;
pub mod config;
pub mod hub;
pub mod safetensors;
pub mod tokenizer;

pub use config::{Arch, Config, ConfigError, RopeScaling};

use std::path::PathBuf;

/// What is wrong with a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}: {what}", path.display())]
    File { path: PathBuf, what: String },
    #[error("tensor {0} is not in the checkpoint")]
    MissingTensor(String),
}

/// An HF checkpoint folder: config and memory-mapped safetensors shards.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Config,
    pub shards: safetensors::Shards,
}

impl Checkpoint {
    /// MODEL is a folder or a hub id `org/name` resolved in the local HF cache.
    pub fn open(model: &str) -> Result<Checkpoint, HfError> {
        let dir = hub::resolve(model)?;
        let config = Config::load(&dir)?;
        let shards = safetensors::Shards::open(&dir)?;
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
