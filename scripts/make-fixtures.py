#!/usr/bin/env python3
"""Make laquant's tiny test checkpoints: Hugging Face folders with random weights and real tokenizers.

    python3 scripts/make-fixtures.py [--out fixtures] [--only NAME ...]
    python3 scripts/make-fixtures.py --big DIR [--layers N] [--shape tinyllama|llama3-8b]   # random Llama, benchmarks

Every fixture is deterministic (fixed seeds; tokenizers trained single-threaded on the committed
calibration text) and small (each folder < 5 MB). Needs python3 with numpy, tokenizers, sentencepiece
and transformers (only to turn a SentencePiece model into its tokenizer.json). safetensors files are
written by hand (8-byte header length, JSON header, raw little-endian data), so no torch is needed.

Fixtures (all widths multiples of 32, so Q8_0 applies everywhere):
  llama-bpe        Llama, byte-level BPE (llama3 pre-tokenizer), hidden 256 / ffn 512 / head_dim 64, GQA 4:2,
                   every matrix width a multiple of 256 (K-quant targets), bf16, top-level rope_theta
  tinyllama-spm    Llama (TinyLlama style), SentencePiece tokenizer.model + tokenizer.json, f32, MQA, linear rope scaling
  mistral-spm      Mistral, SentencePiece, f16, rope_theta 1e6
  qwen2-tied       Qwen2, byte-level BPE (qwen2 pre-tokenizer, NFC), q/k/v biases, tied embeddings (std 0.05, so the
                   tied head's distributions are not one-hot), config vocab padded past the tokenizer, yarn rope scaling
  qwen3-sharded    Qwen3, q/k norms, head_dim 64 with hidden 128, `dtype` + `rope_parameters` (newer style),
                   two shards with model.safetensors.index.json, chat_template.jinja
  llama3-rope      Llama with llama3 rope scaling (rope_freqs), tied embeddings
  granite          Granite, made by transformers itself (GraniteForCausalLM from its config, save_pretrained, seed 21):
                   its four multipliers, tied embeddings, the llama-bpe tokenizer
  gemma2           Gemma 2, made by transformers itself (seed 22): norms with +1, sandwich norms, GELU-tanh, attention
                   and final logit soft-capping (small caps, so tanh bends), sliding window 16 on alternate layers,
                   a Gemma-style SentencePiece tokenizer (no dummy prefix, <start_of_turn>/<end_of_turn>)
  gemma3           Gemma 3, made by transformers itself (Gemma3ForCausalLM, seed 23): Gemma 2's block with q/k norms, no
                   soft-capping, 6 layers (llama.cpp's sliding pattern: 5 sliding, 1 global), window 16, local RoPE
                   base 100 against 10000, linear RoPE scaling 4 (global layers only), the gemma2 tokenizer with
                   Gemma 3's chat template (system folded in)
  gemma3-mm        Gemma 3 with its vision tower (Gemma3ForConditionalGeneration, seed 25): the text model under
                   `language_model.`, a tiny SigLIP tower and projector the converter skips, hidden 128
  phi3             Phi-3, made by transformers itself (Phi3ForCausalLM, seed 26): fused qkv_proj and gate_up_proj, GQA 4:2,
                   partial rotary 0.75 and LongRoPE factors (Phi-4-mini's shape: 131072 positions over 4096), sliding window
                   2047 (written, not applied by llama.cpp), untied head, the mistral-spm SentencePiece tokenizer, Phi-3's template
  qwen3moe, qwen2moe, mixtral, olmoe
                   mixtures of experts, made by transformers itself (seeds 31-34), the llama-bpe tokenizer:
                   Qwen3-MoE (4 experts, top 2, normalised top-k, q/k norms), Qwen2-MoE (4 experts, top 2,
                   shared expert and its sigmoid gate, q/k/v biases), Mixtral (8 experts, top 2: llama.cpp's
                   8-expert preset rules), OLMoE (4 experts, top 2, q/k norms over the whole projection)
  stablelm         StableLM, made by transformers itself (StableLmForCausalLM, seed 22): LayerNorm with bias, partial
                   rotary (0.25), q/k/v biases, GPT-2-style BPE (the llama-bpe tokenizer), zephyr chat template
  olmo2            OLMo 2, made by transformers (seed 23, norm weights randomized): post-attention and post-FFN
                   norms, Q/K norms over the whole projection, GQA 4:2, the qwen2-tied tokenizer, OLMo 2's chat template
  smollm3          SmolLM3, made by transformers (seed 24, norm weights randomized): 4 layers, the 4th a NoPE layer,
                   tied embeddings, a Llama-3-style BPE with ChatML specials, ChatML template
  gptneox          GPT-NeoX, made by transformers itself (GPTNeoXForCausalLM, seed 23): fused QKV interleaved per
                   head, biases on every linear, GELU MLP, parallel residual, partial rotary (0.25), the llama-bpe
                   tokenizer
  gpt2             GPT-2, made by transformers itself (GPT2LMHeadModel, seed 25): Conv1D weights stored [in, out],
                   fused QKV, biases on every linear, GELU MLP, learned absolute positions, tied embeddings, a
                   byte-level BPE with GPT-2's pre-tokenizer and <|endoftext|>
  starcoder2       StarCoder2, made by transformers itself (Starcoder2ForCausalLM, seed 27): LayerNorm with bias, biases
                   on every linear, full RoPE (no Q/K permutation), non-gated GELU-tanh MLP, GQA 4:2, tied embeddings,
                   the llama-bpe tokenizer, zephyr chat template
  gpt-oss          gpt-oss, made by transformers itself (GptOssForCausalLM, seed 35): 4 pre-stacked unquantized experts
                   (gate/up interleaved by column) with biases, top 2, router bias, attention sinks, q/k/v/o biases,
                   yarn RoPE, sliding window 32 on alternate layers, hidden 64, the llama-bpe tokenizer
  gpt-oss-mxfp4    gpt-oss as openai ships it (seed 37): gpt-oss's model with its experts quantized here to MXFP4 and
                   stored as the real checkpoints store them (`*_blocks` uint8 [E, rows, cols/32, 16], `*_scales`
                   uint8 [E, rows, cols/32], [out, in], gate/up rows interleaved), quantization_config as gpt-oss-20b's
  bert             BERT, made by transformers itself (BertModel without its pooler, seed 26): an encoder with token type
                   and learned position embeddings, post-LayerNorms, a cased WordPiece tokenizer, sentence-transformers
                   mean pooling (modules.json, 1_Pooling/config.json)
  bert-mlm         BertForMaskedLM, made by transformers itself (seed 28, F32, 1 layer, hidden 128): the encoder under
                   `bert.` and the masked-LM head the converter drops, bert's tokenizer, no pooling declared
  xlmr             XLM-RoBERTa, made by transformers itself (XLMRobertaModel with its pooler, seed 27): BERT's encoder
                   with positions after pad_token_id 1, one token type, a SentencePiece Unigram tokenizer
                   (sentencepiece.bpe.model, NFKC charsmap) and XLMRobertaTokenizerFast's tokenizer.json, CLS pooling
  xlmr-rerank      XLMRobertaForSequenceClassification with one label (a reranker), made by transformers itself (seed 29,
                   F16, 1 layer, hidden 128): the classifier head the converter writes as cls/cls.output, xlmr's tokenizer
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CALIB = Path(os.environ.get("LAQUANT_CALIB", ROOT.parent / "shared" / "corpus" / "calib"))

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)
# OLMo 2 Instruct's (Tulu's) template.
OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}{% if not loop.last %}"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}{% else %}"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


# ----------------------------------------------------------------------------------------------
# safetensors, by hand
# ----------------------------------------------------------------------------------------------

def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """f32 -> bf16 bit patterns, round to nearest even (as torch does); NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def encode_tensor(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "BF16":
        return to_bf16_bits(x).astype("<u2").tobytes()
    if dtype == "F16":
        return x.astype("<f2").tobytes()
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    raise ValueError(dtype)


def write_safetensors(path: Path, tensors: list[tuple[str, np.ndarray]], dtype: str) -> int:
    """Writes tensors (name, f32 array) in the given dtype; returns the data size in bytes."""
    return write_raw_safetensors(
        path, [(name, dtype, list(x.shape), encode_tensor(x, dtype)) for name, x in tensors], sort=False)


def write_model(out: Path, tensors: list[tuple[str, np.ndarray]], dtype: str, shards: int = 1) -> None:
    if shards == 1:
        write_safetensors(out / "model.safetensors", tensors, dtype)
        return
    per = (len(tensors) + shards - 1) // shards
    weight_map = {}
    total = 0
    for i in range(shards):
        part = tensors[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        total += write_safetensors(out / fname, part, dtype)
        for name, _ in part:
            weight_map[name] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    write_json(out / "model.safetensors.index.json", index)


def write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------

def make_weights(cfg: dict, seed: int, *, qkv_bias=False, qk_norm=False,
                 embed_std: float = 0.5) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    h = cfg["hidden_size"]
    ff = cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh
    v = cfg["vocab_size"]

    def mat(rows, cols, std=0.02):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    def vec(n):
        return (0.02 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    t = [("model.embed_tokens.weight", mat(v, h, embed_std))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.append((p + "input_layernorm.weight", norm(h)))
        t.append((p + "self_attn.q_proj.weight", mat(nh * hd, h, 0.1)))
        t.append((p + "self_attn.k_proj.weight", mat(nkv * hd, h, 0.1)))
        t.append((p + "self_attn.v_proj.weight", mat(nkv * hd, h)))
        if qkv_bias:
            t.append((p + "self_attn.q_proj.bias", vec(nh * hd)))
            t.append((p + "self_attn.k_proj.bias", vec(nkv * hd)))
            t.append((p + "self_attn.v_proj.bias", vec(nkv * hd)))
        if qk_norm:
            t.append((p + "self_attn.q_norm.weight", norm(hd)))
            t.append((p + "self_attn.k_norm.weight", norm(hd)))
        t.append((p + "self_attn.o_proj.weight", mat(h, nh * hd)))
        t.append((p + "post_attention_layernorm.weight", norm(h)))
        t.append((p + "mlp.gate_proj.weight", mat(ff, h)))
        t.append((p + "mlp.up_proj.weight", mat(ff, h)))
        t.append((p + "mlp.down_proj.weight", mat(h, ff)))
    t.append(("model.norm.weight", norm(h)))
    if not cfg.get("tie_word_embeddings", False):
        t.append(("lm_head.weight", mat(v, h, 0.1)))
    # HF writes tensors sorted by name; do the same so shard splits look like real ones.
    t.sort(key=lambda kv: kv[0])
    return t


# ----------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------

def corpus_lines() -> list[str]:
    files = sorted(CALIB.glob("*.txt"))
    if not files:
        sys.exit(f"error: no calibration text in {CALIB} (set LAQUANT_CALIB)")
    lines = []
    for f in files:
        lines += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines


def train_bpe(vocab_size: int, regex: str, specials: list[str], *, nfc: bool, ignore_merges: bool,
              bos: str | None) -> str:
    """Trains a byte-level BPE on the calibration corpus; returns tokenizer.json text."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials), min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus_lines(), trainer)
    tok.add_special_tokens(specials)
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = ignore_merges
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    if bos is None:
        j["post_processor"] = bl
    else:
        bos_id = next(a["id"] for a in j["added_tokens"] if a["content"] == bos)
        j["post_processor"] = {"type": "Sequence", "processors": [bl, {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }]}
    return json.dumps(j, indent=2, ensure_ascii=False) + "\n"


def train_spm(vocab_size: int) -> bytes:
    """Trains a Llama-style SentencePiece BPE model (byte fallback, identity normalization, dummy prefix)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        character_coverage=0.98, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, shuffle_input_sentence=False,
        max_sentencepiece_length=16, minloglevel=2,
    )
    return buf.getvalue()


def spm_tokenizer_json(model: bytes, legacy: bool) -> str:
    """tokenizer.json for a SentencePiece model, as transformers converts it (LlamaTokenizerFast): legacy=True gives
    the Prepend+Replace normalizer of Llama 2 / TinyLlama repos, legacy=False the Metaspace(prepend_scheme=first)
    pre-tokenizer of newer ones."""
    from transformers import LlamaTokenizerFast

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "tokenizer.model"
        p.write_bytes(model)
        fast = LlamaTokenizerFast(vocab_file=str(p), legacy=legacy, add_prefix_space=True, add_bos_token=True,
                                  add_eos_token=False, from_slow=True)
        fast.save_pretrained(d)
        j = json.loads((Path(d) / "tokenizer.json").read_text(encoding="utf-8"))
    return json.dumps(j, indent=2, ensure_ascii=False) + "\n"


def added_tokens_decoder(tokenizer_json: str) -> dict:
    j = json.loads(tokenizer_json)
    return {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in j["added_tokens"]}


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_cache: dict = {}


def llama3_tokenizer() -> str:
    if "llama3" not in _cache:
        _cache["llama3"] = train_bpe(1024, LLAMA3_REGEX, LLAMA3_SPECIALS, nfc=False, ignore_merges=True,
                                     bos="<|begin_of_text|>")
    return _cache["llama3"]


def qwen_tokenizer() -> str:
    if "qwen" not in _cache:
        _cache["qwen"] = train_bpe(768, QWEN2_REGEX, QWEN_SPECIALS, nfc=True, ignore_merges=False, bos=None)
    return _cache["qwen"]


def spm_model(legacy: bool) -> tuple[bytes, str]:
    if "spm" not in _cache:
        _cache["spm"] = train_spm(1200)
    m = _cache["spm"]
    return m, spm_tokenizer_json(m, legacy)


def special_id(tokenizer_json: str, content: str) -> int:
    return next(a["id"] for a in json.loads(tokenizer_json)["added_tokens"] if a["content"] == content)


def write_bpe_tokenizer(out: Path, tj: str, *, bos: str | None, eos: str, pad: str | None, template: str,
                        add_bos: bool, tokenizer_class: str, template_file: bool = False) -> None:
    (out / "tokenizer.json").write_text(tj, encoding="utf-8")
    tc = {
        "add_bos_token": add_bos,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder(tj),
        "bos_token": bos,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": pad,
        "tokenizer_class": tokenizer_class,
    }
    if template_file:
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    else:
        tc["chat_template"] = template
    write_json(out / "tokenizer_config.json", tc)
    special = {"eos_token": eos}
    if bos:
        special["bos_token"] = bos
    if pad:
        special["pad_token"] = pad
    write_json(out / "special_tokens_map.json", special)


def write_spm_tokenizer(out: Path, template: str, legacy: bool) -> int:
    model, tj = spm_model(legacy)
    (out / "tokenizer.model").write_bytes(model)
    (out / "tokenizer.json").write_text(tj, encoding="utf-8")
    tc = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added_tokens_decoder(tj),
        "bos_token": "<s>",
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": legacy,
        "model_max_length": 2048,
        "pad_token": "</s>",
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    }
    write_json(out / "tokenizer_config.json", tc)
    write_json(out / "special_tokens_map.json",
               {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"})
    return len(json.loads(tj)["model"]["vocab"])


def llama_cfg(**kw) -> dict:
    c = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "mlp_bias": False,
        "model_type": "llama",
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "use_cache": True,
    }
    c.update(kw)
    return dict(sorted(c.items()))


def fx_llama_bpe(out: Path) -> None:
    tj = llama3_tokenizer()
    n = len(json.loads(tj)["model"]["vocab"]) + len(LLAMA3_SPECIALS)
    bos, eos, eot = (special_id(tj, s) for s in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"))
    cfg = llama_cfg(bos_token_id=bos, eos_token_id=eos, head_dim=64, hidden_size=256, intermediate_size=512,
                    max_position_embeddings=2048, num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=2,
                    rope_theta=500000.0, tie_word_embeddings=False, torch_dtype="bfloat16",
                    transformers_version="4.45.0", vocab_size=n)
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": bos, "do_sample": True, "eos_token_id": [eos, eot],
                                                 "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.45.0"})
    write_bpe_tokenizer(out, tj, bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, template=LLAMA3_TEMPLATE,
                        add_bos=True, tokenizer_class="PreTrainedTokenizerFast")
    write_model(out, make_weights(cfg, 1), "BF16")


def fx_llama3_rope(out: Path) -> None:
    tj = llama3_tokenizer()
    n = len(json.loads(tj)["model"]["vocab"]) + len(LLAMA3_SPECIALS)
    bos, eos, eot = (special_id(tj, s) for s in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"))
    cfg = llama_cfg(bos_token_id=bos, eos_token_id=[eos, eot], head_dim=64, hidden_size=128, intermediate_size=384,
                    max_position_embeddings=131072, num_attention_heads=2, num_hidden_layers=2, num_key_value_heads=1,
                    rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                    rope_theta=500000.0, tie_word_embeddings=True, torch_dtype="bfloat16",
                    transformers_version="4.45.0.dev0", vocab_size=n)
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": bos, "do_sample": True, "eos_token_id": [eos, eot],
                                                 "temperature": 0.6, "top_p": 0.9,
                                                 "transformers_version": "4.45.0.dev0"})
    write_bpe_tokenizer(out, tj, bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, template=LLAMA3_TEMPLATE,
                        add_bos=True, tokenizer_class="PreTrainedTokenizerFast")
    write_model(out, make_weights(cfg, 6), "BF16")


def fx_tinyllama_spm(out: Path) -> None:
    n = write_spm_tokenizer(out, ZEPHYR_TEMPLATE, legacy=True)
    cfg = llama_cfg(bos_token_id=1, eos_token_id=2, hidden_size=128, intermediate_size=352,
                    max_position_embeddings=4096, num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=1,
                    rope_scaling={"factor": 2.0, "type": "linear"}, rope_theta=10000.0, tie_word_embeddings=False,
                    torch_dtype="float32", transformers_version="4.35.0", vocab_size=n)
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "max_length": 2048,
                                                 "pad_token_id": 0, "transformers_version": "4.35.0"})
    write_model(out, make_weights(cfg, 2), "F32")


