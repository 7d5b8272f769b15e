#!/usr/bin/env python3
"""Reference for laquant's tokenizer metadata: runs llama.cpp's own convert_hf_to_gguf.py
vocab code (the model class's set_vocab, gguf-py's SpecialVocab, LlamaHfVocab, ...) on a
model folder and prints every `tokenizer.*` key it writes as JSON:

    {"tokenizer.ggml.model": {"type": "STRING", "value": "gpt2"},
     "tokenizer.ggml.tokens": {"type": "ARRAY", "sub_type": "STRING", "value": [...]}, ...}

in the order convert writes them (the "_order" entry lists the keys).

usage: tokenizer-ref.py MODEL_DIR [--tokenizer-pre NAME] [--llama-cpp DIR] [-o OUT.json]
       tokenizer-ref.py --laquant FILE.gguf [-o OUT.json]     (same JSON from a GGUF, via gguf-py)

--tokenizer-pre NAME replaces convert's hash lookup (get_vocab_base_pre) by NAME, for
tokenizers whose hash convert does not know (polyglot-25m): the interop stage passes the
name laquant identified, so everything else is convert's own output.

Needs: numpy, transformers==4.57.6 (convert's pinned version), sentencepiece, protobuf.
torch is not needed: when it cannot be imported a stub module stands in (set_vocab never
touches tensors).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
import types
from pathlib import Path

DEFAULT_LLAMA_CPP = Path(os.environ.get(
    "LLAMA_CPP_SRC", "/root/.cache/laquant/llama_cpp_python-0.3.36/vendor/llama.cpp"))


def stub_torch() -> None:
    """Installs a stand-in `torch` module when the real one cannot be imported."""
    try:
        import torch  # noqa: F401
        return
    except Exception:
        for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
            del sys.modules[name]

    class _Any:
        def __init__(self, *a, **k):
            pass

        def __call__(self, *a, **k):
            return _Any()

        def __getattr__(self, name):
            return _Any()

        def __getitem__(self, k):
            return _Any()

        def __or__(self, other):
            return _Any()

        __ror__ = __or__

        def __hash__(self):
            return id(self)

        def __mro_entries__(self, bases):
            return (object,)

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Any()

    mod = _Module("torch")
    mod.__path__ = []  # a package, so "from torch import x" and "import torch.nn" work
    mod.Tensor = type("Tensor", (), {})
    sys.modules["torch"] = mod
    for sub in ("nn", "nn.functional", "_C"):
        m = _Module("torch." + sub)
        m.__path__ = []
        sys.modules["torch." + sub] = m


def gguf_type_name(t) -> str:
    return getattr(t, "name", str(t))


def value_json(v):
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8")
    if hasattr(v, "value") and not isinstance(v, (int, float, str)):
        return v.value
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [value_json(x) for x in v]
    if hasattr(v, "tolist"):
        return value_json(v.tolist())
    return v


def writer_entry(val, vtype, sub_type, gguf) -> dict:
    entry = {"type": gguf_type_name(vtype)}
    if vtype == gguf.GGUFValueType.ARRAY:
        items = list(val)
        st = sub_type
        if st is None:
            st = gguf.GGUFValueType.UINT8 if isinstance(val, bytes) else gguf.GGUFValueType.get_type(items[0])
        entry["sub_type"] = gguf_type_name(st)
        entry["value"] = [int(x) if st in (gguf.GGUFValueType.INT32, gguf.GGUFValueType.UINT32) else value_json(x)
                          for x in items]
        if st == gguf.GGUFValueType.FLOAT32:
            # what is stored on disk: float32
            import numpy as np
            entry["value"] = [float(np.float32(x)) for x in items]
    else:
        entry["value"] = value_json(val)
        if vtype == gguf.GGUFValueType.FLOAT32:
            import numpy as np
            entry["value"] = float(np.float32(val))
    return entry


def reference(model_dir: Path, llama_cpp: Path, force_pre: str | None) -> dict:
    stub_torch()
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    sys.path.insert(0, str(llama_cpp))
    import gguf  # noqa: E402
    conversion = importlib.import_module("conversion")

    hparams = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = hparams["architectures"][0]
    model_cls = conversion.get_model_class(arch) if hasattr(conversion, "get_model_class") \
        else conversion.ModelBase.from_model_architecture(arch)

    # set_vocab only needs these attributes; __init__ would index the weights.
    obj = model_cls.__new__(model_cls)
    obj.dir_model = model_dir
    obj.hparams = hparams
    obj.hf_arch = arch
    obj.origin_hf_arch = arch
    obj.is_mistral_format = False
    obj.target_model_dir = None
    obj.remote_hf_model_id = None
    with tempfile.TemporaryDirectory() as tmp:
        writer = gguf.GGUFWriter(path=Path(tmp) / "vocab.gguf",
                                 arch=gguf.MODEL_ARCH_NAMES[model_cls.model_arch])
        obj.gguf_writer = writer
        if force_pre is not None:
            obj.get_vocab_base_pre = lambda tokenizer: force_pre
        obj.set_vocab()
        out = {"_order": []}
        for key, gv in writer.kv_data[0].items():
            if not key.startswith("tokenizer."):
                continue
            out["_order"].append(key)
            out[key] = writer_entry(gv.value, gv.type, gv.sub_type, gguf)
    return out


def from_gguf(path: Path, llama_cpp: Path) -> dict:
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf  # noqa: E402
    r = gguf.GGUFReader(str(path))
    out = {"_order": []}
    for f in r.fields.values():
        if not f.name.startswith("tokenizer."):
            continue
        out["_order"].append(f.name)
        vtype = f.types[0]
        entry = {"type": gguf_type_name(vtype)}
        if vtype == gguf.GGUFValueType.ARRAY:
            st = f.types[-1]
            entry["sub_type"] = gguf_type_name(st)
            vals = []
            for idx in f.data:
                part = f.parts[idx]
                if st == gguf.GGUFValueType.STRING:
                    vals.append(bytes(part).decode("utf-8"))
                else:
                    vals.append(part.tolist()[0])
            entry["value"] = vals
        elif vtype == gguf.GGUFValueType.STRING:
            entry["value"] = bytes(f.parts[f.data[0]]).decode("utf-8")
        else:
            entry["value"] = f.parts[f.data[0]].tolist()[0]
        out[f.name] = entry
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--laquant", type=Path, help="dump the tokenizer keys of this GGUF file instead")
    ap.add_argument("--tokenizer-pre", dest="pre")
    ap.add_argument("--llama-cpp", type=Path, default=DEFAULT_LLAMA_CPP)
    ap.add_argument("-o", "--output", type=Path)
    a = ap.parse_args()
    if a.laquant is not None:
        res = from_gguf(a.laquant, a.llama_cpp)
    elif a.model is not None:
        res = reference(a.model, a.llama_cpp, a.pre)
    else:
        ap.error("give MODEL_DIR or --laquant FILE.gguf")
    text = json.dumps(res, ensure_ascii=False, indent=1)
    if a.output:
        a.output.write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
