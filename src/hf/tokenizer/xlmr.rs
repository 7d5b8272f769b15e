//! `XLMRobertaModel.set_vocab` (`_xlmroberta_set_vocab` in
//! `conversion/bert.py`) from `sentencepiece.bpe.model`: the Unigram pieces
//! padded to `max(config vocab_size, pieces)` with `[PADi]`, then realigned
//! to fairseq's ids as transformers' `XLMRobertaTokenizer` numbers them
//! (`<s> <pad> </s> <unk>` at 0-3, piece `i >= 3` at `i + 1`, the last entry
//! dropped), written as `tokenizer.ggml.model` `t5` with the normalizer's
//! flags and precompiled charsmap, then gguf-py's `SpecialVocab`.
//!
//! The converter's other path, `tokenizer.json` alone through
//! `AutoTokenizer`, is refused with a message naming the missing file.

use std::path::Path;

use serde_json::Value as Json;

use super::sentencepiece;
use super::token_type::*;
use super::{
    config_usize, keys, padded_pieces, read_spm, spm_pieces, write_vocab, Files, Kv, Result,
    SpecialVocab, TokenizerError, Vocab,
};
use crate::gguf::{Value, ValueType};

/// The SentencePiece model XLM-R checkpoints carry.
pub const SPM_FILE: &str = "sentencepiece.bpe.model";

pub(super) fn set_vocab(kv: &mut Kv, files: &Files, config: &Json) -> Result<()> {
    let path = files.dir.join(SPM_FILE);
    if !path.is_file() {
        return Err(TokenizerError::Unsupported {
            path,
            msg: "missing: laquant reads an XLM-RoBERTa vocabulary from its SentencePiece \
                  model, not from tokenizer.json alone"
                .into(),
        });
    }
    let buf = read_spm(&path)?;
    let pieces = spm_pieces(&path, &buf)?;
    let specs = sentencepiece::parse_specs(&buf).map_err(|msg| TokenizerError::SentencePiece {
        path: path.clone(),
        msg,
    })?;
    if specs.model_type != sentencepiece::UNIGRAM {
        return Err(TokenizerError::SentencePiece {
            path,
            msg: format!(
                "trainer_spec.model_type is {}, not UNIGRAM (1), which XLMRobertaModel's \
                 converter requires",
                specs.model_type
            ),
        });
    }
    let vocab = realigned(files, config, &path, &pieces)?;
    write_vocab(kv, "t5", "default", &vocab);
    kv.set(keys::ADD_PREFIX, Value::Bool(specs.add_dummy_prefix));
    let n_types = match config.get("type_vocab_size") {
        None => 1,
        Some(v) => config_usize(v, files, "type_vocab_size")?,
    };
    kv.set(keys::TOKEN_TYPE_COUNT, Value::U32(n_types as u32));
    kv.set(
        keys::REMOVE_EXTRA_WS,
        Value::Bool(specs.remove_extra_whitespaces),
    );
    if !specs.precompiled_charsmap.is_empty() {
        let bytes = specs.precompiled_charsmap.iter().map(|&b| Value::U8(b));
        kv.set(
            keys::PRECOMPILED_CHARSMAP,
            Value::Array(ValueType::U8, bytes.collect()),
        );
    }
    let n = vocab.tokens.len();
    SpecialVocab::load(files, config, false, Some(n), None)?.add_to(kv);
    Ok(())
}

/// The pieces padded and realigned as the converter does.
fn realigned(
    files: &Files,
    config: &Json,
    path: &Path,
    pieces: &[sentencepiece::Piece],
) -> Result<Vocab> {
    let cfg_size = match config.get("vocab_size") {
        None => 0,
        Some(v) => config_usize(v, files, "vocab_size")?,
    };
    let n = cfg_size.max(pieces.len());
    if n < 4 {
        return Err(TokenizerError::SentencePiece {
            path: path.into(),
            msg: format!("{n} pieces: XLM-R's vocabulary starts with 4 special tokens"),
        });
    }
    let Vocab {
        mut tokens,
        scores,
        mut types,
    } = padded_pieces(pieces, n);
    let mut scores = scores.unwrap_or_default();
    // fairseq's ids: <s> <pad> </s> <unk>, then piece i (i >= 3) at i + 1.
    let head = ["<s>", "<pad>", "</s>", "<unk>"].map(String::from);
    let tokens = head.into_iter().chain(tokens.drain(3..n - 1)).collect();
    let scores = [0.0; 4].into_iter().chain(scores.drain(3..n - 1)).collect();
    let types = [CONTROL, CONTROL, CONTROL, UNKNOWN]
        .into_iter()
        .chain(types.drain(3..n - 1))
        .collect();
    Ok(Vocab {
        tokens,
        scores: Some(scores),
        types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentencepiece::{Piece, PieceType};
    use serde_json::json;

    fn piece(p: &str, kind: PieceType) -> Piece {
        Piece {
            piece: p.into(),
            score: -(p.len() as f32),
            kind,
        }
    }

    /// The converter's realignment on a 6-piece model under a config of 8:
    /// fairseq's four first, pieces 3.. shifted by one, the padding's first
    /// entry kept and its last dropped.
    #[test]
    fn realigns_to_fairseqs_ids() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::load(dir.path()).unwrap();
        let pieces = vec![
            piece("<unk>", PieceType::Unknown),
            piece("<s>", PieceType::Control),
            piece("</s>", PieceType::Control),
            piece("▁a", PieceType::Normal),
            piece("b", PieceType::UserDefined),
            piece("▁cc", PieceType::Normal),
        ];
        let v = realigned(&files, &json!({"vocab_size": 8}), dir.path(), &pieces).unwrap();
        assert_eq!(
            v.tokens,
            ["<s>", "<pad>", "</s>", "<unk>", "▁a", "b", "▁cc", "[PAD6]"]
        );
        assert_eq!(
            v.types,
            [CONTROL, CONTROL, CONTROL, UNKNOWN, NORMAL, NORMAL, NORMAL, UNUSED]
        );
        let s = v.scores.unwrap();
        assert_eq!(s, [0.0, 0.0, 0.0, 0.0, -4.0, -1.0, -5.0, -10000.0]);
        let Err(e) = realigned(&files, &json!({"vocab_size": 2}), dir.path(), &pieces[..3]) else {
            panic!("3 pieces realigned")
        };
        let e = e.to_string();
        assert!(e.contains("4 special tokens"), "{e}");
    }
}