def fx_mistral_spm(out: Path) -> None:
    n = write_spm_tokenizer(out, MISTRAL_TEMPLATE, legacy=False)
    cfg = {
        "architectures": ["MistralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 128,
        "initializer_range": 0.02,
        "intermediate_size": 384,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.42.0.dev0",
        "use_cache": True,
        "vocab_size": n,
    }
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2,
                                                 "transformers_version": "4.42.0.dev0"})
    write_model(out, make_weights(cfg, 3), "F16")


def fx_qwen2_tied(out: Path) -> None:
    tj = qwen_tokenizer()
    n = len(json.loads(tj)["model"]["vocab"]) + len(QWEN_SPECIALS)
    eot, im_end = special_id(tj, "<|endoftext|>"), special_id(tj, "<|im_end|>")
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "hidden_act": "silu",
        "hidden_size": 128,
        "initializer_range": 0.02,
        "intermediate_size": 384,
        "max_position_embeddings": 32768,
        "max_window_layers": 21,
        "model_type": "qwen2",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        # Real Qwen2 checkpoints pad the embedding past the tokenizer (151936 > 151665); so does this one.
        "vocab_size": (n + 63) // 64 * 64 + 64,
    }
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": eot, "do_sample": True, "eos_token_id": [im_end, eot],
                                                 "pad_token_id": eot, "repetition_penalty": 1.1, "temperature": 0.7,
                                                 "top_k": 20, "top_p": 0.8, "transformers_version": "4.43.1"})
    write_bpe_tokenizer(out, tj, bos=None, eos="<|im_end|>", pad="<|endoftext|>", template=CHATML_TEMPLATE,
                        add_bos=False, tokenizer_class="Qwen2Tokenizer")
    # The output head is the embedding: at make_weights' std 0.5 the logit of the current token (0.5 x 128)
    # dwarfs the rest and every next-token distribution is one-hot on it (PPL ~1e27, every KLD 0), so
    # `laquant eval`'s comparison with llama-perplexity would compare nothing. At 0.05 the top token holds
    # ~20% of the mass (PPL ~1100 over 768 tokens).
    write_model(out, make_weights(cfg, 4, qkv_bias=True, embed_std=0.05), "BF16")


