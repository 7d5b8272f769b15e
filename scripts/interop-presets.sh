#!/usr/bin/env bash
# Interop: for every llama-quantize preset (and --pure types), with and without an
# imatrix, `laquant convert --outtype P` must equal `llama-quantize` run on
# laquant's own F32 output: same tensors, types, order and bytes.
# Usage: scripts/interop-presets.sh [MODEL...]   (default: polyglot-25m and fixtures/llama-bpe)
# Env: MODES (default "plain imatrix"), PRESETS / PURE (a subset of the lists below, for large models),
#      IMATRIX_TOOL=laquant: the imatrix made by `laquant calibrate` (one chunk of 128 tokens per language),
#      for the encoders, which llama-imatrix does not run.
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
# PRESETS, PURE, EDGE_PRESETS, EDGE_PURE (env) replace the lists below, e.g. PRESETS= PURE= to check the edge ones alone.
presets="${PRESETS-q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k iq4_nl iq4_xs tq1_0 tq2_0 q1_0 q2_0}"
pure="${PURE-q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k_m q4_k_m q5_k_m q6_k iq4_nl iq4_xs tq1_0 tq2_0 q1_0 q2_0}"
# The edge-size presets, on a few models only (the stage's time): EDGE_MODELS, by directory name,
# default llama-bpe (dense Llama, width 256: every i-quant block fits), qwen3moe (4 experts, width
# 256: the expert-count rules and MXFP4_MOE's MXFP4 experts) and mixtral (8 experts: the 8-expert
# rules; width 128, so the 256-block types fall back as llama-quantize's do).
# and gpt-oss (pre-stacked experts with biases, width 64: MXFP4_MOE on them).
edge_models="${EDGE_MODELS:-llama-bpe qwen3moe mixtral gpt-oss}"
edge_presets="${EDGE_PRESETS-q2_k_s iq3_m iq3_s iq3_xs iq3_xxs iq2_m iq2_s iq2_xs iq2_xxs iq1_m iq1_s mxfp4_moe copy}"
edge_pure="${EDGE_PURE-iq3_s iq3_xxs iq2_s iq2_xs iq2_xxs iq1_m iq1_s mxfp4_moe}"
# Presets llama-quantize refuses without an imatrix (some tensor's type needs one), or on which
# ggml aborts (a tensor the imatrix lacks): laquant must refuse them too, naming the tensor; both
# refusing counts as agreement.
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fail=0; n=0
for m in "${models[@]}"; do
  name="$(basename "$m")"
  model_presets=$presets; model_pure=$pure
  case " $edge_models " in *" $name "*) model_presets="$presets $edge_presets"; model_pure="$pure $edge_pure";; esac
  # A checkpoint storing MXFP4 weights (gpt-oss-mxfp4): the two presets that keep them as stored,
  # MXFP4_MOE and COPY, whatever the lists say.
  if [ -f "$m/config.json" ] && grep -q '"quant_method": *"mxfp4"' "$m/config.json"; then
    for p in mxfp4_moe copy; do
      case " $model_presets " in *" $p "*) ;; *) model_presets="$model_presets $p";; esac
    done
  fi
  rm -rf "$work/pairs" "$work/pairs.tsv"; mkdir -p "$work/pairs"; : > "$work/pairs.tsv"
  "$laquant" convert "$m" -o "$work/$name-f32.gguf" --outtype f32 --force -q
  # An imatrix from llama.cpp's own tool on a little English text.
  modes="${MODES:-plain imatrix}"
  if [[ " $modes " == *" imatrix "* && "${IMATRIX_TOOL:-}" == laquant ]]; then
    "$laquant" -q calibrate "$m" --chunks 1 --ctx 128 --threads 2 -o "$work/$name-imatrix.gguf" --force
  elif [[ " $modes " == *" imatrix "* ]]; then
    head -c 20000 "$here/../shared/corpus/calib/en.txt" > "$work/calib.txt"
    "$bin/llama-imatrix" -m "$work/$name-f32.gguf" -f "$work/calib.txt" -o "$work/$name-imatrix.gguf" -c 128 --chunks 8 >"$work/imatrix.log" 2>&1 \
      || { echo "llama-imatrix failed on $name:"; tail -5 "$work/imatrix.log"; exit 1; }
  fi
  for mode in $modes; do
    for p in $model_presets q8_0; do
      # --allow-requantize: an MXFP4 checkpoint's f32 file holds its experts MXFP4 (gpt-oss-mxfp4), which
      # laquant's presets requantize from their values as llama-quantize does when allowed (F32 inputs: no effect).
      extra=(); qextra=(--allow-requantize)
      if [ "$mode" = imatrix ]; then extra=(--imatrix "$work/$name-imatrix.gguf"); qextra+=(--imatrix "$work/$name-imatrix.gguf"); fi
      for variant in preset pure; do
        if [ "$variant" = preset ] && [ "$p" = q8_0 ]; then continue; fi
        if [ "$variant" = pure ]; then
          case " $model_pure " in *" $p "*) ;; *) continue;; esac
          extra+=(--pure); qextra+=(--pure)
        fi
        ours="$work/ours.gguf"; ref="$work/ref.gguf"
        P=$(echo "$p" | tr a-z A-Z)
        if ! "$laquant" convert "$m" -o "$ours" --outtype "$p" "${extra[@]}" --force -q 2>"$work/err"; then
          n=$((n+1))
          # llama-quantize refuses (tensor_requires_imatrix), or ggml aborts on a tensor the
          # imatrix lacks (IQ1_S/IQ2_XXS/IQ2_XS under --pure: the output head, the embeddings).
          if grep -q "requires an importance matrix\|needs importance weights" "$work/err" \
             && ! "$bin/llama-quantize" "${qextra[@]}" "$work/$name-f32.gguf" "$ref" "$P" >"$work/qlog" 2>&1 \
             && grep -q "requires an importance matrix\|imatrix != NULL" "$work/qlog"; then
            echo "ok   $name $p $mode $variant (both refuse: $(grep -o "tensor [^ :]*" "$work/err" | head -1))"
          # A width no block of the type fits and no fallback type (Q1_0 on width 64): both stop.
          elif grep -q "which has no fallback\|is not a multiple of .* block size" "$work/err" \
             && ! "$bin/llama-quantize" "${qextra[@]}" "$work/$name-f32.gguf" "$ref" "$P" >"$work/qlog" 2>&1 \
             && grep -q "no tensor type fallback is defined" "$work/qlog"; then
            echo "ok   $name $p $mode $variant (both refuse, no fallback type: $(grep -o "tensor [^ :]*" "$work/err" | head -1))"
          else
            echo "FAIL $name $p $mode $variant: laquant: $(cat "$work/err")"; fail=$((fail+1))
          fi
          continue
        fi
        "$bin/llama-quantize" "${qextra[@]}" "$work/$name-f32.gguf" "$ref" "$P" >/dev/null 2>&1
        n=$((n+1))
        # Compared below, all of this model's pairs in one gguf_diff.py process (a Python start
        # per pair was most of this script's time).
        mv "$ours" "$work/pairs/$n-ours.gguf"; mv "$ref" "$work/pairs/$n-ref.gguf"
        printf '%s\t%s\t%s\n' "$name $p $mode $variant" "$work/pairs/$n-ours.gguf" "$work/pairs/$n-ref.gguf" >> "$work/pairs.tsv"
      done
    done
  done
  if [ -s "$work/pairs.tsv" ]; then
    python3 "$here/scripts/gguf_diff.py" --order --pairs "$work/pairs.tsv" > "$work/diff" 2>&1 || true
    cat "$work/diff"
    bad=$(grep -c '^FAIL' "$work/diff" || true)
    ok=$(grep -c '^ok' "$work/diff" || true)
    fail=$((fail + bad))
    # gguf_diff.py itself failing (not a difference): every pair it did not report fails.
    total=$(wc -l < "$work/pairs.tsv")
    if [ $((ok + bad)) -ne "$total" ]; then
      echo "FAIL $name: gguf_diff.py reported $((ok + bad)) of $total pairs"; fail=$((fail + total - ok - bad))
    fi
  fi
done
echo "$n comparisons, $fail failures"
[ "$fail" = 0 ]
