#!/usr/bin/env bash
# The closing-note table of issues #6 and #5 for polyglot-25m: per-language quality of
#   q8_0, q4_k_m without imatrix, q4_k_m with an English-only imatrix, q4_k_m with our
#   language-balanced imatrix, la-mix, and --target-bpw at q4_k_m's bits per weight
#   (both with measured sensitivity, the default), and the same two on the raw error proxy
#   (--sens-tokens 0, the balanced imatrix instead of a second calibration),
# evaluated by `laquant eval` on the held-out ../shared/corpus/eval (never used for calibration).
# The imatrices and the calibrated policies read ../shared/corpus/calib (the English-only one
# reads its en.txt alone).
#
#   [CHUNKS=8] [OUT=target/eval-table] scripts/eval-table.sh [MODEL] [CALIB_DIR] [EVAL_DIR]
#
# Writes OUT/*.gguf, OUT/eval.md (the tables), OUT/eval.json, OUT/eval.svg (the chart),
# OUT/summary.md (per file: bpw, mean KLD, mean non-English KLD, English KLD, top-1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL=${1:-../shared/models/polyglot-25m}
CALIB=${2:-../shared/corpus/calib}
EVAL=${3:-../shared/corpus/eval}
CHUNKS=${CHUNKS:-8}
OUT=${OUT:-target/eval-table}
LAQUANT=${LAQUANT:-${CARGO_TARGET_DIR:-target}/release/laquant}
[[ -x "$LAQUANT" ]] || cargo build --release --bin laquant
mkdir -p "$OUT/calib-en"
cp "$CALIB/en.txt" "$OUT/calib-en/"
lq() { echo "+ laquant $*" >&2; "$LAQUANT" -q "$@"; }

lq convert "$MODEL" --outtype q8_0 --calib none -o "$OUT/q8_0.gguf" --force
lq convert "$MODEL" --outtype q4_k_m --calib none -o "$OUT/q4_k_m.gguf" --force --report "$OUT/q4_k_m.json"
lq calibrate "$MODEL" --calib "$OUT/calib-en" --process-output -o "$OUT/imatrix-en.gguf" --force
lq convert "$MODEL" --outtype q4_k_m --imatrix "$OUT/imatrix-en.gguf" -o "$OUT/q4_k_m-imatrix-en.gguf" --force
lq calibrate "$MODEL" --calib "$CALIB" --process-output -o "$OUT/imatrix-balanced.gguf" --force
lq convert "$MODEL" --outtype q4_k_m --imatrix "$OUT/imatrix-balanced.gguf" -o "$OUT/q4_k_m-imatrix-balanced.gguf" --force
lq convert "$MODEL" --outtype la-mix --calib "$CALIB" -o "$OUT/la-mix.gguf" --force
BPW=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bits_per_weight"])' "$OUT/q4_k_m.json")
lq convert "$MODEL" --target-bpw "$BPW" --calib "$CALIB" -o "$OUT/target-bpw.gguf" --force
echo "q4_k_m: $BPW bits per weight; --target-bpw $BPW" >&2
lq convert "$MODEL" --outtype la-mix --sens-tokens 0 --imatrix "$OUT/imatrix-balanced.gguf" -o "$OUT/la-mix-raw.gguf" --force
lq convert "$MODEL" --target-bpw "$BPW" --sens-tokens 0 --imatrix "$OUT/imatrix-balanced.gguf" -o "$OUT/target-bpw-raw.gguf" --force

files=(q8_0 q4_k_m q4_k_m-imatrix-en q4_k_m-imatrix-balanced la-mix target-bpw la-mix-raw target-bpw-raw)
paths=()
for f in "${files[@]}"; do paths+=("$OUT/$f.gguf"); done
echo "+ laquant eval $MODEL ${paths[*]} --eval $EVAL --chunks $CHUNKS --md" >&2
"$LAQUANT" eval "$MODEL" "${paths[@]}" --eval "$EVAL" --chunks "$CHUNKS" --md \
  --json "$OUT/eval.json" --chart "$OUT/eval.svg" > "$OUT/eval.md"
cat "$OUT/eval.md"
python3 - "$OUT/eval.json" > "$OUT/summary.md" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("| file | bpw | mean KLD | mean non-English KLD | English KLD | top-1 |")
print("|---|---:|---:|---:|---:|---:|")
for f in d["files"]:
    langs = f["languages"]
    non_en = [v["kld_mean"] for k, v in langs.items() if k != "en"]
    en = langs.get("en", {}).get("kld_mean", float("nan"))
    name = f["file"].rsplit("/", 1)[-1].removesuffix(".gguf")
    print(f"| {name} | {f['bpw']:.3f} | {f['kld_mean']:.5f} | {sum(non_en) / len(non_en):.5f} "
          f"| {en:.5f} | {100 * f['top1_mean']:.2f}% |")
PY
cat "$OUT/summary.md"
