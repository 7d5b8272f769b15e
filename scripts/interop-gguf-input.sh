#!/usr/bin/env bash
# Interop: a GGUF as the input of `laquant convert`. For every model (default: polyglot-25m and
# every model fixture), its F16 GGUF (made by `laquant convert --outtype f16`, which is
# convert_hf_to_gguf.py's file) is requantized by `laquant convert FILE.gguf` and by
# `llama-quantize`, with and without an imatrix (llama-imatrix's); the two files must be equal
# byte for byte (`cmp`: metadata, tokenizer, tensor infos, data). The first model goes through
# every preset (and F32/F16/BF16/Q8_0), the others through a few (an MXFP4 checkpoint is never the first). Also for the first model: BF16
# and F32 inputs, --allow-requantize from Q8_0 against llama-quantize's, the refusal of a
# quantized input without it, and la-mix from the GGUF (its checkpoint rebuilt from the file):
# from the F32 GGUF the same tensors as la-mix from the checkpoint (gguf_diff.py), from the F16
# GGUF a file llama-perplexity runs. For an MXFP4 checkpoint (gpt-oss-mxfp4), la-mix from its
# F16 GGUF (experts MXFP4) keeps the experts' bytes and llama-perplexity runs it. Last, the tokenizer la-mix rebuilds from a SentencePiece
# vocabulary, and from Llama 3's BPE one, against llama.cpp's ids (tests/gguf_input.rs, ignored
# without the harness).
# Usage: scripts/interop-gguf-input.sh [MODEL...]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LAQUANT_CACHE:-$HOME/.cache/laquant}"
bin="${LAQUANT_LLAMA_CPP:-$cache/build}/bin"
[ -x "$bin/llama-quantize" ] || bin="${LAQUANT_LLAMA_CPP:-$cache/build}"
laquant="${LAQUANT:-${CARGO_TARGET_DIR:-$here/target}/release/laquant}"
[ -x "$laquant" ] || (cd "$here" && cargo build --release --quiet)
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=("$here/../shared/models/polyglot-25m")
  # Mixtures of experts included (llama-quantize's expert-count rules, per-expert imatrix slices).
  for f in "$here"/fixtures/*/config.json; do models+=("$(dirname "$f")"); done
fi
all="f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k iq4_nl iq4_xs tq1_0 tq2_0 q1_0 q2_0"
presets="${PRESETS:-q4_k_m q8_0 q6_k q3_k_s q5_0 iq4_xs}"
imatrix_presets="${IMATRIX_PRESETS:-q4_k_m iq4_xs}"
for i in "${!models[@]}"; do models[$i]="$(realpath "${models[$i]}")"; done
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
cd "$work"   # quantize.imatrix.file holds the path as given: both tools get the same one
fail=0; n=0
same() { # LABEL OURS REF
  n=$((n+1))
  if cmp -s "$2" "$3"; then echo "ok   $1"
  else echo "FAIL $1: $(cmp "$2" "$3" | head -1)"; python3 "$here/scripts/gguf_diff.py" --meta --order "$2" "$3" | head -5 || true; fail=$((fail+1)); fi
}
runs() { # LABEL FILE: llama-perplexity runs FILE on calib.txt
  # llama.cpp's asynchronous logger can lose its last lines on a run under a second (a tiny
  # fixture given first): a log without its final estimate is run again, at most five times.
  for _ in 1 2 3 4 5; do
    "$bin/llama-perplexity" -m "$2" -f calib.txt -c 128 --chunks 2 -t 2 >ppl.log 2>&1 || break
    grep -q "Final estimate" ppl.log && break
  done
  if grep -q "Final estimate" ppl.log; then echo "ok   $1: llama-perplexity $(grep -o 'PPL = [0-9.]*' ppl.log)"
  else echo "FAIL $1: llama-perplexity: $(tail -2 ppl.log)"; fail=$((fail+1)); fi
}
pair() { # LABEL INPUT PRESET [extra args for both...]
  local label=$1 in=$2 p=$3; shift 3
  local P; P=$(echo "$p" | tr a-z A-Z)
  if ! "$laquant" convert "$in" --outtype "$p" "$@" -o ours.gguf --force -q 2>err; then
    echo "FAIL $label: laquant: $(cat err)"; fail=$((fail+1)); return
  fi
  "$bin/llama-quantize" "$@" "$in" ref.gguf "$P" >quantize.log 2>&1 \
    || { echo "FAIL $label: llama-quantize: $(tail -2 quantize.log)"; fail=$((fail+1)); return; }
  same "$label" ours.gguf ref.gguf
}
first=1
for m in "${models[@]}"; do
  name="$(basename "$m")"
  "$laquant" convert "$m" --outtype f16 -o "$name-f16.gguf" --force -q 2>log || { cat log; exit 1; }
  plain=$presets; with=$imatrix_presets
  # An MXFP4 checkpoint's GGUF holds its experts MXFP4 (gpt-oss-mxfp4): both tools requantize them only
  # when allowed (the refusal without it is checked on the first model's Q8_0 file below).
  req=(); if grep -q '"quant_method": "mxfp4"' "$m/config.json"; then req=(--allow-requantize); fi
  # The full round goes to the first model whose experts are not MXFP4 (its Q8_0 file is made by llama-quantize
  # without --allow-requantize).
  if [ $first = 1 ] && [ ${#req[@]} -eq 0 ]; then plain=$all; with=$all; fi
  for p in $plain; do pair "$name f16 -> $p" "$name-f16.gguf" "$p" "${req[@]}"; done
  head -c 20000 "$here/../shared/corpus/calib/en.txt" > calib.txt
  if [ ${#req[@]} -gt 0 ]; then
    # COPY keeps the MXFP4 experts (and the file type MXFP4_MOE) as they are.
    pair "$name f16 -> copy" "$name-f16.gguf" copy
    # la-mix from the MXFP4 GGUF keeps the experts (their bytes the input's); llama.cpp runs it.
    n=$((n+1))
    if ! "$laquant" convert "$name-f16.gguf" --chunks 1 --sens-tokens 16 --no-cache -q --force \
        -o lamix-mxfp4.gguf 2>err; then
      echo "FAIL $name f16 -> la-mix: $(cat err)"; fail=$((fail+1))
    elif ! python3 - "$name-f16.gguf" lamix-mxfp4.gguf >diff.log 2>&1 <<'PY'
import os, sys
sys.path.insert(0, os.path.expanduser("~/.cache/laquant/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py"))
import gguf
a, b = ({t.name: t for t in gguf.GGUFReader(p).tensors} for p in sys.argv[1:])
mx = [n for n, t in a.items() if t.tensor_type == gguf.GGMLQuantizationType.MXFP4]
bad = [n for n in mx if b[n].tensor_type != a[n].tensor_type or bytes(b[n].data) != bytes(a[n].data)]
print(f"{len(mx)} MXFP4 tensors, differing: {bad}")
sys.exit(1 if bad or not mx else 0)
PY
    then echo "FAIL $name f16 -> la-mix: experts not kept: $(tail -1 diff.log)"; fail=$((fail+1))
    else echo "ok   $name f16 -> la-mix: $(tail -1 diff.log)"; runs "$name f16 -> la-mix" lamix-mxfp4.gguf; fi
  fi
  if grep -Eq '"(BertModel|BertForMaskedLM|XLMRobertaModel|XLMRobertaForSequenceClassification)"' "$m/config.json"; then
    echo "skip $name --imatrix: llama-imatrix does not run encoders (it aborts in llama_encode)"
  elif "$bin/llama-imatrix" -m "$name-f16.gguf" -f calib.txt -o imatrix.gguf -c 128 --chunks 4 >imatrix.log 2>&1; then
    for p in $with; do pair "$name f16 -> $p --imatrix" "$name-f16.gguf" "$p" --imatrix imatrix.gguf "${req[@]}"; done
  else
    echo "FAIL $name: llama-imatrix: $(tail -2 imatrix.log)"; fail=$((fail+1))
  fi
  if [ $first = 1 ] && [ ${#req[@]} -eq 0 ]; then
    first=0
    for t in bf16 f32; do
      "$laquant" convert "$m" --outtype "$t" -o "$name-$t.gguf" --force -q 2>log || { cat log; exit 1; }
      pair "$name $t -> q4_k_m" "$name-$t.gguf" q4_k_m "${req[@]}"
    done
    # An already quantized input: refused without --allow-requantize, as llama-quantize does.
    "$bin/llama-quantize" "$name-f16.gguf" q8.gguf Q8_0 >/dev/null 2>&1
    n=$((n+1))
    if "$laquant" convert q8.gguf --outtype q4_0 -o ours.gguf --force -q 2>err; then
      echo "FAIL $name: a Q8_0 input was requantized without --allow-requantize"; fail=$((fail+1))
    elif grep -q "requantiz" err; then echo "ok   $name q8_0 -> q4_0 refused: $(head -c 100 err)"
    else echo "FAIL $name: unclear refusal: $(cat err)"; fail=$((fail+1)); fi
    pair "$name q8_0 -> q4_0 --allow-requantize" q8.gguf q4_0 --allow-requantize
    # COPY keeps every tensor in its input type (Q8_0 here) and the input's file type.
    pair "$name q8_0 -> copy" q8.gguf copy
    # Without general.file_type, COPY writes the type llama.cpp's loader guesses (with LLAMA_FTYPE_GUESSED).
    src="${LAQUANT_LLAMA_SRC:-$cache/llama_cpp_python-0.3.36/vendor/llama.cpp}"
    python3 "$src/gguf-py/gguf/scripts/gguf_new_metadata.py" --remove-metadata general.file_type --force \
      q8.gguf q8-noftype.gguf >/dev/null 2>&1 || { echo "gguf_new_metadata.py failed" >&2; exit 1; }
    pair "$name q8_0 without general.file_type -> copy" q8-noftype.gguf copy
    # la-mix, calibrated small (one chunk per language) to stay quick.
    small=(--chunks 1 --sens-tokens 16 --no-cache -q --force)
    "$laquant" convert "$m" "${small[@]}" -o lamix-hf.gguf 2>log || { cat log; exit 1; }
    n=$((n+1))
    if ! "$laquant" convert "$name-f32.gguf" "${small[@]}" -o lamix-f32.gguf 2>err; then
      echo "FAIL $name f32 -> la-mix: $(cat err)"; fail=$((fail+1))
    elif python3 "$here/scripts/gguf_diff.py" --order lamix-f32.gguf lamix-hf.gguf >diff.log; then
      echo "ok   $name f32 -> la-mix: the tensors of la-mix from the checkpoint"
    else echo "FAIL $name f32 -> la-mix: $(head -3 diff.log)"; fail=$((fail+1)); fi
    n=$((n+1))
    if ! "$laquant" convert "$name-f16.gguf" "${small[@]}" -o lamix-f16.gguf 2>err; then
      echo "FAIL $name f16 -> la-mix: $(cat err)"; fail=$((fail+1))
    # llama.cpp's asynchronous logger can lose its last lines on a run under a second (a tiny
    # fixture given first): a log without its final estimate is run again, at most five times.
    else runs "$name f16 -> la-mix" lamix-f16.gguf; fi
  fi
done
# The tokenizer la-mix rebuilds from a SentencePiece vocabulary (Llama 2's, Mistral's, Gemma's,
# Phi-3's) and from Llama 3's BPE one: the ids of llama.cpp's own tokenizer on the same GGUF, for every language of the corpus.
n=$((n+1))
if (cd "$here" && LAQUANT_HARNESS="${LAQUANT_HARNESS:-$cache/harness}" cargo test --release --quiet \
      --test gguf_input -- --ignored rebuilt_tokenizers_tokenize_as_llama_cpp) >tok.log 2>&1; then
  echo "ok   vocabularies rebuilt: llama.cpp's token ids (tinyllama-spm, mistral-spm, gemma2, gemma3, gemma3-mm, llama3-rope, phi3)"
else echo "FAIL rebuilt tokenizers: $(grep -m3 -E 'differ|panicked' tok.log)"; fail=$((fail+1)); fi
echo "$n comparisons, $fail failures"
[ "$fail" = 0 ]
