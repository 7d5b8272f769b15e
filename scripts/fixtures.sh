#!/usr/bin/env bash
# The fixtures a check runs on, one name a line, in fixtures/checks.txt's order (the one fixture list .ci/run
# and the interop scripts read; its header names the checks). `imatrix` implies `logits`.
#
#   scripts/fixtures.sh CHECK            e.g. scripts/fixtures.sh eval
#   scripts/fixtures.sh --has FX CHECK   exit status 0 when fixture FX has CHECK
#
# An unknown check, or a listed fixture without its folder, is an error naming it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIST="$ROOT/fixtures/checks.txt"
CHECKS=" presets presets-own-imatrix logits imatrix eval ollama "
die() { echo "fixtures.sh: $*" >&2; exit 2; }
known() { [[ $CHECKS == *" $1 "* ]] || die "unknown check '$1' (known:$CHECKS)"; }

# has FX_CHECKS CHECK: whether a fixture's check list grants CHECK.
has() {
  local c
  for c in $1; do
    [[ $c == "$2" || ($2 == logits && $c == imatrix) ]] && return 0
  done
  return 1
}

[[ -f $LIST ]] || die "$LIST is missing"
if [[ ${1:-} == --has ]]; then
  [[ $# -eq 3 ]] || die "usage: scripts/fixtures.sh --has FIXTURE CHECK"
  known "$3"
  line=$(awk -v fx="$2" '$1 == fx { $1 = ""; print; found = 1 } END { exit !found }' "$LIST") \
    || die "fixture '$2' is not in $LIST"
  has "$line" "$3"
  exit
fi
[[ $# -eq 1 ]] || die "usage: scripts/fixtures.sh CHECK | --has FIXTURE CHECK"
known "$1"
while read -r fx rest; do
  [[ -z $fx || $fx == \#* ]] && continue
  [[ -f $ROOT/fixtures/$fx/config.json ]] || die "$LIST names '$fx', but fixtures/$fx/config.json does not exist"
  for c in $rest; do [[ $c == - ]] || known "$c"; done
  if has "$rest" "$1"; then echo "$fx"; fi
done <"$LIST"
