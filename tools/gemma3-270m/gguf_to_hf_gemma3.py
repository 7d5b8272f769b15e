#!/usr/bin/env python3
"""Rebuild a Hugging Face Gemma3ForCausalLM folder from a llama.cpp `gemma3` GGUF.

Reads the GGUF with llama.cpp's own gguf-py (put $LAQUANT_LLAMA_SRC/gguf-py on PYTHONPATH) and writes:
  model.safetensors      every tensor dequantized by gguf-py to F32 under its HF name, with
                         convert_hf_to_gguf.py's Gemma3 transforms inverted: the norms (every `*norm.weight`)
                         are stored minus 1 (Gemma3RMSNorm multiplies by 1 + w; the converter adds the 1);
                         no Q/K permutation (Gemma rotates NeoX-style, the converter keeps HF's layout). The
                         values are the quantized ones (Q4_K, Q5_0, Q6_K, Q8_0 grids), not Google's bf16 weights.
  config.json            from the GGUF metadata (gemma3.*), with what llama.cpp hard-codes for gemma3 and
                         the GGUF does not carry: 5 sliding layers in 6, local RoPE base 10000,
                         query_pre_attn_scalar = head_dim, GELU-tanh.
  tokenizer.model        a SentencePiece BPE ModelProto (sentencepiece_model_pb2) built from
                         tokenizer.ggml.{tokens,scores,token_type}: byte pieces as BYTE, the unknown token as
                         UNKNOWN, GGUF control tokens as CONTROL, user-defined ones as USER_DEFINED, the rest NORMAL
                         with their scores; no dummy prefix, byte fallback, whitespace escaped as U+2581.
  tokenizer_config.json  add_bos/add_eos and the special tokens from the GGUF; added_tokens_decoder lists the
                         GGUF's control (special) and user-defined (not special) tokens, which is what makes
                         convert_hf_to_gguf.py give them back the types and scores (-1000) the GGUF has. The
                         chat template is copied when the GGUF has one (gemma-3-270m's base GGUF has none).
  special_tokens_map.json, generation_config.json.

usage: gguf_to_hf_gemma3.py MODEL.gguf OUT_DIR
       gguf_to_hf_gemma3.py --compare MODEL.gguf CONVERTED.gguf
  --compare checks a conversion of the rebuilt folder (laquant convert --outtype f32) against the source: the
  same vocabulary (tokens, scores, types) and special token ids, the same tensor names, and every weight equal to
  the dequantized source value (norms, which went through -1 and +1 in F32, within 1 ulp of 1 + |w|).
"""
import json
import os
import struct
import sys

import numpy as np

try:
    import gguf
    from gguf.quants import dequantize
except ImportError:
    sys.exit("gguf_to_hf_gemma3.py: needs llama.cpp's gguf-py on PYTHONPATH ($LAQUANT_LLAMA_SRC/gguf-py)")

ARCH = "gemma3"
# GGUF block tensor -> HF module (gguf-py's tensor_mapping for MODEL_ARCH.GEMMA3, inverted).
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# llama.cpp's token types (= SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_name(gguf_name):
    base, suffix = gguf_name.rsplit(".", 1)
    if base.startswith("blk."):
        _, bid, part = base.split(".", 2)
        if part not in LAYER_NAMES:
            raise ValueError(f"tensor {gguf_name}: no HF name known for {part!r}")
        return f"model.layers.{bid}.{LAYER_NAMES[part]}.{suffix}"
    if base not in GLOBAL_NAMES:
        raise ValueError(f"tensor {gguf_name}: no HF name known")
    return f"{GLOBAL_NAMES[base]}.{suffix}"


def write_safetensors(path, tensors):
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for name in sorted(tensors):
        n = tensors[name].size * 4
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name in sorted(tensors):
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


def weights(reader):
    out, grids = {}, {}
    for t in reader.tensors:
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape))  # numpy order: rows last in GGUF's ne
        a = dequantize(t.data, qtype).astype(np.float32, copy=False).reshape(shape)
        name = hf_name(t.name)
        if name.endswith("norm.weight"):
            a = a - np.float32(1.0)  # Gemma3Model.norm_shift inverted
        out[name] = a
        grids[qtype.name] = grids.get(qtype.name, 0) + 1
    return out, grids


