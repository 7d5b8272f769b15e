#!/usr/bin/env bash
# Packing throughput of laquant's kernels next to ggml's ggml_quantize_chunk on the same rows
# (4096-wide normal rows, SplitMix(42) on both sides), one thread and all threads, without and
# with importance weights. Prints a table of GB/s (f32 input) and laquant/ggml ratios.
#
#   scripts/bench-quant.sh [TYPE,TYPE,...]      default: every type laquant writes
# Env: LAQUANT_BENCH_ROWS (default 16), THREADS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/gen-golden.sh --build
ORACLE=${LAQUANT_ORACLE_DIR:-target/oracle}/oracle
TYPES=${1:-F16,BF16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,IQ4_NL,IQ4_XS}
ROWS=${LAQUANT_BENCH_ROWS:-16}
THREADS=${THREADS:-$(nproc)}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

LAQUANT_BENCH_TYPES="$TYPES" LAQUANT_BENCH_ROWS="$ROWS" RAYON_NUM_THREADS="$THREADS" \
  cargo bench --bench quant -- --noplot >"$OUT/criterion.txt" 2>&1 || { cat "$OUT/criterion.txt"; exit 1; }
# "quant/1t/Q4_K+imatrix ... thrpt: [lo mid hi]" -> "1t Q4_K+imatrix GB/s"
awk '
  /^quant\// { split($1, p, "/"); key = p[2] " " p[3]; next }
  /thrpt:/ && key != "" {
    v = $4; u = $5
    f = (u ~ /^GiB/) ? 1.073741824 : (u ~ /^MiB/) ? 0.001048576 : (u ~ /^KiB/) ? 0.000001024 : 1e-9
    printf "%s %.4f\n", key, v * f; key = ""
  }' "$OUT/criterion.txt" >"$OUT/ours.txt"

printf "%-16s %8s | %9s %9s %6s | %9s %9s %6s\n" type imatrix "ours 1t" "ggml 1t" ratio "ours ${THREADS}t" "ggml ${THREADS}t" ratio
IFS=, read -ra TS <<<"$TYPES"
for t in "${TS[@]}"; do
  for im in "" imatrix; do
    case "$t" in F16|BF16|f16|bf16) [[ -n "$im" ]] && continue ;; esac
    name="$t${im:++imatrix}"
    o1=$(awk -v k="1t $name" '$1" "$2==k {print $3}' "$OUT/ours.txt")
    on=$(awk -v k="nt $name" '$1" "$2==k {print $3}' "$OUT/ours.txt")
    g1=$("$ORACLE" bench "$t" 4096 "$ROWS" 5 1 $im | awk '{print $3}')
    gn=$("$ORACLE" bench "$t" 4096 "$ROWS" 5 "$THREADS" $im | awk '{print $3}')
    r1=$(awk -v a="$o1" -v b="$g1" 'BEGIN{ if (b > 0 && a != "") printf "%.2f", a/b; else print "-" }')
    rn=$(awk -v a="$on" -v b="$gn" 'BEGIN{ if (b > 0 && a != "") printf "%.2f", a/b; else print "-" }')
    printf "%-16s %8s | %9s %9s %6s | %9s %9s %6s\n" "$t" "${im:-no}" "${o1:--}" "$g1" "$r1" "${on:--}" "$gn" "$rn"
  done
done
