//! Python compatibility: the `general.*` metadata (name, basename, size label,
//! license, tags, languages, base models, datasets, recommended sampling) that
//! llama.cpp's `convert_hf_to_gguf.py` writes, reproduced value for value and
//! type for type, and its default output file name. Everything here emulates
//! Python or a Python library, which is what the module's name says:
//!
//! - `pyvalue`: values as Python holds them after `yaml.safe_load`/`json.load`;
//! - `pystr`: the `str` methods the heuristics call (`title`, `splitlines`...);
//! - `yaml`: PyYAML's YAML 1.1 `safe_load` of the model card's front matter;
//! - `naming`: gguf-py's model-id heuristics and size labels;
//! - `metadata`: reading the folder, the heuristics, and the keys written.
//!
//! Mirrors, in llama.cpp's gguf-py: `Metadata.load`, `load_model_card` (the
//! YAML front matter of `README.md`, read with PyYAML's YAML 1.1 rules),
//! `load_hf_parameters` (`_name_or_path` of `config.json`),
//! `load_generation_config`, `get_model_id_components`, `id_to_title`,
//! `apply_metadata_heuristic` and `set_gguf_meta_model` (`gguf/metadata.py`);
//! `size_label` and `naming_convention` (`gguf/utility.py`); and the part of
//! `ModelBase.prepare_metadata` (`conversion/base.py`) that falls back to the
//! folder name and computes the size label, with `set_type` writing
//! `general.type` just before the model card keys.
//!
//! Python's dynamic typing leaks into the file: a model card's `version: 1.0` is
//! a float that convert cannot write, `language: [en, yes]` is a mixed array
//! (YAML 1.1 reads `yes` as true), `top_k: 40` from `generation_config.json` is
//! an INT32 while `top_p` is a FLOAT32. Values are therefore kept as Python
//! would hold them ([`PyValue`]) until they are written, and every case where
//! convert would stop with an exception is a [`CardError`] here.
//!
//! Not covered: the `--metadata` override file and `--remote` (hub) naming of
//! convert; LoRA adapters (negative parameter counts).

mod metadata;
mod naming;
mod pystr;
mod pyvalue;
mod yaml;

pub use metadata::{
    default_file_stem, general_metadata, CardError, CardInput, QUANTIZATION_VERSION,
};
pub use naming::{
    id_to_title, model_id_components, size_label, weight_count_notation, IdComponents,
};
pub use pyvalue::PyValue;
pub use yaml::parse_model_card;
