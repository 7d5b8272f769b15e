#!/usr/bin/env bash
# Benchmarks of laquant against llama.cpp's own tools (llama-cpp-python==0.3.36 sources, built by
# scripts/llama-cpp.sh), on this machine with the same threads. One subcommand per benchmark:
#
#   scripts/bench.sh e2e                        end to end: convert [+ calibrate] + quantize
#   scripts/bench.sh convert                    conversion at f16 and q8_0 vs convert_hf_to_gguf.py
#   scripts/bench.sh calib [MODEL] [THREADS] [CTX]   calibration vs llama-imatrix, tokens/s
#   scripts/bench.sh eval [MODEL] [EVAL_DIR]    laquant eval vs llama-perplexity --kl-divergence
#   scripts/bench.sh quant [TYPE,TYPE,...]      packing kernels vs ggml_quantize_chunk, GB/s
#   scripts/bench.sh big                        8B-class checkpoint: f16, q8_0, q4_k_m vs llama.cpp's tools
#
# Each subcommand's settings (arguments and environment) are described above its function below.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# ---- shared helpers ------------------------------------------------------------------------------

# measure DIR LABEL CMD...  -> prints "wall_seconds peak_rss_kb" ("nan nan" when CMD fails);
#                              stdout/stderr in DIR/LABEL.log, /usr/bin/time -v in DIR/LABEL.time
measure() {
  [[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
  local dir=$1 label=$2; shift 2
  local log=$dir/$label.time
  if ! /usr/bin/time -v "$@" > "$dir/$label.log" 2> "$log"; then
    echo "error: $label failed, see $dir/$label.log and $log" >&2
    tail -5 "$log" >&2
    echo "nan nan"; return
  fi
  python3 - "$log" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
w = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1).split(":")
secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(w)))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
print(f"{secs:.2f} {rss}")
PY
}

# The pre-tokenizer name convert_ref.py must force for a byte-level BPE tokenizer whose hash
# llama.cpp does not know (polyglot-25m); empty for SentencePiece.
force_pre() {
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]+"/tokenizer.json")); print("llama-bpe" if j["model"]["type"]=="BPE" else "")' "$1" 2>/dev/null || true
}

# The 1-minute load average, to print beside every number.
load1() { cut -d' ' -f1 /proc/loadavg; }

# ---- e2e -------------------------------------------------------------------------------------------
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
#   scripts/bench.sh e2e        # table on stdout, logs in $LAQUANT_BENCH_OUT (default bench-out/)
# env: LAQUANT_BIN, LAQUANT_THREADS (default nproc), LAQUANT_BENCH_MODELS, LAQUANT_BENCH_LAYERS (13),
#      LAQUANT_E2E_MODES ("q4_k_m la-mix"),
#      LAQUANT_E2E_CTX / LAQUANT_E2E_CHUNKS: calibration context and chunks per language on polyglot-25m
#        (512 / all), LAQUANT_E2E_BIG_CTX / LAQUANT_E2E_BIG_CHUNKS on the random model (128 / 1: a forward pass
#        over the whole corpus of a 0.6B model takes hours on 2 cores; both sides get the same token count),
#      LAQUANT_E2E_SENS_TOKENS: passed to la-mix as --sens-tokens (0: the raw error proxy, no measured
#        sensitivity; unset: laquant's default sizing, at most the calibration's compute),
#      LAQUANT_E2E_MIN_SPEEDUP / LAQUANT_E2E_MAX_RSS_RATIO: bounds per mode, e.g. "q4_k_m=10,la-mix=2" and
#        "q4_k_m=0.25,la-mix=0.25" (ours / theirs): exit code 1 when a row misses one (or failed to run, or
#        q4_k_m's tensor types differ from llama-quantize's). CI runs this on polyglot-25m (.ci/run, stage bench).
cmd_e2e() {
OUT=${LAQUANT_BENCH_OUT:-$ROOT/bench-out}
LAYERS=${LAQUANT_BENCH_LAYERS:-13}
THREADS=${LAQUANT_THREADS:-$(nproc)}
MODES=${LAQUANT_E2E_MODES:-q4_k_m la-mix}
SHARED=${LAQUANT_SHARED:-$ROOT/../shared}
mkdir -p "$OUT"

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
        cargs=(--ctx "$ctx" --no-cache); [[ -n "$chunks" ]] && cargs+=(--chunks "$chunks")
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

# The bounds, when given: every row of a bounded mode must meet them (NaN, a failed run, misses).
import os
def bounds(var):
    spec = os.environ.get(var, "")
    return {k: float(v) for k, v in (p.split("=") for p in spec.split(",") if p)}
min_speedup, max_rss = bounds("LAQUANT_E2E_MIN_SPEEDUP"), bounds("LAQUANT_E2E_MAX_RSS_RATIO")
bad = []
for r in sys.argv[1:]:
    (name, mode, ow, orss, cw, cr, iw, ir, qw, qr, osz, tsz, tok, la, same) = r.split()
    speedup = (f(cw) + f(iw) + f(qw)) / f(ow)
    rss = f(orss) / max(f(cr), f(ir), f(qr))
    if mode in min_speedup and not speedup >= min_speedup[mode]:
        bad.append(f"{name} {mode}: {speedup:.2f}x faster, bound {min_speedup[mode]}x")
    if mode in max_rss and not rss <= max_rss[mode]:
        bad.append(f"{name} {mode}: peak RSS {rss:.3f} of theirs, bound {max_rss[mode]}")
    if (mode in min_speedup or mode in max_rss) and same == "types_DIFFER":
        bad.append(f"{name} {mode}: tensor types differ from llama-quantize's")
if min_speedup or max_rss:
    if bad:
        sys.exit("bench e2e: FAILED\n  " + "\n  ".join(bad))
    print(f"bench e2e: within the bounds (speedup >= {min_speedup}, RSS ratio <= {max_rss})")
PY
}