def tokenizer_model(toks, scores, types, special):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(toks)
    ts.byte_fallback = True
    ts.split_digits = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = (special[k] for k in ("unk", "bos", "eos", "pad"))
    ts.unk_piece, ts.bos_piece, ts.eos_piece, ts.pad_piece = (toks[special[k]] for k in ("unk", "bos", "eos", "pad"))
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = False
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    kinds = {NORMAL: pb.ModelProto.SentencePiece.NORMAL, CONTROL: pb.ModelProto.SentencePiece.CONTROL,
             USER_DEFINED: pb.ModelProto.SentencePiece.USER_DEFINED, UNUSED: pb.ModelProto.SentencePiece.UNUSED,
             BYTE: pb.ModelProto.SentencePiece.BYTE, UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN}
    for i, (tok, score, ty) in enumerate(zip(toks, scores, types)):
        p = m.pieces.add()
        if i == special["unk"]:
            kind = pb.ModelProto.SentencePiece.UNKNOWN
        else:
            kind = kinds[ty]
        # the converter wrote user-defined tokens with U+2581 turned into spaces; SentencePiece stores U+2581
        p.piece = tok.replace(" ", "\u2581") if ty == USER_DEFINED else tok
        # control/user-defined/byte pieces score 0 in SentencePiece; the converter scores added tokens -1000 itself
        p.score = 0.0 if kind in (pb.ModelProto.SentencePiece.CONTROL, pb.ModelProto.SentencePiece.USER_DEFINED,
                                  pb.ModelProto.SentencePiece.BYTE, pb.ModelProto.SentencePiece.UNKNOWN) else float(score)
        p.type = kind
    return m.SerializeToString()