def fx_qwen3_sharded(out: Path) -> None:
    tj = qwen_tokenizer()
    n = len(json.loads(tj)["model"]["vocab"]) + len(QWEN_SPECIALS)
    eot, im_end = special_id(tj, "<|endoftext|>"), special_id(tj, "<|im_end|>")
    cfg = {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": eot,
        "dtype": "bfloat16",
        "eos_token_id": im_end,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 128,
        "initializer_range": 0.02,
        "intermediate_size": 384,
        "layer_types": ["full_attention", "full_attention"],
        "max_position_embeddings": 40960,
        "max_window_layers": 28,
        "model_type": "qwen3",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": False,
        "transformers_version": "5.0.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": n,
    }
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": eot, "do_sample": True, "eos_token_id": [im_end, eot],
                                                 "pad_token_id": eot, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                                                 "transformers_version": "5.0.0"})
    write_bpe_tokenizer(out, tj, bos=None, eos="<|im_end|>", pad="<|endoftext|>", template=CHATML_TEMPLATE,
                        add_bos=False, tokenizer_class="Qwen2Tokenizer", template_file=True)
    write_model(out, make_weights(cfg, 5, qk_norm=True), "BF16", shards=2)


def llama3_vocab() -> tuple[str, int, int, int]:
    """The llama-bpe tokenizer for the fixtures transformers makes: its JSON, vocabulary size, BOS and EOS ids."""
    tj = llama3_tokenizer()
    n = len(json.loads(tj)["model"]["vocab"]) + len(LLAMA3_SPECIALS)
    bos, eos = (special_id(tj, s) for s in ("<|begin_of_text|>", "<|end_of_text|>"))
    return tj, n, bos, eos


def fx_granite(out: Path) -> None:
    """Made by transformers itself: GraniteConfig -> GraniteForCausalLM (random init, fixed seed) -> save_pretrained."""
    import transformers

    tj, n, bos, eos = llama3_vocab()
    cfg = transformers.GraniteConfig(
        vocab_size=n, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6,
        embedding_multiplier=12.0, attention_multiplier=0.015625, residual_multiplier=0.22, logits_scaling=8.0,
        tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=None,
        initializer_range=0.1)
    save_transformers_model(out, lambda: transformers.GraniteForCausalLM(cfg), seed=21)
    write_bpe_tokenizer(out, tj, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, template=LLAMA3_TEMPLATE,
                        add_bos=True, tokenizer_class="PreTrainedTokenizerFast")


GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>"]


