#!/usr/bin/env bash
# Golden vectors for laquant's kernels, made by ggml itself.
#
#   scripts/gen-golden.sh            rebuild interop/oracle and rewrite fixtures/golden/*.bin
#   scripts/gen-golden.sh --check    regenerate into a temp dir, compare with the committed
#                                    files, and run the Rust golden test against the fresh ones
#   scripts/gen-golden.sh --build    only (re)build the oracle (target/oracle/oracle)
#
# Needs the llama.cpp build (LAQUANT_LLAMA_CPP, default /root/.cache/laquant/build) and its
# source tree (LAQUANT_LLAMA_SRC, default the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${LAQUANT_LLAMA_CPP:-/root/.cache/laquant/build}
SRC=${LAQUANT_LLAMA_SRC:-/root/.cache/laquant/llama_cpp_python-0.3.36/vendor/llama.cpp}
OUT=${LAQUANT_ORACLE_DIR:-target/oracle}
mkdir -p "$OUT"
ORACLE="$OUT/oracle"
if [[ ! -x "$ORACLE" || interop/oracle/oracle.c -nt "$ORACLE" ]]; then
  # No -march and no contraction: the oracle's own input generator must round like the Rust mirror.
  cc -O2 -ffp-contract=off -std=gnu11 -Wall -Wextra -o "$ORACLE" interop/oracle/oracle.c \
     -I"$SRC/ggml/include" -L"$BUILD/bin" -Wl,-rpath,"$BUILD/bin" -lggml-base -lm -lpthread
fi
if [[ "${1:-}" == "--build" ]]; then
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  "$ORACLE" golden "$TMP"
  status=0
  for f in "$TMP"/*.bin; do
    if ! cmp -s "$f" "fixtures/golden/$(basename "$f")"; then
      echo "golden: fixtures/golden/$(basename "$f") differs from what ggml produces now" >&2
      status=1
    fi
  done
  LAQUANT_GOLDEN_DIR="$TMP" cargo test --release --test quant_golden -- --nocapture || status=1
  exit $status
fi
"$ORACLE" golden fixtures/golden
ls -l fixtures/golden