# ---- convert ---------------------------------------------------------------------------------------
# Side-by-side conversion benchmark on this machine: `laquant convert` vs llama.cpp's convert_hf_to_gguf.py
# (llama-cpp-python==0.3.36 sdist) at f16 and q8_0, on ../shared/models/polyglot-25m and on a >= 1 GB random
# Llama checkpoint generated here (TinyLlama shape: hidden 2048, ffn 5632, every width a multiple of 256).
# Wall time and peak RSS come from /usr/bin/time -v; each pair of outputs is also compared (gguf_compare.py).
#
#   scripts/bench.sh convert            # table on stdout, raw logs in $LAQUANT_BENCH_OUT (default bench-out/)
# env: LAQUANT_BENCH_LAYERS (13 = 1.15 GB of bf16 weights), LAQUANT_BENCH_TYPES ("f16 q8_0"),
#      LAQUANT_BENCH_MODELS (default: polyglot-25m and the random checkpoint), LAQUANT_BIN, LAQUANT_THREADS.
# Targets of issue 2: laquant >= 10x faster than the Python converter; peak RSS under the largest tensor's size
# plus 64 MB.
cmd_convert() {
OUT=${LAQUANT_BENCH_OUT:-$ROOT/bench-out}
LAYERS=${LAQUANT_BENCH_LAYERS:-13}
TYPES=${LAQUANT_BENCH_TYPES:-f16 q8_0}
SHARED=${LAQUANT_SHARED:-$ROOT/../shared}
mkdir -p "$OUT"

# .ci/run has already run llama-cpp.sh and exported LAQUANT_HARNESS / LAQUANT_LLAMA_SRC; otherwise do it here.
if [[ -z "${LAQUANT_HARNESS:-}" || -z "${LAQUANT_LLAMA_SRC:-}" ]]; then
  eval "$(scripts/llama-cpp.sh --env)"
fi
export LAQUANT_HARNESS LAQUANT_LLAMA_SRC
if [[ -n "${LAQUANT_BIN:-}" ]]; then
  LAQUANT=$LAQUANT_BIN
else
  cargo build --release --bin laquant >&2
  LAQUANT=${CARGO_TARGET_DIR:-$ROOT/target}/release/laquant
fi

BIG=$OUT/random-llama-${LAYERS}l
if [[ ! -f "$BIG/model.safetensors.index.json" ]]; then
  echo "generating $BIG ..." >&2
  rm -rf "$BIG"
  python3 scripts/make-fixtures.py --big "$BIG" --layers "$LAYERS" >&2
fi
if [[ -n "${LAQUANT_BENCH_MODELS:-}" ]]; then
  read -r -a MODELS <<< "$LAQUANT_BENCH_MODELS"
else
  MODELS=("$SHARED/models/polyglot-25m" "$BIG")
fi

# largest tensor of a checkpoint (bytes as stored, and as f32), total weight bytes
tensor_stats() {
  python3 - "$1" <<'PY'
import json, struct, sys
from pathlib import Path
d = Path(sys.argv[1]); big = big32 = total = 0
for f in sorted(d.glob("*.safetensors")):
    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]; h = json.loads(fh.read(n))
    for k, v in h.items():
        if k == "__metadata__": continue
        b = v["data_offsets"][1] - v["data_offsets"][0]; total += b
        el = 1
        for s in v["shape"]: el *= s
        big = max(big, b); big32 = max(big32, el * 4)
print(big, big32, total)
PY
}

