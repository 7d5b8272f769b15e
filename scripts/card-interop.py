#!/usr/bin/env python3
"""The `general.*` keys of `laquant convert` against the real convert_hf_to_gguf.py.

Makes model folders from polyglot-25m's weights with different folder names,
model cards and generation configs (from fixtures/cards/), converts each with
llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python 0.3.36 sdist; needs
torch) and with laquant at f16, and compares every `general.*` key of the two
files: name, order, GGUF type and value. Prints convert's default file name
beside laquant's. Exit 1 on any difference.

polyglot-25m's tokenizer hash is unknown to convert, so its pre-tokenizer lookup
is forced to "llama-bpe" here; that touches only tokenizer.ggml.pre, not general.*.

Usage: python3 scripts/card-interop.py [--laquant target/release/laquant]
"""

import argparse
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "fixtures" / "cards"
LLAMA_CPP = Path(os.environ.get(
    "LAQUANT_LLAMA_CPP_SRC",
    "/root/.cache/laquant/llama_cpp_python-0.3.36/vendor/llama.cpp"))

# (folder name, fixture folder whose README.md / generation_config.json are used)
VARIANTS = [
    ("polyglot-25m", None),
    ("TinyLlama-1.1B-Chat-v1.0", "Polyglot-Chat-2x7B-v2.1"),
    ("Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct"),
    ("Meta-Llama-3-8B-Instruct", "Meta-Llama-3-8B-Instruct"),
    ("bloomz-7b1-mt", "bloomz-7b1-mt"),
    ("sampling-all", "sampling-all"),
    ("anchors-and-merges", "anchors-and-merges"),
]


def read_kv(path: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("card_ref", ROOT / "scripts" / "card-ref.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    return [(k, v) for k, v in ref.read_kv(path.read_bytes()) if k.startswith("general.")]


def run_convert(model: Path, outdir: Path):
    """convert_hf_to_gguf.py MODEL --outtype f16 --outfile OUTDIR, in a child process."""
    code = f"""
import sys, runpy
sys.path.insert(0, {str(LLAMA_CPP)!r}); sys.path.insert(0, {str(LLAMA_CPP / 'gguf-py')!r})
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "llama-bpe"
sys.argv = ["convert_hf_to_gguf.py", {str(model)!r}, "--outtype", "f16", "--outfile", {str(outdir)!r}]
runpy.run_path({str(LLAMA_CPP / 'convert_hf_to_gguf.py')!r}, run_name="__main__")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"convert_hf_to_gguf.py failed on {model}:\n{r.stderr[-3000:]}")
    (out,) = list(outdir.glob("*.gguf"))
    return out


def main():
    ap = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    ap.add_argument("--laquant", default=str(Path(target) / "release" / "laquant"))
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "polyglot-25m"))
    args = ap.parse_args()
    src = Path(args.model)
    failed = 0
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        for name, fixture in VARIANTS:
            model = td / "models" / name
            model.mkdir(parents=True)
            for f in src.iterdir():
                if f.name not in ("README.md", "generation_config.json"):
                    shutil.copy(f, model / f.name)
            if fixture:
                for f in ("README.md", "generation_config.json"):
                    if (CARDS / fixture / f).exists():
                        shutil.copy(CARDS / fixture / f, model / f)
            conv_dir, laq_dir = td / "conv" / name, td / "laq" / name
            conv_dir.mkdir(parents=True)
            laq_dir.mkdir(parents=True)
            conv = run_convert(model, conv_dir)
            r = subprocess.run([args.laquant, "-q", "convert", str(model), "--outtype", "f16"],
                               cwd=laq_dir, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"FAIL {name}: laquant convert: {r.stderr.strip()}")
                failed += 1
                continue
            (laq,) = list(laq_dir.glob("*.gguf"))
            a, b = read_kv(conv), read_kv(laq)
            if a == b:
                print(f"ok   {name}: {len(a)} general.* keys identical; "
                      f"default names: convert {conv.name}, laquant {laq.name}")
            else:
                failed += 1
                print(f"FAIL {name}:")
                print(f"  convert {[k for k, _ in a]}\n  laquant {[k for k, _ in b]}")
                for x, y in zip(a, b):
                    if x != y:
                        print(f"  convert {x}\n  laquant {y}")
    print(f"{len(VARIANTS) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