def compare(src, conv):
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(conv)
    bad = []
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"]:
        if field(a, key) != field(b, key):
            bad.append(f"metadata {key} differs")
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    if sorted(ta) != sorted(tb):
        bad.append(f"tensor names differ: only in source {sorted(set(ta) - set(tb))[:5]}, "
                   f"only in conversion {sorted(set(tb) - set(ta))[:5]}")
    worst = 0.0
    for name in sorted(set(ta) & set(tb)):
        x = dequantize(ta[name].data, gguf.GGMLQuantizationType(ta[name].tensor_type)).astype(np.float32).reshape(-1)
        y = dequantize(tb[name].data, gguf.GGMLQuantizationType(tb[name].tensor_type)).astype(np.float32).reshape(-1)
        if x.shape != y.shape:
            bad.append(f"{name}: {x.size} values in the source, {y.size} in the conversion")
            continue
        if name.endswith("norm.weight"):
            d = float(np.max(np.abs(x - y) / np.spacing(np.float32(1) + np.abs(x))))
            worst = max(worst, d)
            if d > 1.0:
                bad.append(f"{name}: {d:.2f} ulp from the source")
        elif not np.array_equal(x, y):
            bad.append(f"{name}: {int(np.sum(x != y))} values differ from the source")
    if bad:
        sys.exit("compare: " + "\n  ".join(bad))
    print(f"compare: {conv} has the source's vocabulary ({len(field(a, 'tokenizer.ggml.tokens'))} tokens, scores, "
          f"types) and its {len(ta)} tensors' values (norms within {worst:.2f} ulp)")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        return compare(sys.argv[2], sys.argv[3])
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("usage: ")[1].split("\n  --compare")[0])
    src, outdir = sys.argv[1], sys.argv[2]
    r = gguf.GGUFReader(src)
    arch = field(r, "general.architecture")
    if arch != ARCH:
        sys.exit(f"{src}: general.architecture is {arch!r}, this script reads {ARCH!r} only")
    if field(r, "tokenizer.ggml.model") != "llama":
        sys.exit(f"{src}: tokenizer.ggml.model is {field(r, 'tokenizer.ggml.model')!r}, expected 'llama' (SentencePiece)")

    def hp(key, default=None):
        v = field(r, f"{ARCH}.{key}", default)
        if v is None:
            sys.exit(f"{src}: metadata key {ARCH}.{key} missing")
        return v

    os.makedirs(outdir, exist_ok=True)
    tensors, grids = weights(r)
    tied = "lm_head.weight" not in tensors
    write_safetensors(os.path.join(outdir, "model.safetensors"), tensors)

    toks = list(field(r, "tokenizer.ggml.tokens"))
    scores = [float(s) for s in field(r, "tokenizer.ggml.scores")]
    types = [int(t) for t in field(r, "tokenizer.ggml.token_type")]
    special = {k: int(field(r, f"tokenizer.ggml.{n}_token_id")) for k, n in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"))}
    special["pad"] = int(field(r, "tokenizer.ggml.padding_token_id", 0))
    with open(os.path.join(outdir, "tokenizer.model"), "wb") as f:
        f.write(tokenizer_model(toks, scores, types, special))

    n_layer = int(hp("block_count"))
    head_dim = int(hp("attention.key_length"))
    period = 6  # llama.cpp: hparams.set_swa_pattern(6) for LLM_ARCH_GEMMA3
    cfg = {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": len(toks),
        "hidden_size": int(hp("embedding_length")),
        "intermediate_size": int(hp("feed_forward_length")),
        "num_hidden_layers": n_layer,
        "num_attention_heads": int(hp("attention.head_count")),
        "num_key_value_heads": int(hp("attention.head_count_kv")),
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": int(hp("context_length")),
        "rms_norm_eps": float(np.float32(hp("attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(hp("rope.freq_base")),
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "sliding_window": int(hp("attention.sliding_window")),
        "_sliding_window_pattern": period,
        "layer_types": ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(n_layer)],
        "attn_logit_softcapping": None,
        "final_logit_softcapping": field(r, f"{ARCH}.final_logit_softcapping"),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_bidirectional_attention": False,
        "tie_word_embeddings": tied,
        "bos_token_id": special["bos"],
        "eos_token_id": special["eos"],
        "pad_token_id": special["pad"],
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    if field(r, f"{ARCH}.rope.scaling.type") not in (None, "none"):
        sys.exit(f"{src}: RoPE scaling in the GGUF is not handled by this script")
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(outdir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["pad"]},
                  f, indent=2)

    decoder = {}
    for i, (tok, ty) in enumerate(zip(toks, types)):
        if ty in (CONTROL, USER_DEFINED):
            # a user-defined piece as tokenizer.model holds it (spaces as U+2581): with
            # the spaces, transformers' fast conversion does not find it in the vocabulary and appends it as a new
            # token past the end (262144+); convert_hf_to_gguf.py turns U+2581 back into spaces either way
            content = tok.replace(" ", "\u2581") if ty == USER_DEFINED else tok
            decoder[str(i)] = {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": ty == CONTROL}
    names = {k: toks[v] for k, v in special.items()}
    tc = {
        "add_bos_token": bool(field(r, "tokenizer.ggml.add_bos_token", True)),
        "add_eos_token": bool(field(r, "tokenizer.ggml.add_eos_token", False)),
        "added_tokens_decoder": decoder,
        "bos_token": names["bos"], "eos_token": names["eos"], "unk_token": names["unk"], "pad_token": names["pad"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "use_default_system_prompt": False,
    }
    template = field(r, "tokenizer.chat_template")
    if template:
        tc["chat_template"] = template
    with open(os.path.join(outdir, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2, ensure_ascii=False)
    with open(os.path.join(outdir, "special_tokens_map.json"), "w") as f:
        json.dump({f"{k}_token": v for k, v in names.items()}, f, indent=2, ensure_ascii=False)
    n = sum(a.size for a in tensors.values())
    grid = ", ".join(f"{k} x{v}" for k, v in sorted(grids.items()))
    print(f"wrote {outdir}: {len(tensors)} tensors, {n} parameters, tied embeddings {tied}, "
          f"{len(toks)} tokens; source grids: {grid}; chat template: {'yes' if template else 'none in the GGUF'}")


if __name__ == "__main__":
    main()
