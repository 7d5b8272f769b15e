#!/usr/bin/env bash
# Interop: for every llama-quantize preset (and --pure types), with and without an
# imatrix, `laquant convert --outtype P` must equal `llama-quantize` run on
# laquant's own F32 output: same tensors, types, order and bytes.
# Usage: scripts/interop-presets.sh [MODEL...]   (default: polyglot-25m and fixtures/llama-bpe)
# Env: MODES (default "plain imatrix"), PRESETS / PURE (a subset of the lists below, for large models).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LAQUANT_CACHE:-$HOME/.cache/laquant}"
bin="${LAQUANT_LLAMA_CPP:-$cache/build}/bin"
[ -x "$bin/llama-quantize" ] || bin="${LAQUANT_LLAMA_CPP:-$cache/build}"
laquant="${LAQUANT:-${CARGO_TARGET_DIR:-$here/target}/release/laquant}"
[ -x "$laquant" ] || (cd "$here" && cargo build --release --quiet)
models=("$@")
[ ${#models[@]} -gt 0 ] || models=("$here/../shared/models/polyglot-25m" "$here/fixtures/llama-bpe")
# q8_0 without --pure is the converter type (convert_hf_to_gguf.py order), checked by interop-convert.sh
presets="${PRESETS:-q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k iq4_nl iq4_xs tq1_0 tq2_0 q1_0 q2_0}"
pure="${PURE:-q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k_m q4_k_m q5_k_m q6_k iq4_nl iq4_xs tq1_0 tq2_0 q1_0 q2_0}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fail=0; n=0
for m in "${models[@]}"; do
  name="$(basename "$m")"
  "$laquant" convert "$m" -o "$work/$name-f32.gguf" --outtype f32 --force -q
  # An imatrix from llama.cpp's own tool on a little English text.
  modes="${MODES:-plain imatrix}"
  if [[ " $modes " == *" imatrix "* ]]; then
    head -c 20000 "$here/../shared/corpus/calib/en.txt" > "$work/calib.txt"
    "$bin/llama-imatrix" -m "$work/$name-f32.gguf" -f "$work/calib.txt" -o "$work/$name-imatrix.gguf" -c 128 --chunks 8 >"$work/imatrix.log" 2>&1 \
      || { echo "llama-imatrix failed on $name:"; tail -5 "$work/imatrix.log"; exit 1; }
  fi
  for mode in $modes; do
    for p in $presets q8_0; do
      extra=(); qextra=()
      if [ "$mode" = imatrix ]; then extra=(--imatrix "$work/$name-imatrix.gguf"); qextra=(--imatrix "$work/$name-imatrix.gguf"); fi
      for variant in preset pure; do
        if [ "$variant" = preset ] && [ "$p" = q8_0 ]; then continue; fi
        if [ "$variant" = pure ]; then
          case " $pure " in *" $p "*) ;; *) continue;; esac
          extra+=(--pure); qextra+=(--pure)
        fi
        ours="$work/ours.gguf"; ref="$work/ref.gguf"
        if ! "$laquant" convert "$m" -o "$ours" --outtype "$p" "${extra[@]}" --force -q 2>"$work/err"; then
          echo "FAIL $name $p $mode $variant: laquant: $(cat "$work/err")"; fail=$((fail+1)); continue
        fi
        P=$(echo "$p" | tr a-z A-Z)
        "$bin/llama-quantize" "${qextra[@]}" "$work/$name-f32.gguf" "$ref" "$P" >/dev/null 2>&1
        n=$((n+1))
        if python3 "$here/scripts/gguf_diff.py" "$ours" "$ref" --order > "$work/diff" 2>&1; then
          echo "ok   $name $p $mode $variant"
        else
          echo "FAIL $name $p $mode $variant"; head -5 "$work/diff"; fail=$((fail+1))
        fi
      done
    done
  done
done
echo "$n comparisons, $fail failures"
[ "$fail" = 0 ]
