#!/usr/bin/env bash
# Packing throughput of laquant's kernels next to ggml's own `ggml_quantize_chunk` (the oracle of
# interop/oracle/oracle.c linked against the cached llama.cpp build's libggml-base, built by
# scripts/gen-golden.sh --build), on the same rows: ROWS rows of 4096 normals (SplitMix(42) on both
# sides, the same importance weights), at every thread count of THREADS, best of ROUNDS interleaved
# rounds (ours and ggml's alternate type by type and round by round, so load from other jobs on a
# shared machine hits both sides alike). Throughput is MB of f32 input per second.
#
#   scripts/bench-quant.sh [TYPE,TYPE,...]     default: the i-quants plus Q4_K and Q6_K, with an imatrix
#
# Env: ROWS (default 32), THREADS (default "1 2 .. nproc"), ROUNDS (default 3),
#      IMATRIX (yes | no | both; default yes: i-quants without weights are refused by ggml),
#      LAQUANT_QUANT_JSON=FILE  also write the table as JSON (one object per type, imatrix, threads),
#      LAQUANT_QUANT_MIN_RATIO=R  exit code 1 when any row's ours/ggml ratio (at any thread count)
#                                 is below R (CI: 1.0, the bench stage of .ci/run).
# Issue 23's target: ours >= 2x ggml's on one thread, >= 1x at every thread count.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

scripts/gen-golden.sh --build
ORACLE=${LAQUANT_ORACLE_DIR:-target/oracle}/oracle
TYPES=${1:-IQ1_S,IQ1_M,IQ2_XXS,IQ2_XS,IQ2_S,IQ3_XXS,IQ3_S,Q4_K,Q6_K}
ROWS=${ROWS:-32}
THREADS=${THREADS:-$(seq -s ' ' 1 "$(nproc)")}
ROUNDS=${ROUNDS:-3}
WIDTH=4096
case "${IMATRIX:-yes}" in
  yes) IMS=(imatrix) ;;
  no) IMS=("") ;;
  both) IMS=("" imatrix) ;;
  *) echo "bench-quant: IMATRIX=${IMATRIX} (expected yes, no or both)" >&2; exit 2 ;;
esac

OURS=$(cargo bench --bench quant --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"target":{[^}]*"name":"quant".*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[[ -x "$OURS" ]] || { echo "bench-quant: could not build benches/quant.rs" >&2; exit 1; }

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
        print(f"bench-quant: {r['type']} (imatrix {r['imatrix']}) at {r['threads']} threads: "
              f"ours/ggml {r['ratio']} < {bound}", file=sys.stderr)
    if low:
        sys.exit(1)
    print(f"bench-quant: every row at least {bound}x ggml's throughput")
PY