def train_gemma_spm(vocab_size: int) -> bytes:
    """A SentencePiece BPE model with Gemma's conventions: <pad> <eos> <bos> <unk> as ids 0-3, no dummy prefix,
    byte fallback, digits split, the turn markers as user-defined pieces."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        character_coverage=0.98, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=GEMMA_SPECIALS, num_threads=1, shuffle_input_sentence=False,
        max_sentencepiece_length=16, minloglevel=2,
    )
    return buf.getvalue()


def write_gemma_tokenizer(out: Path, template: str) -> int:
    """tokenizer.model plus the tokenizer.json transformers' GemmaTokenizerFast makes of it."""
    from transformers import GemmaTokenizerFast

    if "gemma-spm" not in _cache:
        _cache["gemma-spm"] = train_gemma_spm(1200)
    (out / "tokenizer.model").write_bytes(_cache["gemma-spm"])
    fast = GemmaTokenizerFast(vocab_file=str(out / "tokenizer.model"), from_slow=True, add_bos_token=True,
                              add_eos_token=False)
    fast.chat_template = template
    fast.save_pretrained(out)
    return len(fast)


def fx_gemma2(out: Path) -> None:
    """Made by transformers itself: Gemma2Config -> Gemma2ForCausalLM (random init, fixed seed) -> save_pretrained."""
    import torch
    import transformers

    n = write_gemma_tokenizer(out, GEMMA_TEMPLATE)
    cfg = transformers.Gemma2Config(
        vocab_size=n, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64, max_position_embeddings=4096,
        rope_theta=10000.0, rms_norm_eps=1e-6, attn_logit_softcapping=3.0, final_logit_softcapping=2.0,
        sliding_window=16, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, pad_token_id=0,
        eos_token_id=1, bos_token_id=2, initializer_range=0.1)
    torch.manual_seed(22)
    model = transformers.Gemma2ForCausalLM(cfg)
    gemma_random_norms(model)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)


def gemma_random_norms(model) -> None:
    """Gemma initialises its norms to 0 (a factor of 1): random ones show the converter's +1."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.2)


def fx_gemma3(out: Path) -> None:
    """Made by transformers itself: Gemma3TextConfig -> Gemma3ForCausalLM (random init, fixed seed) -> save_pretrained."""
    import torch
    import transformers

    n = write_gemma_tokenizer(out, GEMMA3_TEMPLATE)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=n, hidden_size=256, intermediate_size=256, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64, max_position_embeddings=4096,
        rope_theta=10000.0, rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 4.0},
        rms_norm_eps=1e-6, sliding_window=16, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, initializer_range=0.1)
    torch.manual_seed(23)
    model = transformers.Gemma3ForCausalLM(cfg)
    gemma_random_norms(model)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)


def fx_gemma3_mm(out: Path) -> None:
    """Made by transformers itself: Gemma3Config (text + a tiny SigLIP) -> Gemma3ForConditionalGeneration -> save_pretrained."""
    import torch
    import transformers

    n = write_gemma_tokenizer(out, GEMMA3_TEMPLATE)
    text = dict(
        vocab_size=n, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64, max_position_embeddings=4096,
        rope_theta=10000.0, rope_local_base_freq=100.0, rms_norm_eps=1e-6, sliding_window=16,
        hidden_activation="gelu_pytorch_tanh", pad_token_id=0, eos_token_id=1, bos_token_id=2,
        initializer_range=0.1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    image_token_index=n - 1, boi_token_index=n - 2,
                                    eoi_token_index=n - 3)
    torch.manual_seed(25)
    model = transformers.Gemma3ForConditionalGeneration(cfg)
    gemma_random_norms(model)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)


PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def fx_phi3(out: Path) -> None:
    """Made by transformers itself: Phi3Config -> Phi3ForCausalLM (random init, fixed seed) -> save_pretrained."""
    import torch
    import transformers

    write_spm_tokenizer(out, PHI3_TEMPLATE, legacy=False)
    # Phi-3's added tokens (llama.cpp gives a model named phi3 their rstrip attributes, by text).
    tok = transformers.AutoTokenizer.from_pretrained(out)
    tok.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                            "additional_special_tokens": ["<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]})
    tok.save_pretrained(out)
    n, eos = len(tok), tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = transformers.Phi3Config(
        vocab_size=n, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=131072, original_max_position_embeddings=4096,
        rope_theta=10000.0, partial_rotary_factor=0.75, rms_norm_eps=1e-5, sliding_window=2047,
        rope_scaling={"type": "longrope", "short_factor": [1.0 + 0.125 * i for i in range(24)],
                      "long_factor": [1.0 + 1.5 * i for i in range(24)]},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=eos, pad_token_id=eos, initializer_range=0.1)
    torch.manual_seed(26)
    model = transformers.Phi3ForCausalLM(cfg)
    with torch.no_grad():  # RMS norms initialised to 1: random ones around 1, so the checks see them
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
def randomize_norms_and_biases(model, seed: int) -> None:
    """transformers initialises LayerNorm weights to 1 and every bias to 0: random values instead, so that
    the checks see them (weights around 1, biases around 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name.lower() or ".ln_" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


def fx_stablelm(out: Path) -> None:
    """Made by transformers itself: StableLmConfig -> StableLmForCausalLM (random init, fixed seed) -> save_pretrained."""
    import transformers

    tj, n, bos, eos = llama3_vocab()
    cfg = transformers.StableLmConfig(
        vocab_size=n, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0, partial_rotary_factor=0.25,
        layer_norm_eps=1e-5, use_qkv_bias=True, use_parallel_residual=False, qk_layernorm=False,
        tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos, initializer_range=0.1)
    save_transformers_model(out, lambda: transformers.StableLmForCausalLM(cfg), seed=22, randomize=True)
    write_bpe_tokenizer(out, tj, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, template=ZEPHYR_TEMPLATE,
                        add_bos=False, tokenizer_class="PreTrainedTokenizerFast")


def fx_gptneox(out: Path) -> None:
    """Made by transformers itself: GPTNeoXConfig -> GPTNeoXForCausalLM (random init, fixed seed) -> save_pretrained."""
    import torch
    import transformers

    tj, n, bos, eos = llama3_vocab()
    cfg = transformers.GPTNeoXConfig(
        vocab_size=n, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        hidden_act="gelu", rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
        layer_norm_eps=1e-5, use_parallel_residual=True, attention_bias=True, tie_word_embeddings=False,
        bos_token_id=bos, eos_token_id=eos, initializer_range=0.02)
    save_transformers_model(out, lambda: transformers.GPTNeoXForCausalLM(cfg), seed=23, randomize=True,
                            dtype=torch.float16)
    write_bpe_tokenizer(out, tj, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, template=LLAMA3_TEMPLATE,
                        add_bos=False, tokenizer_class="PreTrainedTokenizerFast")


def fx_starcoder2(out: Path) -> None:
    """Made by transformers itself: Starcoder2Config -> Starcoder2ForCausalLM (random init, fixed seed) -> save_pretrained."""
    import torch
    import transformers

    tj, n, bos, eos = llama3_vocab()
    cfg = transformers.Starcoder2Config(
        vocab_size=n, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rope_theta=100000.0, norm_epsilon=1e-5,
        use_bias=True, hidden_act="gelu_pytorch_tanh", sliding_window=None, tie_word_embeddings=True,
        bos_token_id=bos, eos_token_id=eos, initializer_range=0.05)
    save_transformers_model(out, lambda: transformers.Starcoder2ForCausalLM(cfg), seed=27, randomize=True,
                            dtype=torch.float16)
    write_bpe_tokenizer(out, tj, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, template=ZEPHYR_TEMPLATE,
                        add_bos=False, tokenizer_class="PreTrainedTokenizerFast")


def fx_gpt_oss(out: Path, seed: int = 35) -> None:
    """Made by transformers itself: GptOssConfig -> GptOssForCausalLM (random init, fixed seed) -> save_pretrained.
    transformers saves the experts pre-stacked and unquantized (`mlp.experts.gate_up_proj` [E, hidden, 2 ff] with
    gate and up interleaved by column, `down_proj` [E, ff, hidden], their biases), the router with its bias,
    per-head attention sinks, q/k/v/o biases, yarn RoPE scaling and alternating sliding/full layer_types."""
    import torch
    import transformers

    tj, n, bos, eos = llama3_vocab()
    cfg = transformers.GptOssConfig(
        vocab_size=n, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=32,
        tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos, pad_token_id=None, initializer_range=0.1)

    def make():
        model = transformers.GptOssForCausalLM(cfg)
        # The experts' biases (`*_proj_bias`, zero at init) random too, so that their split is checked.
        g = torch.Generator().manual_seed(36)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("_proj_bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        return model

    save_transformers_model(out, make, seed=seed, randomize=True, dtype=torch.bfloat16)
    write_bpe_tokenizer(out, tj, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, template=ZEPHYR_TEMPLATE,
                        add_bos=False, tokenizer_class="PreTrainedTokenizerFast")


# E2M1 (FP4) values by code, as the OCP MX spec and transformers' integrations/mxfp4.py order them.
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                      dtype=np.float32)


def mxfp4_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., cols] f32 -> (blocks uint8 [..., cols/32, 16], scales uint8 [..., cols/32]) in gpt-oss's checkpoint
    layout: per 32 values one E8M0 scale byte (2^(s - 127)), 16 bytes of E2M1 codes, value 2i in the low nibble
    of byte i and 2i + 1 in the high one. The scale is the smallest power of two that brings the block into
    [-6, 6]: not always ggml's choice (floor(log2 amax) - 2), so the converter's bytes are not ggml's own
    quantization of the same values."""
    *lead, cols = w.shape
    g = w.reshape(*lead, cols // 32, 32).astype(np.float32)
    amax = np.abs(g).max(axis=-1)
    e = np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-30) / 6.0)), 0).astype(np.int32)
    scaled = g / np.ldexp(np.float32(1), e)[..., None]
    codes = np.abs(np.abs(scaled)[..., None] - FP4_VALUES[:8]).argmin(axis=-1).astype(np.uint8)
    codes |= np.where(np.signbit(scaled) & (codes > 0), 8, 0).astype(np.uint8)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (e + 127).astype(np.uint8)


def read_safetensors(path: Path) -> list[tuple[str, str, list[int], bytes]]:
    """(name, dtype, shape, raw bytes) of every tensor of a safetensors file, in its header's order."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return [(k, v["dtype"], v["shape"], data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in header.items()]


