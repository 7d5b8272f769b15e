#!/usr/bin/env python3
"""Reference snapshots for src/hf/card.rs, made with llama.cpp's own gguf-py.

For every case of fixtures/cards/cases.json this runs what convert_hf_to_gguf.py
runs for the `general.*` keys (ModelBase.prepare_metadata: gguf.Metadata.load,
the folder-name and size-label fallbacks, set_type, Metadata.set_gguf_meta_model),
writes the keys with a real GGUFWriter to a temporary file, decodes the file's
key/value section byte by byte and stores the keys, their GGUF types and values,
and convert's default file stems (gguf.naming_convention), or the exception that
convert would die with. It also snapshots get_model_id_components / id_to_title
on fixtures/cards/names.txt, the size labels of a list of counts, and
load_model_card on the texts of fixtures/cards/frontmatter.json.

Usage: python3 scripts/card-ref.py [--check]   (needs numpy and pyyaml, no torch)
The llama.cpp source is taken from $LAQUANT_LLAMA_CPP_SRC or the llama-cpp-python
0.3.36 sdist cache. Snapshots go to fixtures/cards/expected/; --check compares
instead of writing and exits 1 on a difference.
"""

import datetime
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "fixtures" / "cards"
EXPECTED = CARDS / "expected"
LLAMA_CPP = Path(os.environ.get(
    "LAQUANT_LLAMA_CPP_SRC",
    "/root/.cache/laquant/llama_cpp_python-0.3.36/vendor/llama.cpp"))
sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))

import gguf  # noqa: E402
from gguf.metadata import Metadata  # noqa: E402

TYPE_NAMES = {t.value: t.name for t in gguf.GGUFValueType}
OUT_TYPES = ["F32", "F16", "BF16", "Q8_0"]


def resolve_dir(d: str) -> Path:
    """'@shared/x' is ../shared/x beside the repository (as CI lays it out)."""
    if d.startswith("@shared/"):
        return ROOT.parent / "shared" / d[len("@shared/"):]
    return CARDS / d


def read_value(buf: bytes, off: int, vtype: int):
    name = TYPE_NAMES[vtype]
    fixed = {"UINT8": "<B", "INT8": "<b", "UINT16": "<H", "INT16": "<h", "UINT32": "<I",
             "INT32": "<i", "FLOAT32": "<f", "BOOL": "<?", "UINT64": "<Q", "INT64": "<q",
             "FLOAT64": "<d"}
    if name in fixed:
        fmt = fixed[name]
        (v,) = struct.unpack_from(fmt, buf, off)
        off += struct.calcsize(fmt)
        if name in ("FLOAT32", "FLOAT64"):
            v = repr(v)  # exact: the f32 widened to a double, as text
        return {"type": name, "value": v}, off
    if name == "STRING":
        (n,) = struct.unpack_from("<Q", buf, off)
        off += 8
        s = buf[off:off + n].decode("utf-8")
        return {"type": name, "value": s}, off + n
    if name == "ARRAY":
        (sub, n) = struct.unpack_from("<IQ", buf, off)
        off += 12
        items = []
        for _ in range(n):
            item, off = read_value(buf, off, sub)
            items.append(item)
        return {"type": name, "sub": TYPE_NAMES[sub], "value": items}, off
    raise ValueError(f"unknown type {vtype}")


def read_kv(buf: bytes):
    assert buf[:4] == b"GGUF"
    (_version, _n_tensors, n_kv) = struct.unpack_from("<IQQ", buf, 4)
    off = 24
    out = []
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", buf, off)
        off += 8
        key = buf[off:off + n].decode("utf-8")
        off += n
        (vtype,) = struct.unpack_from("<I", buf, off)
        off += 4
        val, off = read_value(buf, off, vtype)
        out.append([key, val])
    return out


