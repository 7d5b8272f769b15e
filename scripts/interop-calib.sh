#!/usr/bin/env bash
# Calibration interop checks against llama.cpp (tests/calib_interop.rs, ignored by default):
# logits vs llama.cpp on an F32 GGUF, token ids for every corpus language, our imatrix vs
# llama-imatrix's on one language, llama-quantize --imatrix accepting our file.
#
#   scripts/interop-calib.sh [MODEL_DIR]      (default ../shared/models/polyglot-25m)
#
# Needs the llama.cpp build and harness: eval "$(scripts/llama-cpp.sh --env)" or set
# LAQUANT_LLAMA_CPP (build dir, with bin/) and LAQUANT_HARNESS (dir with llama-logits).
# The F32 GGUF is made with `laquant convert --outtype f32` when that works, else with
# llama.cpp's convert_hf_to_gguf.py through scripts/convert_ref.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/../shared/models/polyglot-25m}
: "${LAQUANT_LLAMA_CPP:=$HOME/.cache/laquant/build}"
: "${LAQUANT_HARNESS:=$HOME/.cache/laquant/harness}"
export LAQUANT_LLAMA_CPP LAQUANT_HARNESS
for f in "$LAQUANT_LLAMA_CPP/bin/llama-imatrix" "$LAQUANT_LLAMA_CPP/bin/llama-quantize" "$LAQUANT_HARNESS/llama-logits"; do
  [[ -x $f ]] || { echo "interop-calib: missing $f (run scripts/llama-cpp.sh)" >&2; exit 1; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
GGUF=$WORK/model-f32.gguf
cd "$ROOT"
cargo build --release --quiet
if ! ./target/release/laquant convert "$MODEL" --outtype f32 -o "$GGUF" >"$WORK/convert.log" 2>&1; then
  echo "interop-calib: laquant convert --outtype f32 unavailable; using convert_hf_to_gguf.py" >&2
  python3 scripts/convert_ref.py --force-pre llama-bpe -- "$MODEL" --outtype f32 --outfile "$GGUF" >"$WORK/convert.log" 2>&1 \
    || { cat "$WORK/convert.log" >&2; exit 1; }
fi
export LAQUANT_CALIB_GGUF=$GGUF LAQUANT_CALIB_MODEL=$MODEL
cargo test --release --test calib_interop -- --ignored --nocapture --test-threads 1
