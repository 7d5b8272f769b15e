#!/usr/bin/env python3
"""Check a rebuilt Gemma 3 folder with transformers: it loads, its perplexity on held-out text is that of a
trained model, and it generates text. Fails (exit 1) when the perplexity is not below --max-ppl.

usage: check_hf.py FOLDER TEXT_FILE [--tokens N] [--max-ppl X] [--save-tokenizer-json]
  --save-tokenizer-json  write transformers' fast tokenizer (converted from tokenizer.model) as FOLDER/tokenizer.json
"""
import argparse
import math
import sys
import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("text")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--max-ppl", type=float, default=100.0)
    ap.add_argument("--save-tokenizer-json", action="store_true")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.folder)
    if a.save_tokenizer_json:
        if not tok.is_fast:
            sys.exit(f"{a.folder}: transformers gave a slow tokenizer, no tokenizer.json to save")
        tok.backend_tokenizer.save(f"{a.folder}/tokenizer.json")
    model = AutoModelForCausalLM.from_pretrained(a.folder, dtype=torch.float32)
    model.eval()
    with open(a.text, encoding="utf-8") as f:
        text = f.read()
    ids = tok(text, return_tensors="pt").input_ids[:, : a.tokens]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    ppl = math.exp(loss)
    print(f"transformers {type(model).__name__}: perplexity {ppl:.2f} on the first {ids.shape[1]} tokens of {a.text}")
    for prompt in ["The capital of France is", "Die Hauptstadt von Deutschland ist", "def fibonacci(n):"]:
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=24, do_sample=False)
        print(f"  greedy: {tok.decode(out[0], skip_special_tokens=True)!r}")
    if not ppl < a.max_ppl:
        sys.exit(f"check_hf: perplexity {ppl:.2f} is not below {a.max_ppl}: the rebuilt folder is broken")


if __name__ == "__main__":
    main()
