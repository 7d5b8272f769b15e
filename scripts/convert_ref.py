#!/usr/bin/env python3
"""Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python==0.3.36 sdist), unchanged except for one
test-harness patch: when its BPE pre-tokenizer lookup does not know a tokenizer's hash, use the name given by
--force-pre (laquant identifies the pre-tokenizer from the tokenizer's definition; llama.cpp only by hash).

    python3 scripts/convert_ref.py [--force-pre NAME] -- MODEL --outfile OUT.gguf --outtype f16

LAQUANT_LLAMA_SRC (default ~/.cache/laquant/llama_cpp_python-0.3.36/vendor/llama.cpp) locates the converter.
"""
import os
import runpy
import sys
from pathlib import Path

src = Path(os.environ.get("LAQUANT_LLAMA_SRC",
                          Path.home() / ".cache/laquant/llama_cpp_python-0.3.36/vendor/llama.cpp"))
args = sys.argv[1:]
force_pre = None
if args[:1] == ["--force-pre"]:
    force_pre, args = args[1], args[2:]
if args[:1] == ["--"]:
    args = args[1:]

sys.path.insert(0, str(src))
sys.path.insert(1, str(src / "gguf-py"))
import conversion.base as base  # noqa: E402  (the converter's own package)

original = base.TextModel.get_vocab_base_pre


def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        if force_pre is None:
            raise
        base.logger.warning(f"laquant harness: unknown BPE pre-tokenizer hash, forcing tokenizer.ggml.pre={force_pre!r}")
        return force_pre


base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [str(src / "convert_hf_to_gguf.py")] + args
runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")