ROWS=()
for model in "${MODELS[@]}"; do
  name=$(basename "$model")
  read -r big big32 total <<< "$(tensor_stats "$model")"
  pre=$(force_pre "$model")
  for t in $TYPES; do
    ours=$OUT/$name-$t.laquant.gguf ref=$OUT/$name-$t.ref.gguf
    rm -f "$ours" "$ref"
    args=(); [[ -n "${LAQUANT_THREADS:-}" ]] && args=(--threads "$LAQUANT_THREADS")
    la=$(load1)
    read -r lw lr <<< "$(measure "$OUT" "$name-$t-laquant" "$LAQUANT" convert "$model" -o "$ours" --outtype "$t" --force "${args[@]}")"
    pargs=(); [[ -n "$pre" ]] && pargs=(--force-pre "$pre")
    read -r pw pr <<< "$(measure "$OUT" "$name-$t-python" python3 scripts/convert_ref.py "${pargs[@]}" -- "$model" --outfile "$ref" --outtype "$t")"
    same=$(python3 scripts/gguf_compare.py "$ours" "$ref" 2>&1 | head -1 | cut -d: -f1 || true)
    ROWS+=("$name $t $total $big $big32 $lw $lr $pw $pr $same $la")
    rm -f "$ref"
  done
done

echo
echo "conversion benchmark on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "laquant: $LAQUANT ; python: convert_hf_to_gguf.py from llama-cpp-python 0.3.36 (torch $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null))"
python3 - "${ROWS[@]}" <<'PY'
import sys
mb = lambda b: f"{float(b) / 2**20:.0f}"
hdr = ("model", "type", "weights MB", "largest MB (as f32)", "laquant s", "laquant RSS MB", "python s", "python RSS MB",
       "speedup", "RSS <= largest+64MB", "outputs", "load")
rows = []
for r in sys.argv[1:]:
    name, t, total, big, big32, lw, lr, pw, pr, same, la = r.split()
    speed = f"{float(pw) / float(lw):.1f}x" if lw != "nan" and pw != "nan" and float(lw) > 0 else "?"
    lr_mb = float(lr) / 1024 if lr != "nan" else float("nan")
    ok = "yes" if lr_mb <= int(big) / 2**20 + 64 else ("as f32" if lr_mb <= int(big32) / 2**20 + 64 else "no")
    rows.append((name, t, mb(total), f"{mb(big)} ({mb(big32)})", lw, f"{lr_mb:.0f}", pw,
                 f"{float(pr) / 1024:.0f}" if pr != "nan" else "nan", speed, ok, same, la))
w = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
for x in [hdr] + rows:
    print("  ".join(str(v).ljust(w[i]) for i, v in enumerate(x)))
PY
}

