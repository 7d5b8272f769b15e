#!/usr/bin/env bash
# Packing throughput of laquant's kernels next to ggml's ggml_quantize_chunk on the same rows
# (4096-wide normal rows, SplitMix(42) on both sides), one thread and all threads, without and
# with importance weights. Prints a table of GB/s (f32 input) and laquant/ggml ratios.
#
#   scripts/bench-quant.sh [TYPE,TYPE,...]      default: every type laquant writes
# Env: LAQUANT_BENCH_ROWS (default 16), THREADS (default nproc), ROUNDS (default 3).
#
# Each measurement is the best of many runs (the oracle's `bench` mode, and the same mode of
# benches/quant.rs: `quant-<hash> raw ...`). Ours and ggml's are interleaved, type by type and
# round by round, and the best of the rounds is kept, so that load from other jobs on a shared
# machine hits both sides alike. `uptime` is printed before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/gen-golden.sh --build
ORACLE=${LAQUANT_ORACLE_DIR:-target/oracle}/oracle
TYPES=${1:-F16,BF16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,IQ4_NL,IQ4_XS}
ROWS=${LAQUANT_BENCH_ROWS:-16}
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
WIDTH=4096

OURS=$(cargo bench --bench quant --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"target":{[^}]*"name":"quant".*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[[ -x "$OURS" ]] || { echo "bench-quant: could not build benches/quant.rs" >&2; exit 1; }

# Runs long enough to time well: the fast paths take well under a millisecond per run.
iters() {
  case "$1:$2" in
    F16:*|BF16:*|Q8_0:*|Q4_0:|Q4_1:|Q5_0:|Q5_1:) echo 200 ;;
    *) echo 8 ;;
  esac
}
best() { awk -v a="$1" -v b="$2" 'BEGIN{ print (a == "" || b + 0 > a + 0) ? b : a }'; }

declare -A R
IFS=, read -ra TS <<<"$TYPES"
echo "load before: $(uptime)"
for ((round = 1; round <= ROUNDS; round++)); do
  for t in "${TS[@]}"; do
    for im in "" imatrix; do
      case "$t" in F16|BF16|f16|bf16) [[ -n "$im" ]] && continue ;; esac
      n=$(iters "$t" "$im")
      for th in 1 "$THREADS"; do
        o=$("$OURS" raw "$t" $WIDTH "$ROWS" "$n" "$th" $im | awk '{print $3}')
        g=$("$ORACLE" bench "$t" $WIDTH "$ROWS" "$n" "$th" $im | awk '{print $3}')
        R[o,$t,$im,$th]=$(best "${R[o,$t,$im,$th]:-}" "$o")
        R[g,$t,$im,$th]=$(best "${R[g,$t,$im,$th]:-}" "$g")
      done
    done
  done
done
echo "load after:  $(uptime)"
echo "best of $ROUNDS interleaved rounds, $ROWS rows of $WIDTH, GB/s of f32 input"

printf "%-8s %8s | %9s %9s %6s | %9s %9s %6s\n" type imatrix "ours 1t" "ggml 1t" ratio "ours ${THREADS}t" "ggml ${THREADS}t" ratio
for t in "${TS[@]}"; do
  for im in "" imatrix; do
    case "$t" in F16|BF16|f16|bf16) [[ -n "$im" ]] && continue ;; esac
    o1=${R[o,$t,$im,1]} g1=${R[g,$t,$im,1]} on=${R[o,$t,$im,$THREADS]} gn=${R[g,$t,$im,$THREADS]}
    r1=$(awk -v a="$o1" -v b="$g1" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }')
    rn=$(awk -v a="$on" -v b="$gn" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }')
    printf "%-8s %8s | %9s %9s %6s | %9s %9s %6s\n" "$t" "${im:-no}" "$o1" "$g1" "$r1" "$on" "$gn" "$rn"
  done
done
