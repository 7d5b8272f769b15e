#!/usr/bin/env python3
"""llama.cpp's tokenizer on a GGUF vs the Hugging Face tokenizer of the checkpoint it came from, per language.

    python3 scripts/tokenizer_check.py MODEL_DIR FILE.gguf [CORPUS_DIR]

For every CORPUS_DIR/<lang>.txt (default ../shared/corpus/calib): the ids of the HF `tokenizers` library on the
folder's tokenizer.json (special tokens added as its post-processor says) must equal the ids llama.cpp's
llama_tokenize gives on FILE.gguf (add_special=true, through $LAQUANT_HARNESS/llama-logits --tokens-only).
Prints one line per language and exits 1 if any differs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    model, gguf = Path(sys.argv[1]), sys.argv[2]
    corpus = Path(sys.argv[3]) if len(sys.argv) == 4 else ROOT.parent / "shared" / "corpus" / "calib"
    harness = Path(os.environ.get("LAQUANT_HARNESS", Path.home() / ".cache/laquant/harness")) / "llama-logits"
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    files = sorted(corpus.glob("*.txt"))
    if not files:
        sys.exit(f"error: no <lang>.txt in {corpus}")
    bad = 0
    for f in files:
        text = f.read_text(encoding="utf-8")
        want = tok.encode(text).ids
        out = subprocess.run([str(harness), gguf, str(f), "--tokens-only"], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{f.stem}: llama.cpp failed: {out.stderr.strip()[-300:]}")
            bad += 1
            continue
        got = json.loads(out.stdout)["ids"]
        if got == want:
            print(f"{f.stem}: same {len(want)} ids")
        else:
            bad += 1
            i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            print(f"{f.stem}: DIFFERENT ({len(got)} llama.cpp vs {len(want)} HF ids), first at {i}: "
                  f"llama.cpp {got[i:i + 5]} HF {want[i:i + 5]} "
                  f"HF pieces {[tok.id_to_token(t) for t in want[i:i + 5]]}")
    print(f"tokenizer: {len(files) - bad}/{len(files)} languages give the same ids")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
