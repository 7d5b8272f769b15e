#!/usr/bin/env python3
"""Train polyglot-moe: a small Qwen3MoeForCausalLM on gettext text in 29 languages (see README.md).

    train.py TEXT_DIR TOKENIZER_DIR OUT_DIR

TEXT_DIR holds <lang>.txt (po_text.py); TOKENIZER_DIR is polyglot-25m (its tokenizer files are copied).
Deterministic: fixed seed, torch CPU, 2 threads, a fixed number of steps (env STEPS, default below).
The last HOLDOUT of each language's tokens (at least 2 rows) is kept aside; held-out loss per language is printed at each
evaluation and the checkpoint with the best mean held-out loss is saved (bf16 safetensors, config.json,
tokenizer files, training-metrics.json).
"""
import json
import math
import os
import random
import shutil
import sys
import time

import torch
from tokenizers import Tokenizer
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from moe import MoeLM, aux_loss

SEED = 1234
CTX = 256
BATCH = int(os.environ.get("BATCH", "8"))
STEPS = int(os.environ.get("STEPS", "100"))
EVAL_EVERY = int(os.environ.get("EVAL_EVERY", "50"))
LR = 3e-3
WARMUP = 10
HOLDOUT = 0.05
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def config():
    """The architecture: hidden 256 (K-quants apply), 4 layers, 8 experts top-2, expert FFN 256."""
    return Qwen3MoeConfig(
        vocab_size=16384,
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        bos_token_id=0,
        eos_token_id=1,
        initializer_range=0.02,
    )


def sequences(ids):
    """A language's token stream cut into CTX-token rows, each starting with BOS (0)."""
    n = CTX - 1
    return [[0] + ids[i : i + n] for i in range(0, len(ids) - n + 1, n)]


def load(text_dir, tok):
    """Per language: training rows and held-out rows (the last HOLDOUT of its tokens, at least 2 rows)."""
    train, held = {}, {}
    for f in sorted(os.listdir(text_dir)):
        if not f.endswith(".txt"):
            continue
        lang = f[:-4]
        text = open(os.path.join(text_dir, f), encoding="utf-8").read()
        ids = tok.encode(text, add_special_tokens=False).ids
        cut = len(ids) - max(int(len(ids) * HOLDOUT), 2 * CTX)
        train[lang] = sequences(ids[:cut])
        held[lang] = sequences(ids[cut:])[:2]
        if not train[lang] or not held[lang]:
            sys.exit(f"train: {f}: too little text for a {CTX}-token row")
    return train, held


@torch.no_grad()
def evaluate(model, held):
    """Mean next-token loss per language on its held-out rows."""
    model.eval()
    out = {}
    for lang, rows in held.items():
        x = torch.tensor(rows)
        out[lang] = float(lm_loss(model(x)[0], x))
    model.train()
    return out


def lm_loss(logits, x):
    """The next-token loss of logits for the rows x."""
    logits = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def main():
    text_dir, tok_dir, out_dir = sys.argv[1:4]
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    train, held = load(text_dir, tok)
    rows = [r for lang in sorted(train) for r in train[lang]]
    print(f"train: {len(rows)} rows of {CTX} tokens ({len(rows) * CTX} tokens), {len(train)} languages", flush=True)
    cfg = config()
    model = MoeLM(cfg)
    params = sum(p.numel() for p in model.parameters())
    print(f"train: {params} parameters, {STEPS} steps of {BATCH} rows", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, STEPS) / STEPS)))
    )
    rng = random.Random(SEED)
    order, history, best, t0 = [], [], None, time.time()
    for step in range(1, STEPS + 1):
        if len(order) < BATCH:
            perm = list(range(len(rows)))
            rng.shuffle(perm)
            order += perm
        batch, order = order[:BATCH], order[BATCH:]
        x = torch.tensor([rows[i] for i in batch])
        logits, routers = model(x)
        loss = lm_loss(logits, x)
        total = loss + cfg.router_aux_loss_coef * aux_loss(routers, cfg.num_experts, cfg.num_experts_per_tok)
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
        if step % EVAL_EVERY == 0 or step == STEPS:
            ev = evaluate(model, held)
            mean = sum(ev.values()) / len(ev)
            history.append({"step": step, "train_loss": loss.item(), "eval_mean": mean, "eval": ev,
                            "t": round(time.time() - t0, 1)})
            print(f"step {step} loss {loss.item():.3f} held-out mean {mean:.3f} ({time.time() - t0:.0f}s)",
                  flush=True)
            if best is None or mean < best[0]:
                best = (mean, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
    mean, step, state = best
    model.load_state_dict(state)
    ev = evaluate(model, held)
    print(f"kept step {step}: held-out loss per language (ppl):", flush=True)
    for lang, v in sorted(ev.items()):
        print(f"  {lang} {v:.3f} ({math.exp(v):.1f})", flush=True)
    # The same weights in transformers' class: same loss on held-out rows (checks moe.py's forward).
    cfg.output_router_logits = False
    hf = Qwen3MoeForCausalLM(cfg)
    hf.load_state_dict(model.state_dict(), strict=True)
    hf.eval()
    with torch.no_grad():
        for lang in ("en", "ja", "ta"):
            x = torch.tensor(held[lang][:1])
            a, b = float(lm_loss(hf(input_ids=x).logits, x)), float(lm_loss(model(x)[0], x))
            if abs(a - b) > 1e-3 * max(1.0, abs(a)):
                sys.exit(f"train: transformers' loss {a} != moe.py's {b} on {lang}")
    print("train: transformers' Qwen3MoeForCausalLM gives the same held-out loss", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    hf.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(tok_dir, f), out_dir)
    metrics = {"params": params, "train_tokens": len(rows) * CTX, "steps": STEPS, "batch": BATCH, "ctx": CTX,
               "kept_step": step, "held_out": ev, "history": history}
    with open(os.path.join(out_dir, "training-metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)


if __name__ == "__main__":
    main()
