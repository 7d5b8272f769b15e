#!/usr/bin/env python3
"""Compares two GGUF files tensor by tensor (name, shape, type, bytes) and,
with --meta, key by key. Exit 1 on any difference. Uses llama.cpp's gguf-py
(GGUF_PY=path/to/gguf-py, default: the cached llama.cpp sdist): its reader for
--meta, its block sizes for the tensors, which are read by `tensors` below
(gguf-py's reader takes seconds on a 250k-entry vocabulary, and the presets
stage compares hundreds of pairs)."""
import os, sys, argparse, mmap, struct
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


class Tensor:
    """One tensor of a GGUF file: name, shape (ggml order), type, bytes."""

    def __init__(self, name, shape, tensor_type, data):
        self.name, self.shape, self.tensor_type, self.data = name, shape, tensor_type, data


# Sizes of the fixed-width metadata value types (GGUF v3), by type id; 8 is a string, 9 an array.
SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def tensors(path):
    """The tensors of a GGUF v3 file, read from its header (the metadata is skipped,
    but for general.alignment); each tensor's bytes are its type's block size times
    its blocks (gguf-py's GGML_QUANT_SIZES), from its offset in the data section."""
    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    if magic != b"GGUF" or version != 3:
        raise ValueError(f"{path}: not a GGUF v3 file")
    pos, alignment = 24, 32

    def string(p):
        (n,) = struct.unpack_from("<Q", buf, p)
        return bytes(buf[p + 8:p + 8 + n]), p + 8 + n

    def skip(t, p):
        if t in SCALAR:
            return p + SCALAR[t]
        if t == 8:
            return string(p)[1]
        if t == 9:
            et, n = struct.unpack_from("<IQ", buf, p)
            p += 12
            if et in SCALAR:
                return p + n * SCALAR[et]
            for _ in range(n):
                p = skip(et, p)
            return p
        raise ValueError(f"{path}: metadata value type {t} unknown")

    for _ in range(n_kv):
        key, pos = string(pos)
        (t,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if key == b"general.alignment" and t == 4:
            (alignment,) = struct.unpack_from("<I", buf, pos)
        pos = skip(t, pos)
    infos = []
    for _ in range(n_tensors):
        name, pos = string(pos)
        (nd,) = struct.unpack_from("<I", buf, pos)
        shape = list(struct.unpack_from(f"<{nd}Q", buf, pos + 4))
        t, off = struct.unpack_from("<IQ", buf, pos + 4 + 8 * nd)
        pos += 4 + 8 * nd + 12
        infos.append((name.decode(), shape, t, off))
    base = (pos + alignment - 1) // alignment * alignment
    out = []
    for name, shape, t, off in infos:
        tt = gguf.GGMLQuantizationType(t)
        block, size = gguf.GGML_QUANT_SIZES[tt]
        n = 1
        for d in shape:
            n *= d
        start, end = base + off, base + off + n // block * size
        if n % block or end > len(buf):
            raise ValueError(f"{path}: tensor {name} ({tt.name}{shape}) does not fit the file")
        out.append(Tensor(name, shape, tt, buf[start:end]))
    return out


def compare(ours_path, ref_path, out):
    """Prints the differences of two files with `out`; returns their count."""
    ours_t, ref_t = tensors(ours_path), tensors(ref_path)
    bad = 0
    ot = {t.name: t for t in ours_t}
    rt = {t.name: t for t in ref_t}
    if set(ot) != set(rt):
        out("tensor names differ: only ours", sorted(set(ot) - set(rt)), "only ref", sorted(set(rt) - set(ot))); bad += 1
    if a.order and [t.name for t in ours_t] != [t.name for t in ref_t]:
        out("tensor order differs"); bad += 1
    for n in sorted(set(ot) & set(rt)):
        x, y = ot[n], rt[n]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            out(f"{n}: ours {x.tensor_type.name}{list(x.shape)} ref {y.tensor_type.name}{list(y.shape)}"); bad += 1
        elif x.data != y.data:
            xb, yb = x.data, y.data
            first = next(i for i in range(min(len(xb), len(yb))) if xb[i] != yb[i]) if len(xb) == len(yb) else -1
            out(f"{n}: {x.tensor_type.name} bytes differ (first at byte {first} of {len(xb)})"); bad += 1
    if a.meta:
        ours, ref = gguf.GGUFReader(ours_path), gguf.GGUFReader(ref_path)
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
