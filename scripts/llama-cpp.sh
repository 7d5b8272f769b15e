#!/usr/bin/env bash
# Fetch, build and cache the reference llama.cpp (vendored in the PyPI sdist llama-cpp-python==0.3.36)
# and laquant's interop C harness (interop/harness/*.c), outside the clone.
#
#   scripts/llama-cpp.sh            # idempotent: a second run on the same machine rebuilds nothing
#   eval "$(scripts/llama-cpp.sh --env)"   # also prints LAQUANT_LLAMA_CPP / LAQUANT_LLAMA_SRC / LAQUANT_HARNESS
#
# Layout under ${LAQUANT_CACHE:-$HOME/.cache/laquant}:
#   llama_cpp_python-0.3.36.tar.gz        the sdist, sha256-checked
#   llama_cpp_python-0.3.36/vendor/llama.cpp   sources (convert_hf_to_gguf.py, gguf-py, ggml, tools)
#   build/bin                             llama-quantize llama-imatrix llama-perplexity llama-tokenize llama-gguf llama-embedding + lib*.so
#   harness/                              gguf-check, llama-logits (our programs calling the ggml/llama APIs)
set -euo pipefail

VER=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE=${LAQUANT_CACHE:-$HOME/.cache/laquant}
SDIST=$CACHE/llama_cpp_python-$VER.tar.gz
SRC=$CACHE/llama_cpp_python-$VER
LLAMA=$SRC/vendor/llama.cpp
BUILD=$CACHE/build
HARNESS_OUT=$CACHE/harness
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JOBS=${LAQUANT_JOBS:-$(nproc)}
TARGETS=(llama-quantize llama-imatrix llama-perplexity llama-tokenize llama-gguf llama-embedding)
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
             -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF)
# These machines advertise AMX (amx_tile/amx_int8 in /proc/cpuinfo) and the kernel grants the permission, but the
# first tile instruction dies with SIGILL (seen in ggml's tinygemm_kernel_amx on a Q8_0 matmul). GGML_NATIVE's
# -march=native would compile ggml's AMX kernels in, so switch the AMX ISA off explicitly (GCC keeps explicit
# -mno-* flags whatever -march says). Everything else stays native (AVX-512, VNNI...).
if [[ "$(uname -m)" == x86_64 ]]; then
  NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  CMAKE_FLAGS+=("-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX")
fi

log() { echo "[llama-cpp.sh] $*" >&2; }

if [[ "${1:-}" == "--env" ]]; then PRINT_ENV=1; else PRINT_ENV=0; fi
mkdir -p "$CACHE"

# --- 1. the sdist ------------------------------------------------------------------------------
sha_ok() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$SHA256" ]]; }
if [[ -f "$LLAMA/convert_hf_to_gguf.py" && -f "$LLAMA/CMakeLists.txt" ]]; then
  log "sources present: $LLAMA"
else
  if ! sha_ok "$SDIST"; then
    log "downloading llama-cpp-python==$VER sdist from PyPI"
    # The simple index lists every file with its URL; pick the sdist of this exact version.
    URL=$(python3 - "$VER" <<'PY'
import re, sys, urllib.request
ver = sys.argv[1]
html = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/", timeout=60).read().decode()
for href in re.findall(r'href="([^"]+)"', html):
    if href.split("#")[0].endswith(f"/llama_cpp_python-{ver}.tar.gz"):
        print(href.split("#")[0]); break
else:
    sys.exit(f"llama_cpp_python-{ver}.tar.gz not found in the PyPI simple index")
PY
)
    tmp=$(mktemp "$SDIST.XXXXXX")
    curl -fsSL --retry 3 -o "$tmp" "$URL"
    got=$(sha256sum "$tmp" | cut -d' ' -f1)
    if [[ "$got" != "$SHA256" ]]; then
      rm -f "$tmp"; log "sha256 mismatch for $URL: got $got, want $SHA256"; exit 1
    fi
    mv "$tmp" "$SDIST"
  fi
  log "extracting $SDIST"
  # Extract beside the target and move it into place, so an interrupted run leaves no half tree.
  tmpdir=$(mktemp -d "$CACHE/.extract.XXXXXX")
  tar -xzf "$SDIST" -C "$tmpdir"
  rm -rf "$SRC"
  mv "$tmpdir/llama_cpp_python-$VER" "$SRC"
  rmdir "$tmpdir"
fi

# --- 2. the llama.cpp build ----------------------------------------------------------------------
STAMP_WANT="$VER ${CMAKE_FLAGS[*]} ${TARGETS[*]}"
all_built() {
  local t
  for t in "${TARGETS[@]}" libllama.so libggml.so libggml-base.so libggml-cpu.so; do
    [[ -e "$BUILD/bin/$t" ]] || return 1
  done
}
if all_built && [[ -f "$BUILD/.laquant-stamp" && "$(cat "$BUILD/.laquant-stamp")" == "$STAMP_WANT" ]]; then
  log "llama.cpp build present: $BUILD/bin"
else
  if [[ -f "$BUILD/CMakeCache.txt" ]] && ! grep -q "^CMAKE_HOME_DIRECTORY:INTERNAL=$LLAMA\$" "$BUILD/CMakeCache.txt"; then
    log "$BUILD was configured for other sources; starting afresh"
    rm -rf "$BUILD"
  fi
  log "configuring llama.cpp in $BUILD"
  cmake -S "$LLAMA" -B "$BUILD" "${CMAKE_FLAGS[@]}" >&2
  log "building ${TARGETS[*]} (-j$JOBS); ~15 min on 2 cores"
  start=$(date +%s)
  cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]}" >&2
  log "llama.cpp built in $(( $(date +%s) - start )) s"
  all_built || { log "build finished but some targets are missing in $BUILD/bin"; exit 1; }
  echo "$STAMP_WANT" > "$BUILD/.laquant-stamp"
fi

# --- 3. our interop harness (rebuilt only when a source or the compile line changes) -------------
mkdir -p "$HARNESS_OUT"
CC=${CC:-cc}
CFLAGS=(-O2 -g -std=c11 -Wall -Wextra -Werror -I"$LLAMA/include" -I"$LLAMA/ggml/include")
LDFLAGS=(-L"$BUILD/bin" -Wl,-rpath,"$BUILD/bin" -lllama -lggml -lggml-base -lm)
shopt -s nullglob
for src in "$ROOT"/interop/harness/*.c; do
  name=$(basename "$src" .c)
  out=$HARNESS_OUT/$name
  key=$( { cat "$src" "$ROOT"/interop/harness/*.h 2>/dev/null; echo "$CC ${CFLAGS[*]} ${LDFLAGS[*]}"; \
           sha256sum "$BUILD/bin/libllama.so"; } | sha256sum | cut -d' ' -f1)
  if [[ -x "$out" && -f "$out.key" && "$(cat "$out.key")" == "$key" ]]; then
    log "harness $name up to date"
    continue
  fi
  log "compiling harness $name"
  "$CC" "${CFLAGS[@]}" -o "$out.tmp" "$src" "${LDFLAGS[@]}"
  mv "$out.tmp" "$out"
  echo "$key" > "$out.key"
done

if [[ $PRINT_ENV == 1 ]]; then
  echo "export LAQUANT_LLAMA_CPP='$BUILD' LAQUANT_LLAMA_SRC='$LLAMA' LAQUANT_HARNESS='$HARNESS_OUT'"
fi
log "ready: LAQUANT_LLAMA_CPP=$BUILD LAQUANT_LLAMA_SRC=$LLAMA LAQUANT_HARNESS=$HARNESS_OUT"
