#!/usr/bin/env python3
"""Copies a Hugging Face folder with one matrix moved by one unit in the last place.

    tools/nudge.py SRC_DIR OUT_DIR [TENSOR]

Every floating-point tensor is written as F32 (integer ones, MXFP4 blocks and scales, as stored; TENSOR's dtype must be F32, F16 or BF16: it is widened first, so the
nudge is one f32 ulp whatever the source dtype); TENSOR (default: layer 0's
`model.layers.0.self_attn.q_proj.weight`) has half its elements, chosen by a fixed seed, moved to the
next float towards +inf. tests/calib_interop.rs reads such a copy from LAQUANT_CALIB_NUDGED: our own
run on it measures how far the arithmetic carries a last-bit difference through the layers, which is
what a difference from llama.cpp of summation order alone looks like (see that file's module doc).
Needs torch and safetensors. The unnudged model must be compared in F32 as well: pass a copy made
with TENSOR=none as the model when the source is not F32.
"""
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

src, out = sys.argv[1], sys.argv[2]
name = sys.argv[3] if len(sys.argv) > 3 else "model.layers.0.self_attn.q_proj.weight"
os.makedirs(out, exist_ok=True)
shards = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
for f in os.listdir(src):
    if not f.endswith(".safetensors") and os.path.isfile(os.path.join(src, f)):
        shutil.copy(os.path.join(src, f), out)
found = name == "none"
for shard in shards:
    # Integer tensors (MXFP4 blocks and scales) are codes, not values: kept as stored.
    t = {
        k: (v if not v.is_floating_point() else v.float()).contiguous()
        for k, v in load_file(os.path.join(src, shard)).items()
    }
    if name in t:
        g = torch.Generator().manual_seed(0)
        x = t[name]
        pick = torch.rand(x.shape, generator=g) < 0.5
        t[name] = torch.where(pick, torch.nextafter(x, torch.full_like(x, float("inf"))), x)
        found = True
        print(f"nudged {name} {tuple(x.shape)} in {shard}")
    save_file(t, os.path.join(out, shard), metadata={"format": "pt"})
if not found:
    sys.exit(f"{src}: no tensor {name}")
