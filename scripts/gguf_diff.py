#!/usr/bin/env python3
"""Compares two GGUF files tensor by tensor (name, shape, type, bytes) and,
with --meta, key by key. Exit 1 on any difference. Uses llama.cpp's gguf-py
(GGUF_PY=path/to/gguf-py, default: the cached llama.cpp sdist)."""
import os, sys, argparse
cache = os.environ.get("LAQUANT_CACHE", os.path.expanduser("~/.cache/laquant"))
sys.path.insert(0, os.environ.get("GGUF_PY", f"{cache}/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py"))
import gguf  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("ours", nargs="?"); ap.add_argument("ref", nargs="?")
ap.add_argument("--meta", action="store_true", help="also compare metadata (every ref key present in ours with the same value)")
ap.add_argument("--ignore-key", action="append", default=[])
ap.add_argument("--order", action="store_true", help="tensor order must match too")
ap.add_argument("--pairs", help="a file of lines LABEL<TAB>OURS<TAB>REF: compare each pair (one process for many "
                "files), print 'ok LABEL' or 'FAIL LABEL' and the first differences; exit 1 if any differs")
a = ap.parse_args()


def val(f):
    return f.contents()


def compare(ours_path, ref_path, out):
    """Prints the differences of two files with `out`; returns their count."""
    ours, ref = gguf.GGUFReader(ours_path), gguf.GGUFReader(ref_path)
    bad = 0
    ot = {t.name: t for t in ours.tensors}
    rt = {t.name: t for t in ref.tensors}
    if set(ot) != set(rt):
        out("tensor names differ: only ours", sorted(set(ot) - set(rt)), "only ref", sorted(set(rt) - set(ot))); bad += 1
    if a.order and [t.name for t in ours.tensors] != [t.name for t in ref.tensors]:
        out("tensor order differs"); bad += 1
    for n in sorted(set(ot) & set(rt)):
        x, y = ot[n], rt[n]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            out(f"{n}: ours {x.tensor_type.name}{list(x.shape)} ref {y.tensor_type.name}{list(y.shape)}"); bad += 1
        elif bytes(x.data.tobytes()) != bytes(y.data.tobytes()):
            xb, yb = x.data.tobytes(), y.data.tobytes()
            first = next(i for i in range(min(len(xb), len(yb))) if xb[i] != yb[i]) if len(xb) == len(yb) else -1
            out(f"{n}: {x.tensor_type.name} bytes differ (first at byte {first} of {len(xb)})"); bad += 1
    if a.meta:
        om = {k: f for k, f in ours.fields.items()}
        for k, f in ref.fields.items():
            if k.startswith("GGUF.") or k in a.ignore_key:
                continue
            if k not in om:
                out(f"key {k}: missing in ours"); bad += 1; continue
            if f.types != om[k].types:
                out(f"key {k}: type ours {om[k].types} ref {f.types}"); bad += 1
            elif val(f) != val(om[k]):
                out(f"key {k}: value differs: ours {str(val(om[k]))[:80]} ref {str(val(f))[:80]}"); bad += 1
        extra = sorted(k for k in om if k not in ref.fields and not k.startswith("GGUF."))
        if extra:
            out("keys only in ours:", ", ".join(extra))
    return bad, len(rt)


if a.pairs:
    failed = 0
    for line in open(a.pairs):
        label, ours_path, ref_path = line.rstrip("\n").split("\t")
        lines = []
        bad, _ = compare(ours_path, ref_path, lambda *x: lines.append(" ".join(str(v) for v in x)))
        if bad:
            failed += 1
            print(f"FAIL {label}")
            for l in lines[:5]:
                print(f"     {l}")
        else:
            print(f"ok   {label}")
    sys.exit(1 if failed else 0)
if not (a.ours and a.ref):
    ap.error("OURS and REF, or --pairs FILE")
bad, n = compare(a.ours, a.ref, print)
print(f"{n} tensors compared, {bad} differences")
sys.exit(1 if bad else 0)
