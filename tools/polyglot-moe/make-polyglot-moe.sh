#!/usr/bin/env bash
# Issue 22 item 7's test model: polyglot-moe, a small mixture of experts (Qwen3MoeForCausalLM) trained here on
# gettext translation strings in the 29 languages of the eval corpus, so that its experts specialise by language
# (random routers are uninformative). See README.md beside this script. Steps:
#   text     fetches pinned wheels with pip (Django, django-allauth, wagtail; SHA-256 checked), takes their .po
#            catalogues' msgstr per language (msgid for English), deduplicated, CAP bytes per language (po_text.py)
#   train    train.py: Qwen3-MoE, hidden 256, 4 layers, 4 heads (2 KV, head_dim 64), 8 experts top-2, expert FFN 256,
#            vocabulary 16384 (polyglot-25m's tokenizer, copied), context 256; seed 1234, torch CPU, 2 threads,
#            STEPS steps of BATCH rows; the last 5% of each language's tokens held out (loss per language printed);
#            saves bf16 safetensors + config.json in OUT_DIR
#   report   laquant calibrate --report on the model: each language's routing over the experts (REPORT_CHUNKS
#            chunks per language of the embedded calibration corpus); output $RUNS/routing.{json,log}
#   quality  scripts/quality.sh table restricted to Q4_K_M (PRESETS=Q4_K_M: llama-quantize Q4_K_M with llama-imatrix's
#            multilingual imatrix on QUALITY_IMATRIX_BYTES of each of the 29 calibration languages, laquant
#            --target-bpw at its size and la-mix calibrated on QUALITY_CHUNKS chunks of 512 per language),
#            llama-perplexity --kl-divergence against the F32 conversion per language of ../shared/corpus/eval
#            (QUALITY_LANGS, default all 29; QUALITY_EVAL_CHUNKS chunks of 128 tokens)
#
#   tools/polyglot-moe/make-polyglot-moe.sh [OUT_DIR]      (default $CACHE/polyglot-moe/hf)
# env: STEPS (script steps, default "text train report quality"), CAP (bytes per language, default 100000),
#      QUALITY_LANGS (default: all), QUALITY_EVAL_CHUNKS (default 8), QUALITY_IMATRIX_BYTES (default 8000; empty:
#      the whole corpus), QUALITY_CHUNKS (default 2; empty: laquant's default size), REPORT_CHUNKS (default 2),
#      LAQUANT_CACHE (default ~/.cache/laquant), LAQUANT (binary; default target/release/laquant, built when missing),
#      LAQUANT_SHARED (default ../shared). The training text is neither ../shared/corpus/calib nor /eval.
# Not run by CI (training and the quality runs take most of an hour on 2 cores): docs/benchmarks.md names it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tools/polyglot-moe
cd "$ROOT"
CACHE=${LAQUANT_CACHE:-$HOME/.cache/laquant}
BASE=$CACHE/polyglot-moe
OUTDIR=${1:-$BASE/hf}
SHARED=${LAQUANT_SHARED:-$ROOT/../shared}
STEPS=${STEPS:-text train report quality}
CAP=${CAP:-100000}
RUNS=$BASE/runs
mkdir -p "$BASE/wheels" "$RUNS"
T0=$(date +%s)
log() { echo "[polyglot-moe $(($(date +%s) - T0))s] $*" >&2; }
step() { [[ " $STEPS " == *" $1 "* ]]; }
# The wheels whose .po catalogues are the training text, pinned by version and SHA-256.
WHEELS=(
  "django==5.2.20 django-5.2.20-py3-none-any.whl 3b06f7a4843dea6bc14e33daf2044a40dc6df8c2105765ea03a29c64b61be0e0"
  "django-allauth==65.21.1 django_allauth-65.21.1-py3-none-any.whl 7bdf018c9f3f0a32c80677f84e7777272d9c833b180bd6734314c4831c802a9e"
  "wagtail==8.0.1 wagtail-8.0.1-py3-none-any.whl 1e6ad5c7891a54efce1400e168298b5a2cc343b642cee89c31bf5ec30c98b26c"
)

fetch_text() {
  local files=() spec req whl sha got
  for spec in "${WHEELS[@]}"; do
    read -r req whl sha <<< "$spec"
    if [[ ! -s $BASE/wheels/$whl ]]; then
      log "pip download $req"
      pip download -q --no-deps --only-binary=:all: --python-version 3.12 "$req" -d "$BASE/wheels"
    fi
    [[ -s $BASE/wheels/$whl ]] || { echo "make-polyglot-moe: pip did not leave $BASE/wheels/$whl" >&2; exit 1; }
    got=$(sha256sum "$BASE/wheels/$whl" | cut -d' ' -f1)
    [[ $got == "$sha" ]] || { echo "make-polyglot-moe: $whl has SHA-256 $got, expected $sha" >&2; exit 1; }
    files+=("$BASE/wheels/$whl")
  done
  local tmp
  tmp=$(mktemp -d "$BASE/text.XXXXXX")
  python3 "$HERE/po_text.py" "$tmp" "$CAP" "${files[@]}" > "$RUNS/text-sizes.log" || { rm -rf "$tmp"; exit 1; }
  rm -rf "$BASE/text"
  mv "$tmp" "$BASE/text"
  log "training text: $(cat "$BASE"/text/*.txt | wc -c) bytes in $(ls "$BASE"/text/*.txt | wc -l) languages ($RUNS/text-sizes.log)"
}

if step text; then fetch_text; fi
if step train; then
  log "training (log: $RUNS/train.log)"
  tmp=$OUTDIR.tmp
  rm -rf "$tmp"
  python3 "$HERE/train.py" "$BASE/text" "$SHARED/models/polyglot-25m" "$tmp" > "$RUNS/train.log" 2>&1 \
    || { tail -5 "$RUNS/train.log" >&2; rm -rf "$tmp"; exit 1; }
  rm -rf "$OUTDIR"
  mv "$tmp" "$OUTDIR"
  sed -n '/^kept step/,$p' "$RUNS/train.log" >&2
fi
LAQUANT=${LAQUANT:-${CARGO_TARGET_DIR:-$ROOT/target}/release/laquant}
if step report || step quality; then
  [[ -x $LAQUANT ]] || cargo build --release --bin laquant
fi
if step report; then
  log "laquant calibrate --report ($RUNS/routing.log)"
  "$LAQUANT" --threads 2 calibrate "$OUTDIR" --chunks "${REPORT_CHUNKS:-2}" --report "$RUNS/routing.json" \
    -o "$RUNS/imatrix.gguf" --force > "$RUNS/routing.log" 2>&1 || { tail -5 "$RUNS/routing.log" >&2; exit 1; }
  cat "$RUNS/routing.log"
fi
if step quality; then
  langs=${QUALITY_LANGS:-all}
  [[ $langs == all ]] && langs=
  log "quality: scripts/quality.sh table, Q4_K_M (output: $RUNS/quality)"
  PRESETS=Q4_K_M LANGS=$langs EVAL_CHUNKS=${QUALITY_EVAL_CHUNKS:-8} OUT=$RUNS/quality LAQUANT=$LAQUANT THREADS=2 \
    IMATRIX_BYTES=${QUALITY_IMATRIX_BYTES-8000} CALIB_CHUNKS=${QUALITY_CHUNKS-2} \
    scripts/quality.sh table "$OUTDIR" "$SHARED/corpus/eval"
fi
log "done"
