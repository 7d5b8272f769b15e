#!/usr/bin/env bash
# Quality against llama.cpp's own presets, measured by llama.cpp's own tools
# (llama-perplexity --kl-divergence against the unquantized F32 conversion) on held-out text.
#
#   scripts/quality.sh gate  [MODEL] [EVAL_DIR]    the CI quality stage: fails on a regression
#   scripts/quality.sh table [MODEL] [EVAL_DIR]    the docs/benchmarks.md table (reports, never fails on ratios)
#   scripts/quality.sh edge  [MODEL] [EVAL_DIR]    the same at the edge sizes (IQ2_XXS, IQ2_M, IQ3_XXS,
#                                                  IQ3_M, Q2_K; no la-mix row)
#
# gate (CI; MODEL default ../shared/models/polyglot-25m, EVAL_DIR ../shared/corpus/eval):
#   one language-balanced importance (`laquant calibrate` on the whole embedded corpus, output head
#   included) for llama-quantize's presets, and the same calibration inside laquant's calibrated
#   policies, as a user runs them (default calibration: same corpus, chunks and context). Fails when
#     - la-mix's mean KLD > 0.85x that of llama-quantize Q4_K_M with that imatrix, or la-mix is larger;
#     - --target-bpw at the bits per weight of Q3_K_M, Q4_K_M, Q5_K_M, Q6_K and the edge size IQ2_M
#       (each with that imatrix) has a mean KLD > 0.9x that preset's, or its worst language > 0.9x the
#       preset's worst, or is larger.
#   Budget (2 cores, the CI machine alone): 1 calibration + 5 default calibrated conversions of
#   polyglot-25m (calibration and measured sensitivity on the whole corpus), 4 llama-quantize runs, and
#   per language 1 + 9 llama-perplexity runs of EVAL_CHUNKS chunks of CTX tokens: about 4 minutes in
#   all (several times that on a machine busy with other builds). CALIB_CHUNKS=N calibrates on N chunks per language instead
#   (faster; at 2 the --target-bpw gate at Q5_K_M's size is not met: 0.91x).
#
# table (docs/benchmarks.md; LANGS default: all 29 files of EVAL_DIR):
#   llama-quantize with its best multilingual imatrix (llama-imatrix on the whole calibration corpus,
#   the 29 languages concatenated, token-weighted, -c 512) at Q2_K, Q3_K_M, Q4_K_M, Q5_K_M and Q6_K,
#   against laquant's default calibration (the whole embedded corpus) with --target-bpw at each
#   preset's bits per weight, and la-mix against Q4_K_M. Prints a markdown table (also OUT/table.md).
#
# Env: PRESETS (llama-quantize presets to compare, Q4_K_M among them; default above), REUSE=1 (with OUT: keep the outputs of an earlier run, e.g. one cut short), LANGS, CTX (default 128), IMATRIX_BYTES (table: llama-imatrix on the first N bytes of each language
#      instead of the whole corpus, for models where the whole corpus takes too long), EVAL_CHUNKS (default 16 for gate, 32 for table), CALIB_CHUNKS (default:
#      the whole corpus), OUT (default: a temporary folder, removed), THREADS (default 2), LAQUANT (binary),
#      LAQUANT_LLAMA_CPP / LAQUANT_LLAMA_SRC (scripts/llama-cpp.sh --env).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE=${1:?usage: scripts/quality.sh gate|table [MODEL] [EVAL_DIR]}
MODEL=${2:-../shared/models/polyglot-25m}
EVAL=${3:-../shared/corpus/eval}
CALIB_DIR=${CALIB_DIR:-$(dirname "$EVAL")/calib}
CTX=${CTX:-128}
THREADS=${THREADS:-2}
case "$MODE" in
  gate)
    LANGS=${LANGS:-en ru zh ar hi ja}
    EVAL_CHUNKS=${EVAL_CHUNKS:-16}
    ;;
  table|edge)
    LANGS=${LANGS:-$(cd "$EVAL" && ls ./*.txt | sed 's|./||; s|\.txt$||' | tr '\n' ' ')}
    EVAL_CHUNKS=${EVAL_CHUNKS:-32}
    ;;
  *) echo "usage: scripts/quality.sh gate|table|edge [MODEL] [EVAL_DIR]" >&2; exit 2 ;;
esac
LAQUANT=${LAQUANT:-${CARGO_TARGET_DIR:-target}/release/laquant}
if [[ -z "${LAQUANT_LLAMA_CPP:-}" || -z "${LAQUANT_LLAMA_SRC:-}" ]]; then
  eval "$(scripts/llama-cpp.sh --env 2>/dev/null)"
fi
BIN=$LAQUANT_LLAMA_CPP/bin
for t in llama-perplexity llama-quantize llama-imatrix; do
  [[ -x "$BIN/$t" ]] || { echo "quality: $BIN/$t not found (run scripts/llama-cpp.sh)" >&2; exit 1; }
done
[[ -x "$LAQUANT" ]] || cargo build --release --bin laquant
[[ -d "$MODEL" ]] || { echo "quality: model folder $MODEL not found" >&2; exit 1; }
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
fi
T0=$(date +%s)
log() { echo "[quality $(( $(date +%s) - T0 ))s] $*" >&2; }
lq() { log "laquant $*"; "$LAQUANT" -q --threads "$THREADS" "$@"; }
# With REUSE=1 (and OUT), a step whose output exists is not run again.
done_already() { [[ "${REUSE:-}" == 1 && -s "$1" ]] && log "reusing $1"; }
bpw() {
  PYTHONPATH="$LAQUANT_LLAMA_SRC/gguf-py" python3 - "$1" <<'PY'
import sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
print(f"{sum(int(t.n_bytes) for t in r.tensors) * 8 / sum(int(t.n_elements) for t in r.tensors):.6f}")
PY
}

if [[ -n "${PRESETS:-}" ]]; then
  read -ra PRESETS <<< "$PRESETS"
else
  case $MODE in
    gate) PRESETS=(Q3_K_M Q4_K_M Q5_K_M Q6_K IQ2_M) ;;
    table) PRESETS=(Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K) ;;
    edge) PRESETS=(IQ2_XXS IQ2_M IQ3_XXS IQ3_M Q2_K) ;;
  esac
fi
# la-mix (every mode but edge) is compared with Q4_K_M.
[[ $MODE == edge || " ${PRESETS[*]} " == *" Q4_K_M "* ]] || { echo "quality: PRESETS must include Q4_K_M (la-mix is compared with it)" >&2; exit 2; }

done_already "$OUT/ref-f32.gguf" || lq convert "$MODEL" --outtype f32 --calib none -o "$OUT/ref-f32.gguf" --force
if done_already "$OUT/imatrix.gguf"; then
  CAL=()
  [[ -n "${CALIB_CHUNKS:-}" ]] && CAL=(--chunks "$CALIB_CHUNKS")
elif [[ $MODE == gate ]]; then
  # The importance both sides use: laquant's balanced statistic (whole corpus unless CALIB_CHUNKS).
  CAL=()
  [[ -n "${CALIB_CHUNKS:-}" ]] && CAL=(--chunks "$CALIB_CHUNKS")
  lq calibrate "$MODEL" "${CAL[@]}" --process-output -o "$OUT/imatrix.gguf" --force
else
  # llama.cpp's best multilingual imatrix: the whole corpus, every language, as llama-imatrix weighs it.
  CAL=()
  [[ -n "${CALIB_CHUNKS:-}" ]] && CAL=(--chunks "$CALIB_CHUNKS")
  if [[ -n "${IMATRIX_BYTES:-}" ]]; then
    # A smaller sample for large models: the first IMATRIX_BYTES of each language (whole lines).
    for f in "$CALIB_DIR"/*.txt; do
      python3 -c 'import sys; t=open(sys.argv[1],encoding="utf-8").read(); n=int(sys.argv[2]); c=t.rfind("\n",0,n); sys.stdout.write(t[:c+1 if c>0 else n])' "$f" "$IMATRIX_BYTES"
    done > "$OUT/calib-all.txt"
  else
    cat "$CALIB_DIR"/*.txt > "$OUT/calib-all.txt"
  fi
  log "llama-imatrix on $(wc -c < "$OUT/calib-all.txt") bytes of $(ls "$CALIB_DIR"/*.txt | wc -l) languages"
  "$BIN/llama-imatrix" -m "$OUT/ref-f32.gguf" -f "$OUT/calib-all.txt" -c 512 -t "$THREADS" \
    -o "$OUT/imatrix.gguf" > "$OUT/imatrix.log" 2>&1 || { tail -5 "$OUT/imatrix.log" >&2; exit 1; }
fi
FILES=()
for p in "${PRESETS[@]}"; do
  if ! done_already "$OUT/$p.gguf"; then
    log "llama-quantize --imatrix $p"
    "$BIN/llama-quantize" --imatrix "$OUT/imatrix.gguf" "$OUT/ref-f32.gguf" "$OUT/$p.gguf" "$p" "$THREADS" \
      > "$OUT/$p.quantize.log" 2>&1 || { tail -5 "$OUT/$p.quantize.log" >&2; exit 1; }
  fi
  x=$(bpw "$OUT/$p.gguf")
  done_already "$OUT/tb-$p.gguf" || lq convert "$MODEL" --target-bpw "$x" "${CAL[@]}" -o "$OUT/tb-$p.gguf" --force
  FILES+=("$p" "tb-$p")
done
if [[ $MODE != edge ]]; then
  done_already "$OUT/la-mix.gguf" || lq convert "$MODEL" --outtype la-mix "${CAL[@]}" -o "$OUT/la-mix.gguf" --force
  FILES+=(la-mix)
fi

for lang in $LANGS; do
  log "llama-perplexity $lang: base + ${#FILES[@]} files"
  common=(-c "$CTX" --chunks "$EVAL_CHUNKS" -t "$THREADS")
  done_already "$OUT/$lang.kld" || "$BIN/llama-perplexity" -m "$OUT/ref-f32.gguf" -f "$EVAL/$lang.txt" \
    "${common[@]}" --kl-divergence-base "$OUT/$lang.kld" > "$OUT/$lang-base.log" 2>&1 \
    || { tail -5 "$OUT/$lang-base.log" >&2; exit 1; }
  for f in "${FILES[@]}"; do
    # A score of an earlier run (REUSE=1) is kept only if that run finished it.
    [[ "${REUSE:-}" == 1 ]] && grep -q "Mean *KLD:" "$OUT/$lang-$f.log" 2>/dev/null && continue
    "$BIN/llama-perplexity" -m "$OUT/$f.gguf" --kl-divergence-base "$OUT/$lang.kld" --kl-divergence \
      "${common[@]}" > "$OUT/$lang-$f.log" 2>&1 || { tail -5 "$OUT/$lang-$f.log" >&2; exit 1; }
  done
done
for f in "${FILES[@]}"; do echo "$f $(bpw "$OUT/$f.gguf")"; done > "$OUT/bpw.txt"

python3 - "$MODE" "$OUT" "$LANGS" "${PRESETS[*]}" "$MODEL" "$CTX" "$EVAL_CHUNKS" \
  "$(ls "$CALIB_DIR"/*.txt | wc -l)" "${IMATRIX_BYTES:-}" "${CALIB_CHUNKS:-}" <<'PY'
import re, sys
mode, out, langs, presets, model = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split(), sys.argv[5]
ctx, chunks = sys.argv[6], sys.argv[7]
bpw = dict(l.split() for l in open(f"{out}/bpw.txt"))
bpw = {k: float(v) for k, v in bpw.items()}
def kld(lang, f):
    t = open(f"{out}/{lang}-{f}.log").read()
    m = re.search(r"Mean\s+KLD:\s*([0-9.eE+-]+)", t)
    if not m:
        sys.exit(f"quality: {out}/{lang}-{f}.log lacks Mean KLD")
    return float(m.group(1))
k = {f: {l: kld(l, f) for l in langs} for f in bpw}
mean = {f: sum(v.values()) / len(v) for f, v in k.items()}
worst = {f: max(v.values()) for f, v in k.items()}
worst_lang = {f: max(v, key=v.get) for f, v in k.items()}
rows, fails = [], []
def row(ours, theirs, label, gate_mean, gate_worst):
    rm, rw = mean[ours] / mean[theirs], worst[ours] / worst[theirs]
    rows.append(f"| {label} | {bpw[theirs]:.4f} | {mean[theirs]:.5f} | {worst[theirs]:.5f} ({worst_lang[theirs]}) "
                f"| {bpw[ours]:.4f} | {mean[ours]:.5f} | {worst[ours]:.5f} ({worst_lang[ours]}) | {rm:.3f} | {rw:.3f} |")
    if mode != "gate":
        return
    if bpw[ours] > bpw[theirs] + 1e-9:
        fails.append(f"{ours}: {bpw[ours]:.4f} bpw, larger than {theirs} ({bpw[theirs]:.4f})")
    if gate_mean is not None and rm > gate_mean:
        fails.append(f"{ours}: mean KLD {rm:.3f}x {theirs}'s (gate {gate_mean}x)")
    if gate_worst is not None and rw > gate_worst:
        fails.append(f"{ours}: worst-language KLD {rw:.3f}x {theirs}'s (gate {gate_worst}x)")
for p in presets:
    row(f"tb-{p}", p, f"--target-bpw at {p}", 0.9, 0.9)
if "la-mix" in bpw:
    row("la-mix", "Q4_K_M", "la-mix vs Q4_K_M", 0.85, None)
name = model.rstrip("/").rsplit("/", 1)[-1]
# What each side calibrated on, as this run did it (IMATRIX_BYTES and CALIB_CHUNKS cut the text).
calib_langs, imatrix_bytes, calib_chunks = sys.argv[8], sys.argv[9], sys.argv[10]
lq_text = (f"{calib_chunks} chunk{'' if calib_chunks == '1' else 's'} per language" if calib_chunks
           else "its default size per language")
lq_cal = f"laquant's calibration (balanced, {lq_text})"
if mode == "gate":
    imat = f"{lq_cal}, the same importance on both sides"
else:
    im_text = (f"the first {imatrix_bytes} bytes of each of the {calib_langs} languages" if imatrix_bytes
               else f"the whole {calib_langs}-language corpus")
    imat = f"llama-imatrix on {im_text} (token-weighted) for llama-quantize; {lq_cal}"
head = [f"{name}: llama-perplexity --kl-divergence, F32 base, ctx {ctx}, {chunks} chunks per language, "
        f"{len(langs)} languages ({' '.join(langs)}); imatrix: {imat}", "",
        "| laquant | llama-quantize bpw | mean KLD | worst KLD | laquant bpw | mean KLD | worst KLD | mean ratio | worst ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
text = "\n".join(head + rows)
print(text)
open(f"{out}/table.md", "w").write(text + "\n")
per = ["", "| file | bpw | " + " | ".join(langs) + " |", "|---|---:|" + "---:|" * len(langs)]
for f in bpw:
    per.append(f"| {f} | {bpw[f]:.4f} | " + " | ".join(f"{k[f][l]:.5f}" for l in langs) + " |")
open(f"{out}/per-language.md", "w").write("\n".join(per) + "\n")
print("\n".join(per))
if fails:
    print("\nquality: FAILED\n  " + "\n  ".join(fails), file=sys.stderr)
    sys.exit(1)
if mode == "gate":
    print("\nquality: every gate holds")
PY
log "done"
