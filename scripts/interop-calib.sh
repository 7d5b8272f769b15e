#!/usr/bin/env bash
# Calibration interop checks against llama.cpp (tests/calib_interop.rs, ignored by default):
# logits vs llama.cpp on an F32 GGUF, token ids for every corpus language, our imatrix vs
# llama-imatrix's on one language, `calibrate --merge` of llama-imatrix's per-language files vs our
# balanced statistic, llama-quantize --imatrix accepting our file.
#
#   scripts/interop-calib.sh [MODEL_DIR]      (default ../shared/models/polyglot-25m)
#
# Needs the llama.cpp build and harness: LAQUANT_LLAMA_CPP (build dir, with bin/) and
# LAQUANT_HARNESS (dir with llama-logits), else scripts/llama-cpp.sh --env provides them.
# The F32 GGUF is made with `laquant convert --outtype f32` when that works, else with
# llama.cpp's convert_hf_to_gguf.py through scripts/convert_ref.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/../shared/models/polyglot-25m}
if [[ -z "${LAQUANT_LLAMA_CPP:-}" || -z "${LAQUANT_HARNESS:-}" ]]; then
  # Builds (or finds cached) llama.cpp and our harness, rebuilt when the harness source changes.
  eval "$("$ROOT/scripts/llama-cpp.sh" --env)"
fi
export LAQUANT_LLAMA_CPP LAQUANT_HARNESS
for f in "$LAQUANT_LLAMA_CPP/bin/llama-imatrix" "$LAQUANT_LLAMA_CPP/bin/llama-quantize" "$LAQUANT_HARNESS/llama-logits"; do
  [[ -x $f ]] || { echo "interop-calib: missing $f (run scripts/llama-cpp.sh)" >&2; exit 1; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
cargo build --release --quiet
f32_gguf() { # MODEL OUT
  if ! "${CARGO_TARGET_DIR:-./target}/release/laquant" convert "$1" --outtype f32 -o "$2" --force -q >"$WORK/convert.log" 2>&1; then
    echo "interop-calib: laquant convert --outtype f32 failed for $1; using convert_hf_to_gguf.py" >&2
    python3 scripts/convert_ref.py --force-pre llama-bpe -- "$1" --outtype f32 --outfile "$2" >"$WORK/convert.log" 2>&1 \
      || { cat "$WORK/convert.log" >&2; exit 1; }
  fi
}
# polyglot-25m: everything (logits, token ids, imatrix vs llama-imatrix, llama-quantize).
f32_gguf "$MODEL" "$WORK/model-f32.gguf"
LAQUANT_CALIB_GGUF=$WORK/model-f32.gguf LAQUANT_CALIB_MODEL=$MODEL \
  cargo test --release --test calib_interop -- --ignored --nocapture --test-threads 1
# The fixtures of fixtures/checks.txt's `logits` (scripts/fixtures.sh): every family among the tiny fixtures,
# logits and token ids; those also marked `imatrix` (every family with operations of its own beyond
# polyglot-25m's Llama layer: Qwen2's q/k/v biases, Qwen3's Q/K norms, the newer families, the mixtures'
# routing) the imatrix against llama-imatrix's too, and its per-language merge (for the mixtures of experts,
# per expert: routed counts and sums). Mistral's layer is Llama's.
FX=$(scripts/fixtures.sh logits)
for fx in $FX; do
  echo "== fixture $fx"
  f32_gguf "fixtures/$fx" "$WORK/$fx-f32.gguf"
  skip=(--skip imatrix)
  if scripts/fixtures.sh --has "$fx" imatrix; then skip=(); fi
  # A checkpoint storing MXFP4 weights: ggml rounds their matmuls' inputs to Q8_0 levels, where a
  # last-bit difference can move an input a whole level; the bounds grow by our own measured
  # sensitivity to one (tools/nudge.py, tests/calib_interop.rs's module doc).
  nudged=()
  if grep -q '"quant_method": *"mxfp4"' "fixtures/$fx/config.json"; then
    python3 tools/nudge.py "fixtures/$fx" "$WORK/$fx-nudged" >/dev/null
    nudged=(LAQUANT_CALIB_NUDGED="$WORK/$fx-nudged")
  fi
  env "${nudged[@]}" LAQUANT_CALIB_GGUF="$WORK/$fx-f32.gguf" LAQUANT_CALIB_MODEL="$ROOT/fixtures/$fx" \
    cargo test --release --test calib_interop -- --ignored --nocapture --test-threads 1 "${skip[@]}"
done
