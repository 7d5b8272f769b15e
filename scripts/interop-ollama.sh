#!/usr/bin/env bash
# Checks `laquant batch --ollama`: for every fixture (and a SmolLM2-style variant whose ChatML template
# hard-codes a default system prompt), renders the Modelfile's TEMPLATE with Go's text/template the way
# ollama does (scripts/ollama-render: collate, SYSTEM when the chat has none) and compares the prompt with
# Hugging Face's own rendering of the checkpoint's Jinja chat template (transformers' apply_chat_template,
# BOS stripped: llama.cpp adds it when tokenizing), for chats with and without a system message.
# Needs: go (Debian's golang-go), python3 with transformers. Usage: LAQUANT=target/release/laquant scripts/interop-ollama.sh [FIXTURE...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAQUANT="${LAQUANT:-${CARGO_TARGET_DIR:-$ROOT/target}/release/laquant}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT/scripts/ollama-render" && go build -o "$WORK/render" .)

cp -r "$ROOT/fixtures/qwen2-tied" "$WORK/smol-style"
python3 - "$WORK/smol-style/tokenizer_config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["chat_template"] = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
json.dump(c, open(p, "w"))
PY

# The fixtures of fixtures/checks.txt's `ollama` (scripts/fixtures.sh), or those named as arguments.
if [[ $# -gt 0 ]]; then MODELS=("$@"); else
  FX=$("$ROOT/scripts/fixtures.sh" ollama)
  mapfile -t MODELS <<<"$FX"
fi
{
  echo 'types = ["q8_0"]'
  echo '[calib]'
  echo 'corpus = "none"'
  for m in "${MODELS[@]}"; do printf '[[models]]\npath = "%s"\n' "$ROOT/fixtures/$m"; done
  printf '[[models]]\npath = "%s"\n' "$WORK/smol-style"
} >"$WORK/zoo.toml"
"$LAQUANT" -q batch "$WORK/zoo.toml" -o "$WORK/out" --ollama

python3 - "$WORK" "$ROOT/fixtures" "${MODELS[@]}" smol-style <<'PY'
import json, os, subprocess, sys
from transformers import AutoTokenizer
work, fixtures, models = sys.argv[1], sys.argv[2], sys.argv[3:]
chats = {
    "with system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Wie geht's? 你好"}],
    "no system": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Wie geht's? 你好"}],
}
bad = 0
for m in models:
    src = os.path.join(work, m) if m == "smol-style" else os.path.join(fixtures, m)
    tok = AutoTokenizer.from_pretrained(src)
    mf = os.path.join(work, "out", m, f"{m}-Q8_0.Modelfile")
    assert os.path.exists(os.path.join(work, "out", m, f"{m}-Q8_0.gguf"))
    for name, chat in chats.items():
        try:
            ref = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # e.g. Mistral's template refuses a system message
            print(f"{m:14} {name:11} skipped: the Jinja template refuses it ({str(e)[:50]})")
            continue
        if tok.bos_token and ref.startswith(tok.bos_token):
            ref = ref[len(tok.bos_token):]
        msgs = json.dumps([{"Role": c["role"], "Content": c["content"]} for c in chat])
        ours = subprocess.run([os.path.join(work, "render"), mf, msgs], capture_output=True, text=True, check=True).stdout
        if ours == ref:
            print(f"{m:14} {name:11} same prompt")
        else:
            bad += 1
            print(f"{m:14} {name:11} DIFFERENT\n  jinja:  {ref!r}\n  ollama: {ours!r}")
print(f"{bad} different")
sys.exit(1 if bad else 0)
PY
