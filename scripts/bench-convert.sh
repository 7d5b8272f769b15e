#!/usr/bin/env bash
# Side-by-side conversion benchmark on this machine: `laquant convert` vs llama.cpp's convert_hf_to_gguf.py
# (llama-cpp-python==0.3.36 sdist) at f16 and q8_0, on ../shared/models/polyglot-25m and on a >= 1 GB random
# Llama checkpoint generated here (TinyLlama shape: hidden 2048, ffn 5632, every width a multiple of 256).
# Wall time and peak RSS come from /usr/bin/time -v; each pair of outputs is also compared (gguf_compare.py).
#
#   scripts/bench-convert.sh            # table on stdout, raw logs in $LAQUANT_BENCH_OUT (default bench-out/)
# env: LAQUANT_BENCH_LAYERS (13 = 1.15 GB of bf16 weights), LAQUANT_BENCH_TYPES ("f16 q8_0"),
#      LAQUANT_BENCH_MODELS (default: polyglot-25m and the random checkpoint), LAQUANT_BIN, LAQUANT_THREADS.
# Targets of issue 2: laquant >= 10x faster than the Python converter; peak RSS under the largest tensor's size
# plus 64 MB.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${LAQUANT_BENCH_OUT:-$ROOT/bench-out}
LAYERS=${LAQUANT_BENCH_LAYERS:-13}
TYPES=${LAQUANT_BENCH_TYPES:-f16 q8_0}
SHARED=${LAQUANT_SHARED:-$ROOT/../shared}
mkdir -p "$OUT"
source "$ROOT/scripts/bench-lib.sh"

# .ci/run has already run llama-cpp.sh and exported LAQUANT_HARNESS / LAQUANT_LLAMA_SRC; otherwise do it here.
if [[ -z "${LAQUANT_HARNESS:-}" || -z "${LAQUANT_LLAMA_SRC:-}" ]]; then
  eval "$(scripts/llama-cpp.sh --env)"
fi
export LAQUANT_HARNESS LAQUANT_LLAMA_SRC
if [[ -n "${LAQUANT_BIN:-}" ]]; then
  LAQUANT=$LAQUANT_BIN
else
  cargo build --release --bin laquant >&2
  LAQUANT=${CARGO_TARGET_DIR:-$ROOT/target}/release/laquant
fi

BIG=$OUT/random-llama-${LAYERS}l
if [[ ! -f "$BIG/model.safetensors.index.json" ]]; then
  echo "generating $BIG ..." >&2
  rm -rf "$BIG"
  python3 scripts/make-fixtures.py --big "$BIG" --layers "$LAYERS" >&2
fi
if [[ -n "${LAQUANT_BENCH_MODELS:-}" ]]; then
  read -r -a MODELS <<< "$LAQUANT_BENCH_MODELS"
else
  MODELS=("$SHARED/models/polyglot-25m" "$BIG")
fi

# largest tensor of a checkpoint (bytes as stored, and as f32), total weight bytes
tensor_stats() {
  python3 - "$1" <<'PY'
import json, struct, sys
from pathlib import Path
d = Path(sys.argv[1]); big = big32 = total = 0
for f in sorted(d.glob("*.safetensors")):
    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]; h = json.loads(fh.read(n))
    for k, v in h.items():
        if k == "__metadata__": continue
        b = v["data_offsets"][1] - v["data_offsets"][0]; total += b
        el = 1
        for s in v["shape"]: el *= s
        big = max(big, b); big32 = max(big32, el * 4)
print(big, big32, total)
PY
}

ROWS=()
for model in "${MODELS[@]}"; do
  name=$(basename "$model")
  read -r big big32 total <<< "$(tensor_stats "$model")"
  pre=$(force_pre "$model")
  for t in $TYPES; do
    ours=$OUT/$name-$t.laquant.gguf ref=$OUT/$name-$t.ref.gguf
    rm -f "$ours" "$ref"
    args=(); [[ -n "${LAQUANT_THREADS:-}" ]] && args=(--threads "$LAQUANT_THREADS")
    la=$(load1)
    read -r lw lr <<< "$(measure "$OUT" "$name-$t-laquant" "$LAQUANT" convert "$model" -o "$ours" --outtype "$t" --force "${args[@]}")"
    pargs=(); [[ -n "$pre" ]] && pargs=(--force-pre "$pre")
    read -r pw pr <<< "$(measure "$OUT" "$name-$t-python" python3 scripts/convert_ref.py "${pargs[@]}" -- "$model" --outfile "$ref" --outtype "$t")"
    same=$(python3 scripts/gguf_compare.py "$ours" "$ref" 2>&1 | head -1 | cut -d: -f1 || true)
    ROWS+=("$name $t $total $big $big32 $lw $lr $pw $pr $same $la")
    rm -f "$ref"
  done
done

echo
echo "conversion benchmark on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "laquant: $LAQUANT ; python: convert_hf_to_gguf.py from llama-cpp-python 0.3.36 (torch $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null))"
python3 - "${ROWS[@]}" <<'PY'
import sys
mb = lambda b: f"{float(b) / 2**20:.0f}"
hdr = ("model", "type", "weights MB", "largest MB (as f32)", "laquant s", "laquant RSS MB", "python s", "python RSS MB",
       "speedup", "RSS <= largest+64MB", "outputs", "load")
rows = []
for r in sys.argv[1:]:
    name, t, total, big, big32, lw, lr, pw, pr, same, la = r.split()
    speed = f"{float(pw) / float(lw):.1f}x" if lw != "nan" and pw != "nan" and float(lw) > 0 else "?"
    lr_mb = float(lr) / 1024 if lr != "nan" else float("nan")
    ok = "yes" if lr_mb <= int(big) / 2**20 + 64 else ("as f32" if lr_mb <= int(big32) / 2**20 + 64 else "no")
    rows.append((name, t, mb(total), f"{mb(big)} ({mb(big32)})", lw, f"{lr_mb:.0f}", pw,
                 f"{float(pr) / 1024:.0f}" if pr != "nan" else "nan", speed, ok, same, la))
w = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
for x in [hdr] + rows:
    print("  ".join(str(v).ljust(w[i]) for i, v in enumerate(x)))
PY
