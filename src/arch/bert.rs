//! The BERT family's encoders: `BertModel` (and `BertForMaskedLM`, whose
//! masked-LM head the converter drops) and `XLMRobertaModel`
//! (`BertModel`/`XLMRobertaModel` in `convert_hf_to_gguf.py`'s
//! `conversion/bert.py`). Token, token-type and learned position embeddings
//! summed and LayerNormed, bidirectional attention with separate Q, K, V,
//! post-LayerNorm residuals (`attn_output_norm`, `layer_output_norm`), a
//! non-gated GELU MLP, biases on every linear and norm, no output head (the
//! pooler is dropped), and the pooling sentence-transformers declares. BERT
//! has the WordPiece vocabulary; XLM-R the SentencePiece Unigram one, and
//! positions that start after the padding id (the first `pad_token_id + 1`
//! rows of its position embeddings are dropped). The encoder's forward pass
//! is [`crate::calib::Encoder`] (equal to llama.cpp's embeddings,
//! `tests/encoder_interop.rs`); the decoders' pass, and with it calibration,
//! eval and la-mix/`--target-bpw`, still refuse these models.

use super::spec::*;
use super::Role;

/// The family of `BertModel`, `BertForMaskedLM`.
pub static BERT: ArchSpec = ArchSpec {
    hf_classes: &["BertModel", "BertForMaskedLM"],
    gguf_arch: "bert",
    vocab: VocabKind::BertWordPiece,
    tensors: tensors(&BERT_GLOBAL),
    hparams: HPARAMS,
    block: BLOCK,
};

/// The family of `XLMRobertaModel`, `XLMRobertaForSequenceClassification`.
pub static XLMR: ArchSpec = ArchSpec {
    hf_classes: &["XLMRobertaModel", "XLMRobertaForSequenceClassification"],
    gguf_arch: "bert",
    vocab: VocabKind::XlmRobertaUnigram,
    tensors: tensors(&XLMR_GLOBAL),
    hparams: HPARAMS,
    block: BLOCK,
};

/// `BertModel.filter_tensors`' renames: `bert.` removed (the base model under
/// a head class: `BertForMaskedLM`), `.gamma`/`.beta` as `.weight`/`.bias`
/// (old checkpoints), the masked-LM and next-sentence heads (`cls.predictions.*`,
/// `cls.seq_relationship.*`) dropped.
pub fn bert_name(name: &str) -> Option<String> {
    let name = name.strip_prefix("bert.").unwrap_or(name);
    if name.starts_with("cls.predictions") || name.starts_with("cls.seq_relationship") {
        return None;
    }
    Some(
        match (name.strip_suffix(".gamma"), name.strip_suffix(".beta")) {
            (Some(b), _) => format!("{b}.weight"),
            (_, Some(b)) => format!("{b}.bias"),
            _ => name.to_string(),
        },
    )
}

/// `XLMRobertaModel.filter_tensors`: `roberta.` removed, then BERT's renames.
pub fn xlmr_name(name: &str) -> Option<String> {
    bert_name(name.strip_prefix("roberta.").unwrap_or(name))
}

const fn tensors(global: &'static [TensorRule]) -> TensorRules {
    TensorRules {
        global,
        layer_prefix: "encoder.layer.",
        layer: LAYER,
        // The converter drops the pooler and the position ids buffer.
        skipped_suffixes: &[
            "embeddings.position_ids",
            "pooler.dense.weight",
            "pooler.dense.bias",
        ],
        experts: None,
    }
}

const BERT_GLOBAL: [TensorRule; 4] = global(TransformRule::None);
/// BERT's embeddings with positions after the padding id, and a reranker's
/// classifier head (`XLMRobertaForSequenceClassification`), optional.
const XLMR_GLOBAL: [TensorRule; 6] = {
    let [a, b, c, d] = global(TransformRule::SkipPaddingPositions);
    [
        a,
        b,
        c,
        d,
        TensorRule {
            required: false,
            ..TensorRule::with_bias("classifier.dense", Role::Cls)
        },
        TensorRule {
            required: false,
            ..TensorRule::with_bias("classifier.out_proj", Role::ClsOut)
        },
    ]
};

