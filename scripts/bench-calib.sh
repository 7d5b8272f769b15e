#!/usr/bin/env bash
# Calibration speed, laquant vs llama-imatrix: the same text (the embedded corpus's
# languages concatenated into one file, given to both as one document), the same
# context and threads, on polyglot-25m. Prints tokens/s of each and the ratio.
#
#   scripts/bench-calib.sh [MODEL_DIR] [THREADS] [CTX]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/../shared/models/polyglot-25m}
THREADS=${2:-$(nproc)}
CTX=${3:-512}
: "${LAQUANT_LLAMA_CPP:=$HOME/.cache/laquant/build}"
BIN=$LAQUANT_LLAMA_CPP/bin
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
cargo build --release --quiet
LQ=./target/release/laquant
GGUF=$WORK/model-f32.gguf
if ! $LQ convert "$MODEL" --outtype f32 -o "$GGUF" >/dev/null 2>&1; then
  python3 scripts/convert_ref.py --force-pre llama-bpe -- "$MODEL" --outtype f32 --outfile "$GGUF" >/dev/null 2>&1
fi
mkdir -p "$WORK/corpus"
cat fixtures/corpus/*.txt > "$WORK/corpus/en.txt"
now() { date +%s.%N; }
t0=$(now)
"$BIN/llama-imatrix" -m "$GGUF" -f "$WORK/corpus/en.txt" -c "$CTX" -t "$THREADS" --no-ppl -o "$WORK/theirs.gguf" >"$WORK/theirs.log" 2>&1
t1=$(now)
$LQ calibrate "$MODEL" --calib "$WORK/corpus" --ctx "$CTX" --threads "$THREADS" -o "$WORK/ours.gguf" >"$WORK/ours.log" 2>&1
t2=$(now)
chunks=$(grep -o 'computing over [0-9]* chunks' "$WORK/theirs.log" | grep -o '[0-9]*')
tokens=$((chunks * CTX))
python3 - "$tokens" "$t0" "$t1" "$t2" "$THREADS" "$CTX" <<'PY'
import sys
tok, t0, t1, t2, th, ctx = int(sys.argv[1]), *map(float, sys.argv[2:5]), sys.argv[5], sys.argv[6]
theirs, ours = tok / (t1 - t0), tok / (t2 - t1)
print(f"tokens {tok}, ctx {ctx}, threads {th} (wall clock, model load and tokenization included)")
print(f"llama-imatrix: {t1 - t0:7.2f} s  {theirs:8.1f} tokens/s")
print(f"laquant:       {t2 - t1:7.2f} s  {ours:8.1f} tokens/s")
print(f"ratio laquant/llama-imatrix: {ours / theirs:.2f}x")
PY
