# Shared by the bench-*.sh scripts (sourced, not run): wall time and peak RSS of a command.
#
# measure DIR LABEL CMD...  -> prints "wall_seconds peak_rss_kb" ("nan nan" when CMD fails);
#                              stdout/stderr in DIR/LABEL.log, /usr/bin/time -v in DIR/LABEL.time
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }

measure() {
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
