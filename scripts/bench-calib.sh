#!/usr/bin/env bash
# Calibration speed, laquant vs llama-imatrix: the same text (some of the embedded
# corpus's languages, $LANGS, default "en zh ar hi ru", concatenated into one file and
# given to both as one document), the same context and threads, on polyglot-25m.
# Prints tokens/s of each (wall clock, model load and tokenization included) and the ratio.
#
#   [LANGS="en de"] scripts/bench-calib.sh [MODEL_DIR] [THREADS] [CTX]
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
LQ=${CARGO_TARGET_DIR:-./target}/release/laquant
GGUF=$WORK/model-f32.gguf
if ! $LQ convert "$MODEL" --outtype f32 -o "$GGUF" >/dev/null 2>&1; then
  python3 scripts/convert_ref.py --force-pre llama-bpe -- "$MODEL" --outtype f32 --outfile "$GGUF" >/dev/null 2>&1
fi
mkdir -p "$WORK/corpus"
for l in ${LANGS:-en zh ar hi ru}; do cat "fixtures/corpus/$l.txt"; done > "$WORK/corpus/en.txt"
# Wall clock and CPU seconds (user+sys) of a command, from bash's TIMEFORMAT.
measure() { # OUTFILE CMD...
  local out=$1; shift
  { TIMEFORMAT='%R %U %S'; time "$@" >"$out.log" 2>&1; } 2>"$out.time"
}
measure "$WORK/theirs" "$BIN/llama-imatrix" -m "$GGUF" -f "$WORK/corpus/en.txt" -c "$CTX" -t "$THREADS" --no-ppl -o "$WORK/theirs.gguf"
measure "$WORK/ours" $LQ calibrate -q "$MODEL" --calib "$WORK/corpus" --ctx "$CTX" --threads "$THREADS" -o "$WORK/ours.gguf"
chunks=$(grep -o 'computing over [0-9]* chunks' "$WORK/theirs.log" | grep -o '[0-9]*')
tokens=$((chunks * CTX))
python3 - "$tokens" "$THREADS" "$CTX" "$(cat "$WORK/theirs.time")" "$(cat "$WORK/ours.time")" <<'PY'
import sys
tok, th, ctx = int(sys.argv[1]), sys.argv[2], sys.argv[3]
(tw, tu, ts), (ow, ou, os_) = [list(map(float, a.split())) for a in sys.argv[4:6]]
print(f"tokens {tok}, ctx {ctx}, threads {th} (model load and tokenization included)")
print(f"{'':15} {'wall s':>8} {'tok/s':>9} {'cpu s':>8} {'tok/cpu-s':>10}")
for name, w, c in (("llama-imatrix", tw, tu + ts), ("laquant", ow, ou + os_)):
    print(f"{name:15} {w:8.2f} {tok / w:9.1f} {c:8.2f} {tok / c:10.1f}")
print(f"ratio laquant/llama-imatrix: {tw / ow:.2f}x wall clock, {(tu + ts) / (ou + os_):.2f}x CPU time")
PY