def write_raw_safetensors(path: Path, tensors: list[tuple[str, str, list[int], bytes]], sort: bool = True) -> int:
    """Writes (name, dtype, shape, raw bytes) tensors, sorted by name unless `sort` is false;
    returns the data size in bytes."""
    if sort:
        tensors = sorted(tensors)
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, raw in tensors:
            f.write(raw)
    return off


def fx_gpt_oss_mxfp4(out: Path) -> None:
    """gpt-oss as openai ships it: fx_gpt_oss's model (another seed, hidden and expert width 64, 4 experts) whose
    experts are stored as the real checkpoints store them, `mlp.experts.{gate_up,down}_proj_blocks` uint8
    [E, rows, cols/32, 16] and `*_scales` uint8 [E, rows, cols/32] in [out, in] orientation (gate_up's rows
    interleaved gate, up), the biases BF16, and config.json's `quantization_config` as gpt-oss-20b's."""
    fx_gpt_oss(out, seed=37)
    st = out / "model.safetensors"
    tensors = []
    for name, dtype, shape, raw in read_safetensors(st):
        stem, _, last = name.rpartition(".")
        if last in ("gate_up_proj", "down_proj"):
            assert dtype == "BF16"
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            w = bits.view(np.float32).reshape(shape)
            # Stored [E, in, out] unquantized; the MXFP4 blocks run along `in`, rows are `out`.
            blocks, scales = mxfp4_quantize(np.ascontiguousarray(w.transpose(0, 2, 1)))
            if last == "down_proj":
                # A block of zero codes under a nonzero scale: copied as stored, where ggml would write scale 0.
                blocks[1, 3, 0, :] = 0
            tensors.append((f"{stem}.{last}_blocks", "U8", list(blocks.shape), blocks.tobytes()))
            tensors.append((f"{stem}.{last}_scales", "U8", list(scales.shape), scales.tobytes()))
        else:
            tensors.append((name, dtype, shape, raw))
    write_raw_safetensors(st, tensors)
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                   "lm_head"],
        "quant_method": "mxfp4",
    }
    write_json(out / "config.json", cfg)


# GPT2TokenizerFast's former default chat template (transformers < 4.43).
GPT2_TEMPLATE = "{% for message in messages %}{{ message.content }}{{ eos_token }}{% endfor %}"


def gpt2_tokenizer() -> str:
    """A byte-level BPE with GPT-2's own pre-tokenizer (ByteLevel with its regex) and `<|endoftext|>` as the
    last id, trained on the calibration corpus; returns tokenizer.json text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1023, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus_lines(), trainer)
    tok.add_special_tokens(["<|endoftext|>"])
    return json.dumps(json.loads(tok.to_str()), indent=2, ensure_ascii=False) + "\n"


def fx_gpt2(out: Path) -> None:
    """Made by transformers itself: GPT2Config -> GPT2LMHeadModel (random init, fixed seed) -> save_pretrained."""
    import torch
    import transformers

    tj = gpt2_tokenizer()
    n = len(json.loads(tj)["model"]["vocab"]) + 1
    eot = special_id(tj, "<|endoftext|>")
    # n_ctx as GPT-2's own config.json has it (convert_hf_to_gguf.py reads it).
    cfg = transformers.GPT2Config(
        vocab_size=n, n_embd=256, n_layer=2, n_head=4, n_positions=512, n_ctx=512, n_inner=None,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=eot, eos_token_id=eot,
        initializer_range=0.02, tie_word_embeddings=True)
    save_transformers_model(out, lambda: transformers.GPT2LMHeadModel(cfg), seed=25, randomize=True,
                            dtype=torch.float16)
    write_bpe_tokenizer(out, tj, bos="<|endoftext|>", eos="<|endoftext|>", pad=None, template=GPT2_TEMPLATE,
                        add_bos=False, tokenizer_class="GPT2Tokenizer")


def write_bert_tokenizer(out: Path) -> int:
    """A WordPiece tokenizer (BertTokenizerFast, cased) trained on the corpus, saved in `out`; its length."""
    import transformers
    from tokenizers import BertWordPieceTokenizer, processors

    # Cased, as multilingual BERT is (lower-casing strips accents, and the vowel signs of Indic scripts with them).
    wp = BertWordPieceTokenizer(lowercase=False, strip_accents=False, clean_text=True, handle_chinese_chars=True)
    wp.train_from_iterator(corpus_lines(), vocab_size=1024, min_frequency=2, show_progress=False,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(  # BERT's own: [CLS] A [SEP] (B [SEP])
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = transformers.BertTokenizerFast(tokenizer_object=wp._tokenizer, do_lower_case=False, unk_token="[UNK]",
                                          sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                                          mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(out)
    return len(fast)


def fx_bert(out: Path) -> None:
    """Made by transformers itself: BertConfig -> BertModel (random init, fixed seed) -> save_pretrained, with a
    WordPiece tokenizer (BertTokenizerFast, cased) trained on the corpus and sentence-transformers' mean
    pooling (modules.json, 1_Pooling/config.json)."""
    import torch
    import transformers

    n = write_bert_tokenizer(out)
    cfg = transformers.BertConfig(
        vocab_size=n, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
        initializer_range=0.02)
    save_transformers_model(out, lambda: transformers.BertModel(cfg, add_pooling_layer=False), seed=26,
                            randomize=True, dtype=torch.float16)
    write_st_pooling(out, 256, cls=False)


def copy_tokenizer(out: Path, fixture: str, extra: list[str]) -> None:
    """Copies another fixture's tokenizer files (its special_tokens_map.json, tokenizer.json,
    tokenizer_config.json and `extra`) into `out`; that fixture must be made first."""
    src = out.parent / fixture
    files = ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", *extra]
    if not all((src / f).is_file() for f in files):
        sys.exit(f"error: {out.name} copies the {fixture} fixture's tokenizer: make {src} first")
    for f in files:
        shutil.copy(src / f, out / f)


def fx_bert_mlm(out: Path) -> None:
    """Made by transformers itself: BertForMaskedLM (random init, seed 28, F32) -> save_pretrained: the encoder
    under `bert.` and the masked-LM head (`cls.predictions.*`, its decoder tied to the word embeddings), which the
    converter drops; the bert fixture's tokenizer files (copied: the WordPiece trainer is not deterministic), no
    sentence-transformers files (no pooling key)."""
    import torch
    import transformers

    copy_tokenizer(out, "bert", ["vocab.txt"])
    n = len(transformers.BertTokenizerFast.from_pretrained(out))
    cfg = transformers.BertConfig(
        vocab_size=n, hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=128, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
        initializer_range=0.02)
    save_transformers_model(out, lambda: transformers.BertForMaskedLM(cfg), seed=28, randomize=True,
                            dtype=torch.float32)


def train_xlmr_spm(vocab_size: int) -> bytes:
    """A SentencePiece Unigram model with XLM-R's conventions: <unk> <s> </s> at ids 0-2, NFKC normalization
    (a precompiled charsmap), dummy prefix, extra whitespace removed."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        character_coverage=0.995, normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True,
        add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        shuffle_input_sentence=False, max_sentencepiece_length=16, minloglevel=2,
    )
    return buf.getvalue()


