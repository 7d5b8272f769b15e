#!/usr/bin/env bash
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
#   [ROUNDS=1] [CHUNKS=4] [THREADS=2] scripts/bench-eval.sh [MODEL] [EVAL_DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
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