def run_case(case: dict) -> dict:
    dir_model = resolve_dir(case["dir"])
    total = case.get("total_params", 0)
    shared = case.get("shared_params", total)
    expert = case.get("expert_params", 0)
    expert_count = case.get("expert_count", 0)
    model_name = case.get("model_name")
    try:
        # ModelBase.prepare_metadata, the part that makes general.*
        md = gguf.Metadata.load(None, dir_model, model_name, total)
        if md.name is None:
            md.name = dir_model.name
        if md.size_label is None and total > 0:
            md.size_label = gguf.size_label(total, shared, expert, expert_count)
        with tempfile.TemporaryDirectory() as td:
            path = Path(td) / "card.gguf"
            w = gguf.GGUFWriter(path, "llama")
            w.add_type(gguf.GGUFType.MODEL)  # ModelBase.set_type
            md.set_gguf_meta_model(w)
            w.write_header_to_file(path=path)
            w.write_kv_data_to_file()
            w.close()
            kv = read_kv(path.read_bytes())
    except Exception as e:  # convert would die here too
        return {"error": f"{type(e).__name__}: {e}"}
    result = {"keys": [k for k in kv if k[0] != "general.architecture"]}
    try:
        result["stems"] = {t: gguf.naming_convention(md.name, md.basename, md.finetune, md.version,
                                                     md.size_label, t) for t in OUT_TYPES}
    except Exception as e:
        result["stems_error"] = f"{type(e).__name__}: {e}"
    return result


def enc(v):
    """A Python value as typed JSON (what the Rust side's PyValue must equal)."""
    if v is None:
        return {"t": "none"}
    if isinstance(v, bool):
        return {"t": "bool", "v": v}
    if isinstance(v, int):
        return {"t": "int", "v": str(v)}
    if isinstance(v, float):
        return {"t": "float", "v": repr(v)}
    if isinstance(v, str):
        return {"t": "str", "v": v}
    if isinstance(v, (datetime.date, datetime.datetime)):
        return {"t": "date"}
    if isinstance(v, list):
        return {"t": "list", "v": [enc(x) for x in v]}
    if isinstance(v, dict):
        return {"t": "dict", "v": [[enc(k), enc(x)] for k, x in v.items()]}
    return {"t": type(v).__name__}


def frontmatter_cases():
    out = []
    for case in json.loads((CARDS / "frontmatter.json").read_text(encoding="utf-8")):
        with tempfile.TemporaryDirectory() as td:
            (Path(td) / "README.md").write_bytes(case["text"].encode("utf-8"))
            try:
                card = Metadata.load_model_card(Path(td))
                out.append({"name": case["name"], "card": enc(card)})
            except Exception as e:
                out.append({"name": case["name"], "error": f"{type(e).__name__}: {e}"})
    return out


NAME_TOTALS = [0, 1000, 25172352, 1100048384, 7241732096, 70553706496]
SIZE_COUNTS = [1, 999, 1000, 1001, 12345, 999999, 1000000, 1000001, 1499999, 1500000, 9950000,
               9999999, 25172352, 99500000, 134515008, 494032768, 999999999, 1000000000,
               1000000001, 1100048384, 1235814400, 7241732096, 8030261248, 70553706496,
               405000000000, 999999999999, 1000000000000, 1000000000001, 1500000000000,
               123456789012345]


def names_cases():
    out = []
    names = [n for n in (CARDS / "names.txt").read_text(encoding="utf-8").splitlines() if n]
    for name in names:
        for total in NAME_TOTALS:
            c = Metadata.get_model_id_components(name, total)
            out.append({"id": name, "total": total, "components": list(c)})
        out.append({"id": name, "title": Metadata.id_to_title(name)})
    sizes = [{"count": n, "label": gguf.size_label(n, n, 0, 0)} for n in SIZE_COUNTS]
    sizes += [{"count": n, "shared": n // 5, "expert": n // 9, "experts": 8,
               "label": gguf.size_label(n, n // 5, n // 9, 8)} for n in SIZE_COUNTS]
    return {"names": out, "sizes": sizes}


def main():
    check = "--check" in sys.argv[1:]
    snapshots = {}
    for case in json.loads((CARDS / "cases.json").read_text(encoding="utf-8")):
        snapshots[f"case-{case['case']}.json"] = {"case": case, **run_case(case)}
    snapshots["frontmatter.json"] = frontmatter_cases()
    snapshots["names.json"] = names_cases()

    EXPECTED.mkdir(parents=True, exist_ok=True)
    differ = 0
    for fname, data in snapshots.items():
        text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
        path = EXPECTED / fname
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                print(f"differs: {path}")
                differ += 1
        else:
            path.write_text(text, encoding="utf-8")
    if check:
        print(f"{len(snapshots) - differ} passed, {differ} failed")
        sys.exit(1 if differ else 0)
    print(f"wrote {len(snapshots)} snapshots to {EXPECTED}")


if __name__ == "__main__":
    main()