def fx_xlmr(out: Path) -> None:
    """Made by transformers itself: XLMRobertaConfig -> XLMRobertaModel (with its pooler, which the converter
    drops; random init, seed 27) -> save_pretrained, with a SentencePiece Unigram model trained on the corpus
    (sentencepiece.bpe.model) and the tokenizer.json XLMRobertaTokenizerFast makes of it; positions after
    pad_token_id 1 (the converter drops the first two rows), one token type, sentence-transformers' CLS pooling."""
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "sentencepiece.bpe.model"
        p.write_bytes(train_xlmr_spm(1000))
        fast = transformers.XLMRobertaTokenizerFast(vocab_file=str(p), model_max_length=512)
        fast.save_pretrained(out)
    cfg = transformers.XLMRobertaConfig(
        vocab_size=len(fast), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=514, type_vocab_size=1, hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, initializer_range=0.02)
    save_transformers_model(out, lambda: transformers.XLMRobertaModel(cfg), seed=27, randomize=True)
    write_st_pooling(out, 256, cls=True, normalize=True)


def fx_xlmr_rerank(out: Path) -> None:
    """Made by transformers itself: XLMRobertaForSequenceClassification with one label (a reranker's shape, as
    BAAI/bge-reranker-v2-m3; random init, seed 29, F16, 1 layer, hidden 128): the encoder under `roberta.` and the
    classifier head (`classifier.dense`, `classifier.out_proj`) the converter writes as `cls`, `cls.output`, with
    its label; the xlmr fixture's tokenizer files (copied), no sentence-transformers files."""
    import torch
    import transformers

    copy_tokenizer(out, "xlmr", ["sentencepiece.bpe.model"])
    n = len(transformers.XLMRobertaTokenizerFast.from_pretrained(out))
    cfg = transformers.XLMRobertaConfig(
        vocab_size=n, hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=130, type_vocab_size=1, hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, initializer_range=0.02, num_labels=1)
    save_transformers_model(out, lambda: transformers.XLMRobertaForSequenceClassification(cfg), seed=29,
                            randomize=True, dtype=torch.float16)


def write_st_pooling(out: Path, dim: int, *, cls: bool, normalize: bool = False) -> None:
    """sentence-transformers' module list (Transformer, Pooling, optionally Normalize) and its Pooling module's
    config: CLS pooling with `cls`, else mean pooling."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(out / "modules.json", modules)
    (out / "1_Pooling").mkdir()
    write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": dim, "pooling_mode_cls_token": cls, "pooling_mode_mean_tokens": not cls,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})


def save_transformers_model(out: Path, make, *, seed: int, randomize: bool = False, dtype=None) -> None:
    """`make()` (a transformers model, randomly initialized after seeding torch with `seed`) saved by
    `save_pretrained` in `dtype` (default bf16); with `randomize`, its norms and biases first
    (`randomize_norms_and_biases`)."""
    import torch

    torch.manual_seed(seed)
    model = make()
    if randomize:
        randomize_norms_and_biases(model, seed)
    model.to(dtype or torch.bfloat16).save_pretrained(out, safe_serialization=True)


def fx_moe(out: Path, family: str) -> None:
    """A mixture of experts made by transformers itself: its config class -> its ForCausalLM (random init, fixed
    seed) -> save_pretrained; experts and routers at initializer_range 0.1 so that routing is not uniform,
    norms and biases random."""
    import transformers

    tj, n, bos, eos = llama3_vocab()
    common = dict(vocab_size=n, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=bos,
                  eos_token_id=eos, pad_token_id=None, initializer_range=0.1)
    if family == "qwen3moe":
        cfg = transformers.Qwen3MoeConfig(hidden_size=256, head_dim=32, intermediate_size=512, moe_intermediate_size=256,
                                          num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, rms_norm_eps=1e-6,
                                          **common)
        cls, seed = transformers.Qwen3MoeForCausalLM, 31
    elif family == "qwen2moe":
        cfg = transformers.Qwen2MoeConfig(hidden_size=128, intermediate_size=512, moe_intermediate_size=256,
                                          shared_expert_intermediate_size=256, num_experts=4, num_experts_per_tok=2,
                                          norm_topk_prob=False, rms_norm_eps=1e-6, **common)
        cls, seed = transformers.Qwen2MoeForCausalLM, 32
    elif family == "mixtral":
        cfg = transformers.MixtralConfig(hidden_size=128, intermediate_size=256, num_local_experts=8,
                                         num_experts_per_tok=2, rms_norm_eps=1e-5, **common)
        cls, seed = transformers.MixtralForCausalLM, 33
    elif family == "olmoe":
        # llama.cpp's olmoe loads K norms of hidden_size: no grouped-query attention.
        cfg = transformers.OlmoeConfig(hidden_size=128, intermediate_size=256, num_experts=4, num_experts_per_tok=2,
                                       norm_topk_prob=False, rms_norm_eps=1e-5, **{**common, "num_key_value_heads": 4})
        cls, seed = transformers.OlmoeForCausalLM, 34
    else:
        raise ValueError(family)
    save_transformers_model(out, lambda: cls(cfg), seed=seed, randomize=True)
    write_bpe_tokenizer(out, tj, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, template=LLAMA3_TEMPLATE,
                        add_bos=True, tokenizer_class="PreTrainedTokenizerFast")


def fx_olmo2(out: Path) -> None:
    """Made by transformers itself: Olmo2Config -> Olmo2ForCausalLM (random init, fixed seed) -> save_pretrained."""
    import transformers

    tj = qwen_tokenizer()
    n = len(json.loads(tj)["model"]["vocab"]) + len(QWEN_SPECIALS)
    eot = special_id(tj, "<|endoftext|>")
    cfg = transformers.Olmo2Config(
        vocab_size=n, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=eot, eos_token_id=eot, pad_token_id=None, initializer_range=0.1)
    save_transformers_model(out, lambda: transformers.Olmo2ForCausalLM(cfg), seed=23, randomize=True)
    write_bpe_tokenizer(out, tj, bos="<|endoftext|>", eos="<|endoftext|>", pad=None, template=OLMO2_TEMPLATE,
                        add_bos=False, tokenizer_class="GPT2Tokenizer")


def fx_smollm3(out: Path) -> None:
    """Made by transformers itself: SmolLM3Config -> SmolLM3ForCausalLM (random init, fixed seed) -> save_pretrained.
    Four layers, so the last is a NoPE layer."""
    import transformers

    specials = LLAMA3_SPECIALS + ["<|im_start|>", "<|im_end|>"]
    tj = train_bpe(1024, LLAMA3_REGEX, specials, nfc=False, ignore_merges=True, bos="<|begin_of_text|>")
    bos, eos = (special_id(tj, s) for s in ("<|begin_of_text|>", "<|im_end|>"))
    cfg = transformers.SmolLM3Config(
        vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rope_theta=2000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=None, initializer_range=0.1)
    save_transformers_model(out, lambda: transformers.SmolLM3ForCausalLM(cfg), seed=24, randomize=True)
    write_bpe_tokenizer(out, tj, bos="<|begin_of_text|>", eos="<|im_end|>", pad=None, template=CHATML_TEMPLATE,
                        add_bos=False, tokenizer_class="PreTrainedTokenizerFast")


FIXTURES = {
    "llama-bpe": fx_llama_bpe,
    "tinyllama-spm": fx_tinyllama_spm,
    "mistral-spm": fx_mistral_spm,
    "qwen2-tied": fx_qwen2_tied,
    "qwen3-sharded": fx_qwen3_sharded,
    "llama3-rope": fx_llama3_rope,
    "granite": fx_granite,
    "gemma2": fx_gemma2,
    "gemma3": fx_gemma3,
    "gemma3-mm": fx_gemma3_mm,
    "qwen3moe": lambda out: fx_moe(out, "qwen3moe"),
    "qwen2moe": lambda out: fx_moe(out, "qwen2moe"),
    "mixtral": lambda out: fx_moe(out, "mixtral"),
    "olmoe": lambda out: fx_moe(out, "olmoe"),
    "stablelm": fx_stablelm,
    "olmo2": fx_olmo2,
    "smollm3": fx_smollm3,
    "gptneox": fx_gptneox,
    "phi3": fx_phi3,
    "gpt2": fx_gpt2,
    "starcoder2": fx_starcoder2,
    "gpt-oss": fx_gpt_oss,
    "gpt-oss-mxfp4": fx_gpt_oss_mxfp4,
    "bert": fx_bert,
    "bert-mlm": fx_bert_mlm,
    "xlmr": fx_xlmr,
    "xlmr-rerank": fx_xlmr_rerank,
}

README = """# fixtures