# ---- calib -----------------------------------------------------------------------------------------
# Calibration speed, laquant vs llama-imatrix: the same text (some of the embedded
# corpus's languages, $LANGS, default "en zh ar hi ru", concatenated into one file and
# given to both as one document), the same context and threads, on polyglot-25m.
# Prints tokens/s of each (wall clock, model load and tokenization included) and the ratio.
#
#   [LANGS="en de"] scripts/bench.sh calib [MODEL_DIR] [THREADS] [CTX]
cmd_calib() {
MODEL=${1:-$ROOT/../shared/models/polyglot-25m}
THREADS=${2:-$(nproc)}
CTX=${3:-512}
: "${LAQUANT_LLAMA_CPP:=$HOME/.cache/laquant/build}"
BIN=$LAQUANT_LLAMA_CPP/bin
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo build --release --quiet
LQ=${CARGO_TARGET_DIR:-./target}/release/laquant
GGUF=$WORK/model-f32.gguf
if ! $LQ convert "$MODEL" --outtype f32 -o "$GGUF" >/dev/null 2>&1; then
  python3 scripts/convert_ref.py --force-pre llama-bpe -- "$MODEL" --outtype f32 --outfile "$GGUF" >/dev/null 2>&1
fi
mkdir -p "$WORK/corpus"
for l in ${LANGS:-en zh ar hi ru}; do cat "fixtures/corpus/$l.txt"; done > "$WORK/corpus/en.txt"
# Wall clock and CPU seconds (user+sys) of a command, from bash's TIMEFORMAT.
measure_cpu() { # OUTFILE CMD...
  local out=$1; shift
  { TIMEFORMAT='%R %U %S'; time "$@" >"$out.log" 2>&1; } 2>"$out.time"
}
measure_cpu "$WORK/theirs" "$BIN/llama-imatrix" -m "$GGUF" -f "$WORK/corpus/en.txt" -c "$CTX" -t "$THREADS" --no-ppl -o "$WORK/theirs.gguf"
measure_cpu "$WORK/ours" $LQ calibrate -q --no-cache "$MODEL" --calib "$WORK/corpus" --ctx "$CTX" --threads "$THREADS" -o "$WORK/ours.gguf"
chunks=$(grep -o 'computing over [0-9]* chunks' "$WORK/theirs.log" | grep -o '[0-9]*')
tokens=$((chunks * CTX))
python3 - "$tokens" "$THREADS" "$CTX" "$(cat "$WORK/theirs.time")" "$(cat "$WORK/ours.time")" <<'PY'
import sys
tok, th, ctx = int(sys.argv[1]), sys.argv[2], sys.argv[3]
(tw, tu, ts), (ow, ou, os_) = [list(map(float, a.split())) for a in sys.argv[4:6]]
print(f"tokens {tok}, ctx {ctx}, threads {th} (model load and tokenization included)")
print(f"{'':15} {'wall s':>8} {'tok/s':>9} {'cpu s':>8} {'tok/cpu-s':>10}")
for name, w, c in (("llama-imatrix", tw, tu + ts), ("laquant", ow, ou + os_)):
    print(f"{name:15} {w:8.2f} {tok / w:9.1f} {c:8.2f} {tok / c:10.1f}")
print(f"ratio laquant/llama-imatrix: {tw / ow:.2f}x wall clock, {(tu + ts) / (ou + os_):.2f}x CPU time")
PY
}

