#!/usr/bin/env bash
# End-to-end quantization benchmark (issue 5), side by side on this machine with the same threads:
#
#   q4_k_m:  laquant convert MODEL --outtype q4_k_m
#            vs  convert_hf_to_gguf.py --outtype f16  +  llama-quantize F16.gguf Q4_K_M
#   la-mix:  laquant convert MODEL --outtype la-mix        (calibrates on the embedded corpus, then converts)
#            vs  convert_hf_to_gguf.py --outtype f16  +  llama-imatrix (same corpus text, same -c, same number
#                of chunks)  +  llama-quantize --imatrix F16.gguf Q4_K_M
#
# Their time is the sum of their steps and their peak RSS the largest of them (the F16 conversion is run
# once per model and counted in both rows). Models: ../shared/models/polyglot-25m and a >= 1 GB random Llama
# generated here (TinyLlama shape: hidden 2048, ffn 5632, every width a multiple of 256).
# Targets of issue 5: >= 3x faster end to end, peak RSS <= 1/4 of theirs.
#
#   scripts/bench-e2e.sh        # table on stdout, logs in $LAQUANT_BENCH_OUT (default bench-out/)
# env: LAQUANT_BIN, LAQUANT_THREADS (default nproc), LAQUANT_BENCH_MODELS, LAQUANT_BENCH_LAYERS (13),
#      LAQUANT_E2E_MODES ("q4_k_m la-mix"),
#      LAQUANT_E2E_CTX / LAQUANT_E2E_CHUNKS: calibration context and chunks per language on polyglot-25m
#        (512 / all), LAQUANT_E2E_BIG_CTX / LAQUANT_E2E_BIG_CHUNKS on the random model (128 / 1: a forward pass
#        over the whole corpus of a 0.6B model takes hours on 2 cores; both sides get the same token count),
#      LAQUANT_E2E_SENS_TOKENS: passed to la-mix as --sens-tokens (0: the raw error proxy, no measured
#        sensitivity; unset: laquant's default sizing, at most the calibration's compute).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${LAQUANT_BENCH_OUT:-$ROOT/bench-out}
LAYERS=${LAQUANT_BENCH_LAYERS:-13}
THREADS=${LAQUANT_THREADS:-$(nproc)}
MODES=${LAQUANT_E2E_MODES:-q4_k_m la-mix}
SHARED=${LAQUANT_SHARED:-$ROOT/../shared}
mkdir -p "$OUT"
source "$ROOT/scripts/bench-lib.sh"

if [[ -z "${LAQUANT_LLAMA_CPP:-}" || -z "${LAQUANT_LLAMA_SRC:-}" ]]; then
  eval "$(scripts/llama-cpp.sh --env)"
fi
export LAQUANT_LLAMA_CPP LAQUANT_LLAMA_SRC
BIN=$LAQUANT_LLAMA_CPP/bin
if [[ -n "${LAQUANT_BIN:-}" ]]; then
  LAQUANT=$LAQUANT_BIN
else
  cargo build --release --bin laquant >&2
  LAQUANT=${CARGO_TARGET_DIR:-$ROOT/target}/release/laquant
fi

BIG=$OUT/random-llama-${LAYERS}l
if [[ -n "${LAQUANT_BENCH_MODELS:-}" ]]; then
  read -r -a MODELS <<< "$LAQUANT_BENCH_MODELS"
else
  MODELS=("$SHARED/models/polyglot-25m" "$BIG")
fi
for m in "${MODELS[@]}"; do
  if [[ $m == "$BIG" && ! -f "$BIG/model.safetensors.index.json" ]]; then
    echo "generating $BIG ..." >&2
    rm -rf "$BIG"
    python3 scripts/make-fixtures.py --big "$BIG" --layers "$LAYERS" >&2
  fi
done

# The embedded calibration corpus as one text for llama-imatrix: every language, in laquant's order.
CORPUS=$OUT/e2e-corpus.txt
for f in fixtures/corpus/??.txt; do cat "$f"; echo; done > "$CORPUS"
NLANGS=$(ls fixtures/corpus/??.txt | wc -l)

# type of every tensor of a GGUF file, one "name type" a line
types() { "$LAQUANT" inspect --json "$1" | python3 -c 'import json,sys; [print(t["name"], t["type"]) for t in json.load(sys.stdin)["tensors"]]' | sort; }
mb() { python3 -c 'import os,sys; print(f"{os.path.getsize(sys.argv[1]) / 2**20:.0f}")' "$1"; }