Tiny Hugging Face checkpoints with random weights and real tokenizers (trained on ../shared/corpus/calib),
made by `python3 scripts/make-fixtures.py` (deterministic; regenerate after changing the script and commit the result).

| folder | architecture | tokenizer | what it exercises |
|---|---|---|---|
| llama-bpe | LlamaForCausalLM | byte-level BPE, llama3 pre-tokenizer | widths multiples of 256 (hidden 256, ffn 512, head_dim 64), GQA 4:2, bf16, top-level rope_theta, list eos in generation_config |
| tinyllama-spm | LlamaForCausalLM | SentencePiece tokenizer.model (+ tokenizer.json) | f32 weights, MQA, linear rope scaling (old `type` key) |
| mistral-spm | MistralForCausalLM | SentencePiece | f16 weights, rope_theta 1e6 |
| qwen2-tied | Qwen2ForCausalLM | byte-level BPE, qwen2 pre-tokenizer, NFC | q/k/v biases, tied embeddings, config vocab padded past the tokenizer, yarn rope scaling |
| qwen3-sharded | Qwen3ForCausalLM | same as qwen2-tied, template in chat_template.jinja | q/k norms, head_dim 64 with hidden 128, `dtype` + `rope_parameters`, 2 shards + model.safetensors.index.json |
| llama3-rope | LlamaForCausalLM | as llama-bpe | llama3 rope scaling (rope_freqs.weight), tied embeddings, list eos_token_id in config |
| granite | GraniteForCausalLM | as llama-bpe | made by transformers (`GraniteForCausalLM(GraniteConfig(...))`, `save_pretrained`): embedding, attention and residual multipliers, logits scaling, tied embeddings |
| gemma2 | Gemma2ForCausalLM | Gemma-style SentencePiece (no dummy prefix, turn markers), tokenizer.json by GemmaTokenizerFast | made by transformers: norms with +1 (random), sandwich norms, GELU-tanh, soft-capping 3.0/2.0, sliding window 16 on alternate layers, tied embeddings |
| gemma3 | Gemma3ForCausalLM | as gemma2, Gemma 3's chat template (system folded into the first turn) | made by transformers: gemma2's block with q/k norms (+1), no soft-capping, 6 layers (5 sliding, window 16, local RoPE base 100; 1 global, base 10000, linear RoPE scaling 4) |
| gemma3-mm | Gemma3ForConditionalGeneration | as gemma3 | made by transformers: the text model under `language_model.` (2 layers, hidden 128) beside a tiny SigLIP vision tower and projector, which the converter skips |
| phi3 | Phi3ForCausalLM | SentencePiece as mistral-spm, Phi-3's chat template (`<|end|>` turns) | made by transformers: fused qkv_proj and gate_up_proj, GQA 4:2, partial rotary 0.75, LongRoPE short/long factors (131072 positions over 4096: attn_factor 1.19), sliding window 2047, untied head |
| qwen3moe | Qwen3MoeForCausalLM | as llama-bpe | made by transformers: 4 experts, top 2, normalised top-k probabilities, q/k norms, head_dim 32 with hidden 256, expert width 256 |
| qwen2moe | Qwen2MoeForCausalLM | as llama-bpe | made by transformers: 4 experts, top 2, shared expert with its sigmoid gate, q/k/v biases, hidden 128 |
| mixtral | MixtralForCausalLM | as llama-bpe | made by transformers: 8 experts (llama.cpp's 8-expert preset rules), top 2, hidden 128 |
| olmoe | OlmoeForCausalLM | as llama-bpe | made by transformers: 4 experts, top 2, q/k norms over the whole projection (no GQA: llama.cpp's olmoe needs it), hidden 128 |
| stablelm | StableLmForCausalLM | as llama-bpe (GPT-2-style BPE), zephyr template | made by transformers: LayerNorm with bias, partial rotary 0.25, q/k/v biases, random norm weights and biases |
| olmo2 | Olmo2ForCausalLM | as qwen2-tied, OLMo 2's (Tulu) chat template | made by transformers (norm weights drawn around 1): post-attention and post-FFN norms, Q/K norms over the whole projection, GQA 4:2 |
| smollm3 | SmolLM3ForCausalLM | byte-level BPE, llama3 pre-tokenizer, with `<\|im_start\|>`/`<\|im_end\|>` specials; ChatML template | made by transformers (norm weights drawn around 1): 4 layers, the 4th without RoPE (NoPE), tied embeddings, rope_theta 2e6 |
| gptneox | GPTNeoXForCausalLM | as llama-bpe (GPT-2-style BPE) | made by transformers: fused QKV interleaved per head, biases on every linear, GELU MLP, parallel residual, partial rotary 0.25, F16 weights |
| bert | BertModel | WordPiece (cased, BERT's [CLS] A [SEP] post-processor), trained on the corpus | made by transformers: an encoder (token type and learned position embeddings, post-LayerNorms, GELU), no pooler, sentence-transformers mean pooling (modules.json), random norms and biases, F16 weights |
| bert-mlm | BertForMaskedLM | as bert | made by transformers: the encoder under `bert.` (1 layer, hidden 128) and the masked-LM head (`cls.predictions.*`) the converter drops, F32 weights, no pooling declared |
| xlmr | XLMRobertaModel | SentencePiece Unigram (sentencepiece.bpe.model, NFKC charsmap, dummy prefix) trained on the corpus, with XLMRobertaTokenizerFast's tokenizer.json | made by transformers: BERT's encoder with positions after pad_token_id 1 (the converter drops two rows), one token type, a pooler the converter drops, sentence-transformers CLS pooling, random norms and biases, BF16 weights |
| xlmr-rerank | XLMRobertaForSequenceClassification | as xlmr | made by transformers: one label (a reranker's head: `classifier.dense`, `classifier.out_proj`, written as `cls`, `cls.output` with the label), the encoder under `roberta.` (1 layer, hidden 128, positions after pad_token_id 1), F16 weights |
| gpt2 | GPT2LMHeadModel | byte-level BPE with GPT-2's pre-tokenizer, `<\|endoftext\|>` last | made by transformers: Conv1D weights (stored [in, out]), fused QKV, biases on every linear, GELU MLP, learned positions (n_ctx 512), tied embeddings, F16 weights |
| starcoder2 | Starcoder2ForCausalLM | as llama-bpe (GPT-2-style BPE), zephyr template | made by transformers: LayerNorm with bias, biases on every linear, full RoPE, non-gated GELU-tanh MLP, GQA 4:2, tied embeddings, random norms and biases, F16 weights |
| gpt-oss | GptOssForCausalLM | as llama-bpe (GPT-2-style BPE), zephyr template | made by transformers: 4 pre-stacked experts (gate/up interleaved, unquantized) with biases, top 2, router bias, attention sinks, q/k/v/o biases, GQA 4:2, head_dim 16 with hidden 64, yarn RoPE, sliding window 32 on alternate layers, random norms and biases, BF16 weights |
| gpt-oss-mxfp4 | GptOssForCausalLM | as gpt-oss | gpt-oss as openai ships it: gpt-oss's model (seed 37) with its experts quantized to MXFP4 by the script and stored as the real checkpoints store them, `mlp.experts.{gate_up,down}_proj_{blocks,scales}` (uint8 `[E, rows, cols/32, 16]` and `[E, rows, cols/32]`, `[out, in]`, gate/up rows interleaved; one all-zero block), `quantization_config` `quant_method: mxfp4` as gpt-oss-20b's config.json, BF16 everything else |
"""


# Shapes of the --big benchmark checkpoints: (hidden, ffn, heads, kv heads, config vocab, rope theta, layers per shard).
BIG_SHAPES = {
    # TinyLlama: ~88 MB bf16 per layer, the SentencePiece vocabulary as it is.
    "tinyllama": (2048, 5632, 32, 4, None, 10000.0, 4),
    # Llama-3-8B: ~436 MB bf16 per layer, 2 GB of embeddings and output; the config's vocabulary (128256)
    # padded past the tokenizer's, as convert_hf_to_gguf.py pads a SentencePiece vocabulary.
    "llama3-8b": (4096, 14336, 32, 8, 128256, 500000.0, 8),
}


def make_big(out: Path, layers: int, shape: str = "tinyllama") -> None:
    """A random Llama of a real model's shape, bf16, sharded, written a block of rows at a time so memory stays
    small whatever the size. Weights are N(0, 0.02) with 1% of the input columns of every matrix scaled by 8
    (the outlier columns real checkpoints have), norms 1 + N(0, 0.1)."""
    h, ff, nh, nkv, cfg_vocab, theta, per_shard = BIG_SHAPES[shape]
    hd = h // nh
    out.mkdir(parents=True, exist_ok=True)
    n = write_spm_tokenizer(out, ZEPHYR_TEMPLATE, legacy=True)
    vocab = cfg_vocab or n
    cfg = llama_cfg(bos_token_id=1, eos_token_id=2, hidden_size=h, intermediate_size=ff,
                    max_position_embeddings=8192 if cfg_vocab else 2048, num_attention_heads=nh,
                    num_hidden_layers=layers, num_key_value_heads=nkv, rope_theta=theta, tie_word_embeddings=False,
                    torch_dtype="bfloat16", transformers_version="4.35.0", vocab_size=vocab)
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2})
    shapes = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (nh * hd, h), p + "self_attn.k_proj.weight": (nkv * hd, h),
                       p + "self_attn.v_proj.weight": (nkv * hd, h), p + "self_attn.o_proj.weight": (h, nh * hd),
                       p + "mlp.gate_proj.weight": (ff, h), p + "mlp.up_proj.weight": (ff, h),
                       p + "mlp.down_proj.weight": (h, ff)})
    # Shards in the order transformers writes them: embeddings first, then layer by layer, head and norm last.
    layer_names = lambda i: sorted(k for k in shapes if k.startswith(f"model.layers.{i}."))
    groups = [["model.embed_tokens.weight"] + [k for i in range(min(per_shard, layers)) for k in layer_names(i)]]
    for start in range(per_shard, layers, per_shard):
        groups.append([k for i in range(start, min(start + per_shard, layers)) for k in layer_names(i)])
    groups[-1] += ["lm_head.weight", "model.norm.weight"]
    rng = np.random.default_rng(1234)
    weight_map, total = {}, 0
    for s, part in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name in part:
            nbytes = int(np.prod(shapes[name])) * 2
            header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [off, off + nbytes]}
            off += nbytes
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * ((8 - len(hb) % 8) % 8)
        with open(out / fname, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for name in part:
                dims = shapes[name]
                if len(dims) == 1:
                    f.write(encode_tensor(1.0 + 0.1 * rng.standard_normal(dims, dtype=np.float32), "BF16"))
                else:
                    rows, cols = dims
                    scale = np.full(cols, 0.02, dtype=np.float32)
                    scale[rng.choice(cols, max(1, cols // 100), replace=False)] *= 8.0
                    step = max(1, (1 << 24) // cols)
                    for r in range(0, rows, step):
                        x = rng.standard_normal((min(step, rows - r), cols), dtype=np.float32) * scale
                        f.write(encode_tensor(x, "BF16"))
                weight_map[name] = fname
        total += off
    write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    print(f"wrote {out}: {shape} shape, {layers} layers, {total / 1e9:.2f} GB of bf16 weights in {len(groups)} shards")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "fixtures")
    ap.add_argument("--only", nargs="*", choices=sorted(FIXTURES))
    ap.add_argument("--big", type=Path, help="write a >= 1 GB random Llama checkpoint into this folder instead")
    ap.add_argument("--layers", type=int, default=13, help="layers of the --big checkpoint")
    ap.add_argument("--shape", choices=sorted(BIG_SHAPES), default="tinyllama",
                    help="shape of the --big checkpoint: tinyllama (~88 MB a layer), llama3-8b (~436 MB a layer)")
    a = ap.parse_args()
    if a.big:
        make_big(a.big, a.layers, a.shape)
        return
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.only or FIXTURES:
        d = a.out / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        FIXTURES[name](d)
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{name}: {size / 1e6:.2f} MB")
        if size > 5_000_000:
            sys.exit(f"error: fixture {name} is {size} bytes, over the 5 MB budget")
    if not a.only:
        (a.out / "README.md").write_text(README, encoding="utf-8")


if __name__ == "__main__":
    main()