# ---- eval ------------------------------------------------------------------------------------------
# Speed of `laquant eval` against llama-perplexity doing the same work: one Q4_K_M file of
# MODEL scored against the reference on every language of EVAL_DIR, ctx 512, CHUNKS chunks
# per language, THREADS threads.
#   laquant:   laquant eval MODEL q4_k_m.gguf --eval EVAL_DIR --ctx 512 --chunks CHUNKS
#              (the reference pass on the HF weights and the file's pass, one process)
#   llama.cpp: per language, llama-perplexity --kl-divergence-base on the F32 conversion, then
#              --kl-divergence on the Q4_K_M file (the same two passes; -ctk/-ctv f32 as laquant)
# The two run interleaved ROUNDS times (this machine is shared: compare within a round);
# prints wall and CPU seconds of each, with the load average before each run.
#
#   [ROUNDS=1] [CHUNKS=4] [THREADS=2] scripts/bench.sh eval [MODEL] [EVAL_DIR]
cmd_eval() {
MODEL=${1:-../shared/models/polyglot-25m}
EVAL=${2:-../shared/corpus/eval}
ROUNDS=${ROUNDS:-1}
CHUNKS=${CHUNKS:-4}
THREADS=${THREADS:-2}
LAQUANT=${LAQUANT:-${CARGO_TARGET_DIR:-target}/release/laquant}
: "${LAQUANT_LLAMA_CPP:=$HOME/.cache/laquant/build}"
PPLX=$LAQUANT_LLAMA_CPP/bin/llama-perplexity
[[ -x "$LAQUANT" ]] || cargo build --release --bin laquant
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$LAQUANT" -q convert "$MODEL" --outtype f32 --calib none -o "$W/f32.gguf"
"$LAQUANT" -q convert "$MODEL" --outtype q4_k_m --calib none -o "$W/q4.gguf"
langs=$(cd "$EVAL" && ls ./*.txt | sed 's|^\./||; s|\.txt$||')
TIMEFORMAT='%R %U %S'
ours() {
  "$LAQUANT" eval "$MODEL" "$W/q4.gguf" --eval "$EVAL" --ctx 512 --chunks "$CHUNKS" \
    --threads "$THREADS" -q > "$W/ours.txt"
}
theirs() {
  local l
  for l in $langs; do
    "$PPLX" -m "$W/f32.gguf" -f "$EVAL/$l.txt" -c 512 --chunks "$CHUNKS" -t "$THREADS" \
      -ctk f32 -ctv f32 --kl-divergence-base "$W/$l.kld" > "$W/$l-base.log" 2>&1
    "$PPLX" -m "$W/q4.gguf" --kl-divergence-base "$W/$l.kld" --kl-divergence -c 512 \
      -t "$THREADS" -ctk f32 -ctv f32 > "$W/$l-kld.log" 2>&1
    rm -f "$W/$l.kld"
  done
}
printf '%-6s %-10s %9s %9s  %s\n' round tool wall_s cpu_s "load average (1/5/15 min) before"
for r in $(seq 1 "$ROUNDS"); do
  for tool in ours theirs; do
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    t=$( { time $tool; } 2>&1 )
    read -r wall user sys <<<"$t"
    name=$([[ $tool == ours ]] && echo laquant || echo llama.cpp)
    printf '%-6s %-10s %9.1f %9.1f  %s\n' "$r" "$name" "$wall" "$(awk "BEGIN{print $user + $sys}")" "$load"
  done
done
echo "($(echo "$langs" | wc -w) languages, ctx 512, $CHUNKS chunks each, $THREADS threads)"
}

# ---- quant -----------------------------------------------------------------------------------------
# Packing throughput of laquant's kernels (benches/quant.rs) next to ggml's own `ggml_quantize_chunk` (the oracle
# of interop/oracle/oracle.c linked against the cached llama.cpp build's libggml-base, built by
# scripts/gen-golden.sh --build), on the same rows: ROWS rows of 4096 normals (SplitMix(42) on both sides, the
# same importance weights), at every thread count of THREADS, best of ROUNDS interleaved rounds (ours and ggml's
# alternate type by type and round by round, so load from other jobs on a shared machine hits both sides
# alike). Throughput is MB of f32 input per second.
#
#   scripts/bench.sh quant [TYPE,TYPE,...]      default: every type laquant writes
#
# Env: ROWS (default 16), THREADS (default "1 nproc"), ROUNDS (default 3),
#      IMATRIX (yes | no | both; default both: i-quants without weights are refused by ggml and skipped),
#      LAQUANT_QUANT_JSON=FILE  also write the table as JSON (one object per type, imatrix, threads),
#      LAQUANT_QUANT_MIN_RATIO=R  exit code 1 when any row's ours/ggml ratio (at any thread count)
#                                 is below R (CI: 1.0 on the i-quants, Q4_K and Q6_K; the bench stage of .ci/run).
# Issue 23's target: ours >= 2x ggml's on one thread, >= 1x at every thread count.
cmd_quant() (
  scripts/gen-golden.sh --build
  ORACLE=${LAQUANT_ORACLE_DIR:-target/oracle}/oracle
  TYPES=${1:-F16,BF16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,IQ4_NL,IQ4_XS,TQ1_0,TQ2_0,MXFP4,Q1_0,Q2_0,IQ1_S,IQ1_M,IQ2_XXS,IQ2_XS,IQ2_S,IQ3_XXS,IQ3_S}
  ROWS=${ROWS:-16}
  THREADS=${THREADS:-"1 $(nproc)"}
  ROUNDS=${ROUNDS:-3}
  WIDTH=4096
  case "${IMATRIX:-both}" in
    yes) IMS=(imatrix) ;;
    no) IMS=("") ;;
    both) IMS=("" imatrix) ;;
    *) echo "bench quant: IMATRIX=${IMATRIX} (expected yes, no or both)" >&2; exit 2 ;;
  esac

  OURS=$(cargo bench --bench quant --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"target":{[^}]*"name":"quant".*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  [[ -x "$OURS" ]] || { echo "bench quant: could not build benches/quant.rs" >&2; exit 1; }

  # Runs long enough to time well: the fast formats take well under a millisecond per run.
  iters() {
    case "$1:$2" in
      F16:*|BF16:*|Q8_0:*|Q4_0:|Q4_1:|Q5_0:|Q5_1:) echo 200 ;;
      IQ1*|IQ2*|IQ3*) echo 3 ;;
      *) echo 8 ;;
    esac
  }
  # Without weights, ggml refuses the i-quants that need them (ggml_quantize_requires_imatrix), and
  # F16/BF16 have none.
  skip() {
    case "$1:$2" in
      F16:imatrix|BF16:imatrix|f16:imatrix|bf16:imatrix) return 0 ;;
      IQ2_XXS:|IQ2_XS:|IQ1_S:) return 0 ;;
    esac
    return 1
  }
  best() { awk -v a="$1" -v b="$2" 'BEGIN{ print (a == "" || b + 0 > a + 0) ? b : a }'; }

  declare -A R
  IFS=, read -ra TS <<<"$TYPES"
  read -ra THS <<<"$THREADS"
  echo "load before: $(uptime)"
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${TS[@]}"; do
      for im in "${IMS[@]}"; do
        skip "$t" "$im" && continue
        n=$(iters "$t" "$im")
        for th in "${THS[@]}"; do
          o=$("$OURS" raw "$t" $WIDTH "$ROWS" "$n" "$th" $im | awk '{print $3}')
          g=$("$ORACLE" bench "$t" $WIDTH "$ROWS" "$n" "$th" $im | awk '{print $3}')
          R[o,$t,$im,$th]=$(best "${R[o,$t,$im,$th]:-}" "$o")
          R[g,$t,$im,$th]=$(best "${R[g,$t,$im,$th]:-}" "$g")
        done
      done
    done
  done
  echo "load after:  $(uptime)"
  echo "best of $ROUNDS interleaved rounds, $ROWS rows of $WIDTH, MB/s of f32 input; ratio = ours / ggml"

  # One line per (type, imatrix, threads) for the table, the JSON and the bound.
  ROWS_TXT=$(for t in "${TS[@]}"; do
    for im in "${IMS[@]}"; do
      skip "$t" "$im" && continue
      for th in "${THS[@]}"; do
        echo "$t ${im:-no} $th ${R[o,$t,$im,$th]} ${R[g,$t,$im,$th]}"
      done
    done
  done)
  python3 - "$ROWS_TXT" "${LAQUANT_QUANT_JSON:-}" "${LAQUANT_QUANT_MIN_RATIO:-}" <<'PY'
import json, sys
rows, out, bound = sys.argv[1], sys.argv[2], sys.argv[3]
table = []
for line in rows.splitlines():
    t, im, th, o, g = line.split()
    o, g = float(o) * 1e3, float(g) * 1e3  # GB/s -> MB/s
    table.append({"type": t, "imatrix": im == "imatrix", "threads": int(th),
                  "ours_mb_s": round(o, 2), "ggml_mb_s": round(g, 2),
                  "ratio": round(o / g, 3) if g > 0 else None})
threads = sorted({r["threads"] for r in table})
hdr = f"{'type':<8} {'imatrix':>7} |" + "".join(
    f" {'ours ' + str(n) + 't':>10} {'ggml ' + str(n) + 't':>10} {'ratio':>6} |" for n in threads)
print(hdr)
keys = []
for r in table:
    k = (r["type"], r["imatrix"])
    if k not in keys:
        keys.append(k)
for k in keys:
    cells = {r["threads"]: r for r in table if (r["type"], r["imatrix"]) == k}
    line = f"{k[0]:<8} {'yes' if k[1] else 'no':>7} |"
    for n in threads:
        r = cells[n]
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        line += f" {r['ours_mb_s']:>10.2f} {r['ggml_mb_s']:>10.2f} {ratio:>6} |"
    print(line)
if out:
    with open(out, "w") as f:
        json.dump(table, f, indent=1)
if bound:
    low = [r for r in table if r["ratio"] is None or r["ratio"] < float(bound)]
    for r in low:
        print(f"bench quant: {r['type']} (imatrix {r['imatrix']}) at {r['threads']} threads: "
              f"ours/ggml {r['ratio']} < {bound}", file=sys.stderr)
    if low:
        sys.exit(1)
    print(f"bench quant: every row at least {bound}x ggml's throughput")
PY
)

# ---- big -------------------------------------------------------------------------------------------
# Real model sizes (issue 24): a generated Llama-3-8B-shaped checkpoint (make-fixtures.py --big --shape llama3-8b:
# hidden 4096, FFN 14336, 32 heads / 8 KV heads, vocabulary 128256, bf16, random weights with outlier columns,
# 8 layers a shard), side by side on this machine with the same threads:
#
#   f16:     laquant convert --outtype f16     vs  convert_hf_to_gguf.py --outtype f16
#   q8_0:    laquant convert --outtype q8_0    vs  convert_hf_to_gguf.py --outtype q8_0
#   q4_k_m:  laquant convert --outtype q4_k_m  vs  convert_hf_to_gguf.py --outtype f16 + llama-quantize Q4_K_M
#
# Wall time and peak RSS from /usr/bin/time -v. The checkpoint's pages are dropped from the page cache before
# every run (posix_fadvise DONTNEED; no root needed), so every run reads its input from the disk. Outputs are
# deleted as soon as they are measured, so the disk holds at most the input, the reference F16 and one output.
# q4_k_m's tensor types are compared with llama-quantize's. Then laquant alone converts to q4_k_m at each of
# LAQUANT_BIG_SCALE_LAYERS layers, to show its peak RSS does not grow with the model.
#
#   scripts/bench.sh big
# env: LAQUANT_BIG_LAYERS (32: the 8B model, 16 GB of bf16), LAQUANT_BIG_DIR (default
#      ~/.cache/laquant/bench: checkpoints are generated once and kept), LAQUANT_BIG_OUT (outputs; default
#      bench-out/), LAQUANT_BIG_MODES ("f16 q8_0 q4_k_m"), LAQUANT_BIG_SCALE_LAYERS (default none, e.g. "8 64"),
#      LAQUANT_THREADS (default nproc), LAQUANT_BIN,
#      LAQUANT_BIG_MIN_SPEEDUP (e.g. "f16=5,q8_0=5,q4_k_m=3") and LAQUANT_BIG_MAX_RSS_MB (e.g. 1024): bounds;
#      exit code 1 when a row misses one, fails to run, or q4_k_m's types differ from llama-quantize's.
# Targets of issue 24: >= 3x faster end to end for q4_k_m, >= 5x for f16 and q8_0, peak RSS <= 1 GB.
cmd_big() {
LAYERS=${LAQUANT_BIG_LAYERS:-32}
DIR=${LAQUANT_BIG_DIR:-$HOME/.cache/laquant/bench}
OUT=${LAQUANT_BIG_OUT:-$ROOT/bench-out}
MODES=${LAQUANT_BIG_MODES:-f16 q8_0 q4_k_m}
THREADS=${LAQUANT_THREADS:-$(nproc)}
mkdir -p "$DIR" "$OUT"
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

checkpoint() {  # checkpoint LAYERS -> prints its folder, generating it once
  local d=$DIR/llama3-8b-shape-$1l
  if [[ ! -f "$d/model.safetensors.index.json" ]]; then
    rm -rf "$d"
    python3 scripts/make-fixtures.py --big "$d.tmp" --layers "$1" --shape llama3-8b >&2 && mv "$d.tmp" "$d"
  fi
  echo "$d"
}
cold() {  # drop a folder's files from the page cache
  python3 -c 'import os,sys
for f in os.listdir(sys.argv[1]):
    fd = os.open(os.path.join(sys.argv[1], f), os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$1"
}
types() { "$LAQUANT" inspect --json "$1" | python3 -c 'import json,sys; [print(t["name"], t["type"]) for t in json.load(sys.stdin)["tensors"]]' | sort; }
gb() { du -sb "$1" | python3 -c 'import sys; print(f"{int(sys.stdin.read().split()[0]) / 1e9:.1f}")'; }

MODEL=$(checkpoint "$LAYERS")
[[ -f $MODEL/model.safetensors.index.json ]] || { echo "error: could not generate the $LAYERS-layer checkpoint" >&2; exit 1; }
name=$(basename "$MODEL")
size=$(gb "$MODEL")
ROWS=()
f16=$OUT/$name-f16.ref.gguf
for mode in $MODES; do
  ours=$OUT/$name-$mode.laquant.gguf theirs=$OUT/$name-$mode.ref.gguf
  rm -f "$ours" "$theirs"
  cold "$MODEL"
  read -r ow or <<< "$(measure "$OUT" "$name-$mode-laquant" "$LAQUANT" convert "$MODEL" -o "$ours" --outtype "$mode" --threads "$THREADS" -q)"
  osz=$( [[ -f $ours ]] && gb "$ours" || echo nan )
  [[ $mode == q4_k_m ]] || rm -f "$ours"
  qw=0 qr=0 same=-
  case $mode in
    f16 | q8_0)
      cold "$MODEL"
      read -r cw cr <<< "$(measure "$OUT" "$name-$mode-convert" python3 scripts/convert_ref.py -- "$MODEL" --outfile "$theirs" --outtype "$mode")"
      ;;
    q4_k_m)
      cold "$MODEL"
      rm -f "$f16"
      read -r cw cr <<< "$(measure "$OUT" "$name-$mode-convert" python3 scripts/convert_ref.py -- "$MODEL" --outfile "$f16" --outtype f16)"
      cold "$OUT"
      read -r qw qr <<< "$(measure "$OUT" "$name-$mode-quantize" "$BIN/llama-quantize" "$f16" "$theirs" Q4_K_M "$THREADS")"
      rm -f "$f16"
      if [[ -f $ours && -f $theirs ]] && diff <(types "$ours") <(types "$theirs") > /dev/null; then same=types_equal; else same=types_DIFFER; fi
      rm -f "$ours"
      ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  tsz=$( [[ -f $theirs ]] && gb "$theirs" || echo nan )
  rm -f "$theirs"
  ROWS+=("$name $LAYERS $size $mode $ow $or $cw $cr $qw $qr $osz $tsz $same")
done
for l in ${LAQUANT_BIG_SCALE_LAYERS:-}; do
  m=$(checkpoint "$l")
  [[ -f $m/model.safetensors.index.json ]] || { echo "error: could not generate the $l-layer checkpoint" >&2; exit 1; }
  ours=$OUT/$(basename "$m")-q4_k_m.laquant.gguf
  cold "$m"
  read -r ow or <<< "$(measure "$OUT" "$(basename "$m")-q4_k_m-laquant" "$LAQUANT" convert "$m" -o "$ours" --outtype q4_k_m --threads "$THREADS" -q --force)"
  osz=$( [[ -f $ours ]] && gb "$ours" || echo nan )
  rm -f "$ours"
  ROWS+=("$(basename "$m") $l $(gb "$m") q4_k_m $ow $or - - - - $osz - laquant_only")
done

echo
echo "8B-class benchmark, $THREADS threads on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GB RAM, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "laquant: $LAQUANT ; llama.cpp: convert_hf_to_gguf.py + $BIN/llama-quantize (llama-cpp-python 0.3.36 sources); inputs read cold"
python3 - "${ROWS[@]}" <<'PY'
import os, sys
f = lambda x: float(x) if x not in ("nan", "-") else float("nan")
hdr = ("checkpoint", "layers", "input GB", "type", "laquant s", "laquant RSS MB", "their s", "their RSS MB",
       "speedup", "sizes GB ours/theirs", "check")
rows, bad = [], []
def bounds(var):
    return {k: float(v) for k, v in (p.split("=") for p in os.environ.get(var, "").split(",") if p)}
min_speedup = bounds("LAQUANT_BIG_MIN_SPEEDUP")
max_rss = float(os.environ.get("LAQUANT_BIG_MAX_RSS_MB", "nan"))
for r in sys.argv[1:]:
    name, layers, size, mode, ow, orss, cw, cr, qw, qr, osz, tsz, same = r.split()
    their = f(cw) + (f(qw) if qw != "-" else 0.0)
    their_rss = max(f(cr), f(qr)) / 1024
    ours_rss = f(orss) / 1024
    speedup = their / f(ow)
    rows.append((name, layers, size, mode, ow, f"{ours_rss:.0f}", f"{their:.1f}" if cw != "-" else "-",
                 f"{their_rss:.0f}" if cw != "-" else "-", f"{speedup:.1f}x" if cw != "-" else "-",
                 f"{osz}/{tsz}", same.replace("_", " ")))
    if mode in min_speedup and same != "laquant_only" and not speedup >= min_speedup[mode]:
        bad.append(f"{name} {mode}: {speedup:.2f}x faster, bound {min_speedup[mode]}x")
    if max_rss == max_rss and not ours_rss <= max_rss:
        bad.append(f"{name} {mode}: laquant's peak RSS {ours_rss:.0f} MB, bound {max_rss:.0f} MB")
    if same == "types_DIFFER":
        bad.append(f"{name} {mode}: tensor types differ from llama-quantize's")
w = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
for x in [hdr] + rows:
    print("  ".join(str(v).ljust(w[i]) for i, v in enumerate(x)))
if min_speedup or max_rss == max_rss:
    if bad:
        sys.exit("bench big: FAILED\n  " + "\n  ".join(bad))
    print(f"bench big: within the bounds (speedup >= {min_speedup}, laquant's peak RSS <= {max_rss:.0f} MB)")
PY
}

case "${1:-}" in
  e2e | convert | calib | eval | quant | big)
    sub=$1
    shift
    "cmd_$sub" "$@"
    ;;
  *)
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
