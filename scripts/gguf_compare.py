#!/usr/bin/env python3
"""Compare a GGUF written by laquant with the one llama.cpp's convert_hf_to_gguf.py wrote, using llama.cpp's own
reader (gguf-py's GGUFReader from the vendored sdist).

    python3 scripts/gguf_compare.py OURS.gguf REF.gguf [--json OUT.json]

Checks: the same tensors in the same order, each equal in name, shape, ggml type and bytes; every metadata key the
reference writes present in ours with the same value type and value (floats compared bit for bit); the keys we add
are listed (not an error). Exit code 0 when everything the reference writes matches, 1 otherwise.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

SRC = Path(os.environ.get("LAQUANT_LLAMA_SRC", Path.home() / ".cache/laquant/llama_cpp_python-0.3.36/vendor/llama.cpp"))
sys.path.insert(0, str(SRC / "gguf-py"))
from gguf import GGUFReader, GGUFValueType  # noqa: E402

# Pseudo-fields GGUFReader adds for the header; compared separately (version) or meaningless (counts).
HEADER = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


def field_value(f):
    """(type description, python value) of a metadata field; arrays as lists, floats as their bit patterns."""
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        et = f.types[1] if len(f.types) > 1 else None
        if et == GGUFValueType.STRING:
            vals = [bytes(f.parts[i]).decode("utf-8", errors="surrogateescape") for i in f.data]
        else:
            vals = [f.parts[i].tobytes().hex() for i in f.data]
        return f"ARRAY[{et.name if et is not None else '?'}]", vals
    if t == GGUFValueType.STRING:
        return "STRING", bytes(f.parts[f.data[0]]).decode("utf-8", errors="surrogateescape")
    raw = f.parts[f.data[0]]
    return t.name, (raw.tobytes().hex(), raw.tolist())


def short(v, n=120):
    s = repr(v)
    return s if len(s) <= n else s[:n] + f"... ({len(v) if hasattr(v, '__len__') else '?'} items)"


def compare(ours_path: str, ref_path: str) -> dict:
    ours, ref = GGUFReader(ours_path), GGUFReader(ref_path)
    problems: list[str] = []
    # --- tensors
    ot = [t.name for t in ours.tensors]
    rt = [t.name for t in ref.tensors]
    if set(ot) != set(rt):
        problems.append(f"tensor names differ: missing {sorted(set(rt) - set(ot))}, extra {sorted(set(ot) - set(rt))}")
    elif ot != rt:
        first = next(i for i, (a, b) in enumerate(zip(ot, rt)) if a != b)
        problems.append(f"tensor order differs from position {first}: ours {ot[first:first + 3]}, ref {rt[first:first + 3]}")
    om = {t.name: t for t in ours.tensors}
    equal_tensors = 0
    for r in ref.tensors:
        o = om.get(r.name)
        if o is None:
            continue
        bad = []
        if list(o.shape) != list(r.shape):
            bad.append(f"shape {[int(x) for x in o.shape]} vs {[int(x) for x in r.shape]}")
        if o.tensor_type != r.tensor_type:
            bad.append(f"type {o.tensor_type.name} vs {r.tensor_type.name}")
        if not bad:
            ob = np.ascontiguousarray(o.data).view(np.uint8).reshape(-1)
            rb = np.ascontiguousarray(r.data).view(np.uint8).reshape(-1)
            if ob.shape != rb.shape:
                bad.append(f"{ob.size} bytes vs {rb.size}")
            elif not np.array_equal(ob, rb):
                ndiff = int(np.count_nonzero(ob != rb))
                bad.append(f"bytes differ ({ndiff} of {rb.size}, first at {int(np.argmax(ob != rb))})")
        if bad:
            problems.append(f"tensor {r.name}: " + ", ".join(bad))
        else:
            equal_tensors += 1
    # --- metadata
    of = {k: f for k, f in ours.fields.items() if k not in HEADER}
    rf = {k: f for k, f in ref.fields.items() if k not in HEADER}
    equal_keys = 0
    for k, f in rf.items():
        if k not in of:
            problems.append(f"key {k} missing (ref: {short(field_value(f)[1])})")
            continue
        (ot_, ov), (rt_, rv) = field_value(of[k]), field_value(f)
        if ot_ != rt_:
            problems.append(f"key {k}: type {ot_} vs {rt_} (ours {short(ov)}, ref {short(rv)})")
        elif ov != rv:
            if isinstance(rv, list):
                i = next((i for i, (a, b) in enumerate(zip(ov, rv)) if a != b), min(len(ov), len(rv)))
                problems.append(f"key {k}: {len(ov)} vs {len(rv)} items, first difference at {i}: "
                                f"ours {short(ov[i:i + 3])}, ref {short(rv[i:i + 3])}")
            else:
                problems.append(f"key {k}: ours {short(ov)}, ref {short(rv)}")
        else:
            equal_keys += 1
    extra = sorted(set(of) - set(rf))
    return {
        "ours": ours_path, "ref": ref_path, "ok": not problems, "problems": problems,
        "tensors": len(rt), "equal_tensors": equal_tensors, "keys": len(rf), "equal_keys": equal_keys,
        "extra_keys": {k: short(field_value(of[k])[1], 80) for k in extra},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("ref")
    ap.add_argument("--json", help="also write the result as JSON here")
    a = ap.parse_args()
    res = compare(a.ours, a.ref)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, ensure_ascii=False))
    status = "EQUAL" if res["ok"] else "DIFFERENT"
    print(f"{status}: {res['equal_tensors']}/{res['tensors']} tensors equal, {res['equal_keys']}/{res['keys']} keys equal;"
          f" our extra keys: {', '.join(res['extra_keys']) or 'none'}")
    for p in res["problems"]:
        print(f"  - {p}")
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
