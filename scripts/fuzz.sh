#!/usr/bin/env bash
# Runs every laquant fuzz target (fuzz/, cargo-fuzz + libFuzzer) for a fixed
# number of executions, starting from the committed seed corpus (fuzz/seeds,
# made by fuzz/make_seeds.py from fixtures/) plus whatever earlier runs found
# (fuzz/corpus, not committed). Targets run one after another; a crash stops
# that target, is saved under fuzz/artifacts/<target>/ and fails the script
# (after the other targets ran). Turn each crash into a regression test.
#
# usage: scripts/fuzz.sh [-n RUNS] [TARGET...]
#   -n RUNS        executions per target (default 1000000; env FUZZ_RUNS)
#   TARGET         some of: safetensors safetensors_index config tokenizer_json
#                  tokenizer_model gguf imatrix_dat imatrix_gguf (default: all)
# env: FUZZ_SANITIZER=address|none (default none: the readers are safe Rust, so
#      bounds errors are panics anyway; debug assertions and overflow checks stay on),
#      FUZZ_TIMEOUT (seconds per input, default 20), FUZZ_RSS_MB (default 2048),
#      FUZZ_NO_BUILD=1 (use the binaries already in fuzz/target).
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Summary (executions and result per target) in fuzz/last-run.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

RUNS=${FUZZ_RUNS:-1000000}
if [ "${1:-}" = "-n" ]; then RUNS=$2; shift 2; fi
SAN=${FUZZ_SANITIZER:-none}
ALL=(safetensors safetensors_index config tokenizer_json tokenizer_model gguf imatrix_dat imatrix_gguf)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

# Largest input per target: small keeps executions fast and still covers every field.
max_len() {
  case $1 in
    tokenizer_json|tokenizer_model) echo 4096 ;;
    config|safetensors_index|gguf|imatrix_gguf) echo 2048 ;;
    *) echo 1024 ;;
  esac
}

TOOLCHAIN=${FUZZ_TOOLCHAIN:-+nightly}
[ -d fuzz/seeds ] || python3 fuzz/make_seeds.py
# Build once, then run the binaries directly: editing the tree during a long run
# does not trigger rebuilds (`cargo fuzz run` would rebuild before each target).
# FUZZ_NO_BUILD=1 runs the binaries already built (e.g. a second runner beside a first).
[ -n "${FUZZ_NO_BUILD:-}" ] || cargo $TOOLCHAIN fuzz build -s "$SAN" || exit 1
BIN=fuzz/target/$(rustc $TOOLCHAIN -vV | sed -n 's/^host: //p')/release

# One line per target in fuzz/runs/<target>.txt (committed: the record of the last
# long run of each target); fuzz/last-run.txt gathers them.
mkdir -p fuzz/runs
failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t/last.log"
  start=$(date +%s)
  "$BIN/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
    -runs="$RUNS" -max_len="$(max_len "$t")" -timeout="${FUZZ_TIMEOUT:-20}" \
    -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" > "$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  if [ $rc -eq 0 ]; then result=ok; else result="FAILED (rc $rc, see $log)"; failed=1; fi
  printf '%-18s %12s %10s %8s  %s  (%s, sanitizer %s, load %s)\n' "$t" "${execs:-?}" "${rate:-?}" "$secs" "$result" \
    "$(date -u +%FT%TZ)" "$SAN" "$(cut -d' ' -f1-3 /proc/loadavg)" | tee "fuzz/runs/$t.txt"
  # The index and tokenizer targets keep a scratch folder per process.
  rm -rf /dev/shm/laquant-fuzz-"$t"-* "${TMPDIR:-/tmp}"/laquant-fuzz-"$t"-* 2>/dev/null
done
{
  printf '%-18s %12s %10s %8s  %s\n' target executions exec/s seconds result
  for t in "${ALL[@]}"; do [ -f "fuzz/runs/$t.txt" ] && cat "fuzz/runs/$t.txt"; done
} > fuzz/last-run.txt
cat fuzz/last-run.txt
exit $failed