ROWS=()
for model in "${MODELS[@]}"; do
  name=$(basename "$model")
  pre=$(force_pre "$model")
  if [[ $model == "$BIG" ]]; then
    ctx=${LAQUANT_E2E_BIG_CTX:-128} chunks=${LAQUANT_E2E_BIG_CHUNKS:-1}
  else
    ctx=${LAQUANT_E2E_CTX:-512} chunks=${LAQUANT_E2E_CHUNKS:-}
  fi
  f16=$OUT/$name-e2e-f16.ref.gguf
  rm -f "$f16"
  pargs=(); [[ -n "$pre" ]] && pargs=(--force-pre "$pre")
  la_conv=$(load1)
  read -r cw cr <<< "$(measure "$OUT" "$name-e2e-convert-f16" python3 scripts/convert_ref.py "${pargs[@]}" -- "$model" --outfile "$f16" --outtype f16)"
  for mode in $MODES; do
    ours=$OUT/$name-e2e-$mode.laquant.gguf theirs=$OUT/$name-e2e-$mode.ref.gguf
    rm -f "$ours" "$theirs"
    la=$(load1)
    case $mode in
      q4_k_m)
        read -r ow or <<< "$(measure "$OUT" "$name-e2e-$mode-laquant" "$LAQUANT" convert "$model" -o "$ours" --outtype q4_k_m --threads "$THREADS" -q)"
        read -r qw qr <<< "$(measure "$OUT" "$name-e2e-$mode-quantize" "$BIN/llama-quantize" "$f16" "$theirs" Q4_K_M "$THREADS")"
        iw=0 ir=0 tok="-"
        if [[ -f $ours && -f $theirs ]] && diff <(types "$ours") <(types "$theirs") > /dev/null; then same="types equal"; else same="types DIFFER"; fi
        ;;
      la-mix)
        cargs=(--ctx "$ctx"); [[ -n "$chunks" ]] && cargs+=(--chunks "$chunks")
        [[ -n "${LAQUANT_E2E_SENS_TOKENS:-}" ]] && cargs+=(--sens-tokens "$LAQUANT_E2E_SENS_TOKENS")
        report=$OUT/$name-e2e-la-mix.report.json
        read -r ow or <<< "$(measure "$OUT" "$name-e2e-$mode-laquant" "$LAQUANT" convert "$model" -o "$ours" --outtype la-mix "${cargs[@]}" --threads "$THREADS" -q --report "$report")"
        # As many chunks for llama-imatrix as laquant processed (from its report), so both sides
        # run the same number of tokens; with the whole corpus too (laquant calibrates on ~80% of
        # each language, keeping the rest for eval, and drops each language's partial last chunk,
        # so "all" of the corpus file would give llama-imatrix a third more tokens).
        n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["calibration"]["chunks"])' "$report" 2>/dev/null || echo -1)
        if [[ $n == -1 && -n "$chunks" ]]; then n=$((NLANGS * chunks)); fi
        imat=$OUT/$name-e2e-imatrix.gguf
        rm -f "$imat"
        read -r iw ir <<< "$(measure "$OUT" "$name-e2e-imatrix" "$BIN/llama-imatrix" -m "$f16" -f "$CORPUS" -c "$ctx" --chunks "$n" -t "$THREADS" --no-ppl --process-output -o "$imat")"
        read -r qw qr <<< "$(measure "$OUT" "$name-e2e-$mode-quantize" "$BIN/llama-quantize" --imatrix "$imat" "$f16" "$theirs" Q4_K_M "$THREADS")"
        theirs_chunks=$(cat "$OUT/$name-e2e-imatrix.log" "$OUT/$name-e2e-imatrix.time" | grep -o 'computing over [0-9]* chunks' | grep -o '[0-9]*' || echo "?")
        ours_chunks=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["calibration"]["chunks"])' "$report" 2>/dev/null || echo "?")
        sens=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])).get("sensitivity"); print("%dg*%dt:%.0fs" % (s["groups"], s["tokens_per_language"], s["seconds"]) if s else "off")' "$report" 2>/dev/null || echo "?")
        tok="ctx=$ctx,chunks:ours=$ours_chunks,theirs=$theirs_chunks,sens=$sens"
        same="-"
        ;;
      *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    osz=$( [[ -f $ours ]] && mb "$ours" || echo nan ) tsz=$( [[ -f $theirs ]] && mb "$theirs" || echo nan )
    ROWS+=("$name $mode $ow $or $cw $cr $iw $ir $qw $qr $osz $tsz $tok $la_conv/$la ${same// /_}")
    rm -f "$theirs" "$ours"
  done
  rm -f "$f16"
done

echo
echo "end-to-end benchmark, $THREADS threads on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "laquant: $LAQUANT ; llama.cpp: $BIN (llama-cpp-python 0.3.36 sources); their time = convert f16 + [imatrix] + quantize"
python3 - "${ROWS[@]}" <<'PY'
import sys
f = lambda x: float(x) if x not in ("nan", "-") else float("nan")
hdr = ("model", "mode", "laquant s", "laquant RSS MB", "convert s", "imatrix s", "quantize s", "their s",
       "their RSS MB", "speedup", "RSS ratio", "sizes MB ours/theirs", "calibration", "load", "check")
rows = []
for r in sys.argv[1:]:
    (name, mode, ow, orss, cw, cr, iw, ir, qw, qr, osz, tsz, tok, la, same) = r.split()
    their = f(cw) + f(iw) + f(qw)
    their_rss = max(f(cr), f(ir), f(qr)) / 1024
    ours_rss = f(orss) / 1024
    rows.append((name, mode, ow, f"{ours_rss:.0f}", cw, iw if mode != "q4_k_m" else "-", qw, f"{their:.2f}",
                 f"{their_rss:.0f}", f"{their / f(ow):.1f}x", f"1/{their_rss / ours_rss:.1f}",
                 f"{osz}/{tsz}", tok, la, same.replace("_", " ")))
w = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
for x in [hdr] + rows:
    print("  ".join(str(v).ljust(w[i]) for i, v in enumerate(x)))
PY
