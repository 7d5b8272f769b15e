#!/usr/bin/env bash
# Golden vectors for laquant's kernels, made by ggml itself.
#
#   scripts/gen-golden.sh            rebuild interop/oracle and rewrite fixtures/golden/*.bin
#   scripts/gen-golden.sh --check    regenerate into a temp dir, compare with the committed
#                                    files, and run the Rust golden test against the fresh ones
#   scripts/gen-golden.sh --build    only (re)build the oracle (target/oracle/oracle)
#   scripts/gen-golden.sh --aarch64 [--check]
#                                    the same for aarch64 into fixtures/golden-aarch64: ggml.c and
#                                    ggml-quants.c cross-compiled with aarch64-linux-gnu-gcc (-O3 -DNDEBUG
#                                    as cmake's Release, plus -ffp-contract=off, see below) and run under
#                                    qemu-aarch64-static; --check also runs the aarch64 build of
#                                    tests/quant_golden.rs under qemu against the fresh vectors.
#
# Why aarch64 has its own vectors: C leaves float-to-int conversion of NaN and out-of-range values
# undefined, and x86 (cvttss2si: INT_MIN) and aarch64 (fcvtzs: saturate, NaN -> 0) differ, as do the
# default NaNs they produce (sign bit set on x86, clear on ARM). ggml's bytes for hostile inputs
# (subnormal scales, Inf) therefore depend on the machine, and laquant follows the machine it runs on.
# -ffp-contract=off: gcc fuses a*b+c into one fmadd on aarch64 by default (x86 ggml-base has no FMA to
# fuse into), which changes ggml's own imatrix-weighted results there in the last bits; laquant keeps
# the unfused order of operations of the C source on every machine.
#
# Needs the llama.cpp build (LAQUANT_LLAMA_CPP, default /root/.cache/laquant/build) and its
# source tree (LAQUANT_LLAMA_SRC, default the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${LAQUANT_LLAMA_CPP:-/root/.cache/laquant/build}
SRC=${LAQUANT_LLAMA_SRC:-/root/.cache/laquant/llama_cpp_python-0.3.36/vendor/llama.cpp}
OUT=${LAQUANT_ORACLE_DIR:-target/oracle}
mkdir -p "$OUT"
# compare_with FRESH COMMITTED: fails (naming the file) when a fresh vector differs from the committed one.
compare_with() {
  local rc=0 f
  for f in "$1"/*.bin; do
    if ! cmp -s "$f" "$2/$(basename "$f")"; then
      echo "golden: $2/$(basename "$f") differs from what ggml produces now" >&2
      rc=1
    fi
  done
  return $rc
}
if [[ "${1:-}" == "--aarch64" ]]; then
  A="$OUT/aarch64"
  mkdir -p "$A"
  CC=${LAQUANT_AARCH64_CC:-aarch64-linux-gnu-gcc}
  SYSROOT=${LAQUANT_AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
  VERSION_H=$(dirname "$(find "$BUILD" -name ggml-version.h | head -1)")
  FLAGS=(-O3 -DNDEBUG -ffp-contract=off -std=gnu11 -D_GNU_SOURCE -I"$SRC/ggml/include" -I"$SRC/ggml/src" -I"$VERSION_H")
  for f in ggml.c ggml-quants.c; do
    "$CC" "${FLAGS[@]}" -c "$SRC/ggml/src/$f" -o "$A/${f%.c}.o" 2> "$A/${f%.c}.log" \
      || { cat "$A/${f%.c}.log" >&2; exit 1; }
  done
  "$CC" "${FLAGS[@]}" -Wall -Wextra -c interop/oracle/oracle.c -o "$A/oracle.o"
  "$CC" -O2 -Wall -Wextra -c interop/oracle/aarch64-stubs.c -o "$A/stubs.o"
  "$CC" -o "$A/oracle" "$A/oracle.o" "$A/ggml.o" "$A/ggml-quants.o" "$A/stubs.o" -lm -lpthread
  QEMU=(qemu-aarch64-static -L "$SYSROOT")
  if [[ "${2:-}" == "--check" ]]; then
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    "${QEMU[@]}" "$A/oracle" golden "$TMP"
    status=0
    compare_with "$TMP" fixtures/golden-aarch64 || status=1
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$CC
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L $SYSROOT"
    LAQUANT_GOLDEN_DIR="$TMP" cargo test --release --target aarch64-unknown-linux-gnu \
      --test quant_golden --test quant_props || status=1
    # (`cargo test --target aarch64-unknown-linux-gnu --lib quant` also passes under qemu, but takes ~9 min.)
    exit $status
  fi
  mkdir -p fixtures/golden-aarch64
  "${QEMU[@]}" "$A/oracle" golden fixtures/golden-aarch64
  ls -l fixtures/golden-aarch64
  exit 0
fi
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
  compare_with "$TMP" fixtures/golden || status=1
  LAQUANT_GOLDEN_DIR="$TMP" cargo test --release --test quant_golden -- --nocapture || status=1
  exit $status
fi
"$ORACLE" golden fixtures/golden
ls -l fixtures/golden
