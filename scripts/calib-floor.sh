#!/usr/bin/env bash
# How few calibration tokens per language keep the statistics stable: calibrates
# MODEL on the embedded corpus with fewer and fewer tokens per language and compares
# each imatrix and each la-mix plan with those of the whole corpus.
#   imatrix change: per weight, the total variation distance between the two
#     normalized importance vectors (I/ΣI), mean and worst over the weights;
#   plan change: tensors whose la-mix type differs, with the sensitivity sized
#     explicitly (--sens-tokens 32 --sens-groups 96) so only the importance moves.
# Usage: scripts/calib-floor.sh MODEL [SIZES]   SIZES: "CTXxCHUNKS ..." (default
#        "512x1 512x2 512x4 256x1 128x1"; the reference is 512 x all the text).
# Needs gguf-py (LAQUANT_LLAMA_SRC, from scripts/llama-cpp.sh --env) to read imatrix files.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:?usage: scripts/calib-floor.sh MODEL [SIZES]}"
sizes="${2:-512x1 512x2 512x4 256x1 128x1}"
laquant="${LAQUANT:-${CARGO_TARGET_DIR:-$here/target}/release/laquant}"
[ -x "$laquant" ] || (cd "$here" && cargo build --release --quiet)
[ -n "${LAQUANT_LLAMA_SRC:-}" ] || eval "$("$here/scripts/llama-cpp.sh" --env 2>/dev/null)"
work="$(mktemp -d)"; [ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
plan() { # imatrix -> plan JSON
  "$laquant" plan "$model" --outtype la-mix --imatrix "$1" --sens-tokens 32 --sens-groups 96 --json -q >"$2"
}
echo "reference: ctx 512, all the text" >&2
"$laquant" calibrate "$model" --no-cache --ctx 512 --calib-tokens 0 -o "$work/ref.gguf" -q --report "$work/ref.json" 2>/dev/null
plan "$work/ref.gguf" "$work/ref.plan.json"
for s in $sizes; do
  ctx="${s%x*}"; chunks="${s#*x}"
  echo "ctx $ctx, $chunks chunk(s) per language" >&2
  "$laquant" calibrate "$model" --no-cache --ctx "$ctx" --chunks "$chunks" -o "$work/$s.gguf" -q --report "$work/$s.json" 2>/dev/null
  plan "$work/$s.gguf" "$work/$s.plan.json"
done
PYTHONPATH="$LAQUANT_LLAMA_SRC/gguf-py" python3 - "$work" "$sizes" <<'PY'
import json, sys
import numpy as np
from gguf import GGUFReader
work, sizes = sys.argv[1], sys.argv[2].split()

def imatrix(path):
    r = GGUFReader(path)
    t = {x.name: np.asarray(x.data, dtype=np.float64).ravel() for x in r.tensors}
    return {n[:-len(".in_sum2")]: t[n] / t[n[:-len(".in_sum2")] + ".counts"][0]
            for n in t if n.endswith(".in_sum2")}

def types(path):
    return {t["name"]: t["ty"] for t in json.load(open(path))["tensors"]}

ref, ref_types = imatrix(f"{work}/ref.gguf"), types(f"{work}/ref.plan.json")
ref_tokens = json.load(open(f"{work}/ref.json"))["tokens"]
langs = len(json.load(open(f"{work}/ref.json"))["languages"])
print(f"| tokens per language | total tokens | imatrix change, mean | worst weight | la-mix tensors with another type |")
print(f"|---|---|---|---|---|")
print(f"| all ({ref_tokens // langs} on average) | {ref_tokens} | 0 | 0 | 0 of {len(ref_types)} |")
for s in sizes:
    ctx, chunks = map(int, s.split("x"))
    m = imatrix(f"{work}/{s}.gguf")
    tv = []
    for name, a in ref.items():
        b = m[name]
        tv.append(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())
    tv = np.array(tv)
    t = types(f"{work}/{s}.plan.json")
    diff = sum(1 for k in ref_types if t.get(k) != ref_types[k])
    tokens = json.load(open(f"{work}/{s}.json"))["tokens"]
    print(f"| {ctx * chunks} ({chunks} x {ctx}) | {tokens} | {tv.mean():.4f} | {tv.max():.4f} | {diff} of {len(ref_types)} |")
PY
