#!/usr/bin/env python3
"""The encoder calibration statistic from transformers' own forward pass (the reference of
tests/encoder_interop.rs): per language, sum over its chunks' tokens of x^2 per input column of every
Linear in the encoder layers, divided by its token count, then balanced with equal language weights
(laquant's Importance::balanced).

    encoder-taps-ref.py MODEL_DIR < chunks.json > balanced.json

chunks.json: {"lang": [[ids...], ...], ...}; each chunk runs as one sequence (attention mask all ones,
token types 0, XLM-R's positions from its padding offset, as transformers computes them). Output:
{"blk.N.attn_q.weight": [...], ...} in GGUF names. transformers' "gelu" is the exact erf GELU where ggml
(and laquant) use the tanh approximation through an f16 table: ffn_down's input differs in the last
digits.
"""
import json
import sys

import torch
from transformers import AutoModel

NAMES = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
}


def main():
    model = AutoModel.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
    chunks = json.load(sys.stdin)
    sums = {}
    hooks = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or ".layer." not in name:
            continue
        layer = int(name.split(".layer.")[1].split(".")[0])
        rest = name.split(".layer.")[1].split(".", 1)[1]
        if rest not in NAMES:
            continue
        key = f"blk.{layer}.{NAMES[rest]}.weight"

        def hook(_m, inp, _out, key=key):
            x = inp[0].detach().double().reshape(-1, inp[0].shape[-1])
            sums[key] = sums.get(key, 0) + (x * x).sum(0)

        hooks.append(mod.register_forward_hook(hook))
    balanced = {}
    langs = sorted(chunks)
    for lang in langs:
        sums.clear()
        n = 0
        with torch.no_grad():
            for c in chunks[lang]:
                ids = torch.tensor([c])
                model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
                n += len(c)
        for k, v in sums.items():
            balanced[k] = balanced.get(k, 0) + v / n / len(langs)
    json.dump({k: v.tolist() for k, v in balanced.items()}, sys.stdout)


if __name__ == "__main__":
    main()