/// The embeddings and their norm, the positions' transform given.
const fn global(positions: TransformRule) -> [TensorRule; 4] {
    [
        TensorRule::with_bias("embeddings.LayerNorm", Role::TokenEmbdNorm),
        TensorRule {
            transform: positions,
            ..TensorRule::plain("embeddings.position_embeddings", Role::PosEmbd)
        },
        TensorRule {
            // llama.cpp loads it as optional (type_vocab_size may be 0).
            required: false,
            ..TensorRule::plain("embeddings.token_type_embeddings", Role::TokenTypes)
        },
        TensorRule::plain("embeddings.word_embeddings", Role::TokenEmbd),
    ]
}

const LAYER: &[TensorRule] = &[
    TensorRule::with_bias("attention.output.LayerNorm", Role::AttnOutNorm),
    TensorRule::with_bias("attention.output.dense", Role::AttnOutput),
    TensorRule::with_bias("attention.self.key", Role::AttnK),
    TensorRule::with_bias("attention.self.query", Role::AttnQ),
    TensorRule::with_bias("attention.self.value", Role::AttnV),
    TensorRule::with_bias("intermediate.dense", Role::FfnUp),
    TensorRule::with_bias("output.LayerNorm", Role::LayerOutNorm),
    TensorRule::with_bias("output.dense", Role::FfnDown),
];

const HPARAMS: HparamSpec = HparamSpec {
    attention_bias_default: true,
    layout: Some(&[
        Hp::BlockCount,
        Hp::ContextLength,
        Hp::EmbeddingLength,
        Hp::FeedForwardLength,
        Hp::HeadCount,
        Hp::LayerNormEps,
        Hp::FileType,
        Hp::NonCausal,
        Hp::PoolingType,
        Hp::ClassifierOutputLabels,
    ]),
    aliases: &[("rms_norm_eps", "layer_norm_eps")],
    ..HparamSpec::TEXT_MODEL
};

const BLOCK: BlockSpec = BlockSpec {
    norm: Norm::Layer,
    positions: Positions::Learned,
    attention: Attention {
        kind: AttentionKind::BidirectionalSeparateQkv,
        ..Attention::fused(QkvSplit::Sequential)
    },
    ffn: Ffn::Plain { act: Act::Gelu },
    residual: Residual::PostLayerNorm,
    ffn_norm: Role::FfnNorm,
    scales: Scales::NONE,
    nope_every: None,
    matmuls: &[
        Matmul {
            role: Role::AttnQ,
            hf: "attention.self.query",
            input: Input::AttnIn,
        },
        Matmul {
            role: Role::AttnK,
            hf: "attention.self.key",
            input: Input::AttnIn,
        },
        Matmul {
            role: Role::AttnV,
            hf: "attention.self.value",
            input: Input::AttnIn,
        },
        Matmul {
            role: Role::AttnOutput,
            hf: "attention.output.dense",
            input: Input::AttnOut,
        },
        Matmul {
            role: Role::FfnUp,
            hf: "intermediate.dense",
            input: Input::FfnIn,
        },
        Matmul {
            role: Role::FfnDown,
            hf: "output.dense",
            input: Input::FfnDown,
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_the_converter_filters_them() {
        let n = |s: &str| bert_name(s);
        assert_eq!(
            n("bert.encoder.layer.0.output.dense.weight").as_deref(),
            Some("encoder.layer.0.output.dense.weight")
        );
        assert_eq!(
            n("embeddings.LayerNorm.gamma").as_deref(),
            Some("embeddings.LayerNorm.weight")
        );
        assert_eq!(
            n("bert.embeddings.LayerNorm.beta").as_deref(),
            Some("embeddings.LayerNorm.bias")
        );
        assert_eq!(n("cls.predictions.transform.dense.weight"), None);
        assert_eq!(n("cls.seq_relationship.bias"), None);
        // BERT keeps a `roberta.` name (which then maps nowhere); XLM-R strips it.
        assert_eq!(
            n("roberta.pooler.dense.bias").as_deref(),
            Some("roberta.pooler.dense.bias")
        );
        assert_eq!(
            xlmr_name("roberta.pooler.dense.bias").as_deref(),
            Some("pooler.dense.bias")
        );
        assert_eq!(
            xlmr_name("roberta.embeddings.LayerNorm.gamma").as_deref(),
            Some("embeddings.LayerNorm.weight")
        );
    }
}
