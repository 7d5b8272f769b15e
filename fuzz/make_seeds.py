#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/.

Seeds are small valid inputs (so libFuzzer starts deep inside each format):
hand-built safetensors, GGUF and imatrix images, the fixtures' config.json
files, and shrunken copies of the fixtures' tokenizer.json / tokenizer.model.
Run from anywhere: python3 fuzz/make_seeds.py. Output is deterministic.
"""
import json, os, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")
FIX = os.path.join(ROOT, "fixtures")
MODELS = ["llama-bpe", "llama3-rope", "mistral-spm", "qwen2-tied", "qwen3-sharded", "tinyllama-spm"]


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors -------------------------------------------------------------
def safetensors(tensors, meta=None, pad=8):
    header, data, off = {}, b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    while len(h) % pad:
        h += b" "
    return struct.pack("<Q", len(h)) + h + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
put("safetensors", "f32", safetensors([("w", "F32", [2, 2], f32(1, 2, 3, 4))]))
put("safetensors", "mixed", safetensors([
    ("a.weight", "F16", [3], b"\x00\x3c\x00\x40\x00\xc0"),
    ("b.weight", "BF16", [2], b"\x80\x3f\x00\x40"),
    ("c.weight", "I8", [4], b"\x01\x02\x03\x04"),
    ("d.weight", "F32", [0, 5], b""),
], meta={"format": "pt"}))
put("safetensors", "empty", safetensors([]))

# ---- model.safetensors.index.json (shards a/b in 00001, c in 00002) ----------
s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
put("safetensors_index", "good", json.dumps({"metadata": {"total_size": 44},
    "weight_map": {"a.weight": s1, "b.weight": s1, "c.weight": s2}}))
put("safetensors_index", "one-shard", json.dumps({"weight_map": {"c.weight": s2}}))
put("safetensors_index", "fixture", open(os.path.join(FIX, "qwen3-sharded", "model.safetensors.index.json")).read())

# ---- config.json -------------------------------------------------------------
for m in MODELS:
    put("config", m, open(os.path.join(FIX, m, "config.json"), "rb").read())

# ---- tokenizer.json (shrunk to 64 ids) -----------------------------------------
def shrink_tokenizer(tok, n=64):
    model = tok["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < n}
    model["vocab"] = vocab
    if isinstance(model.get("vocab"), dict) and "merges" in model:
        keep = []
        for m in model["merges"]:
            parts = m.split(" ") if isinstance(m, str) else m
            if len(parts) == 2 and all(p in vocab for p in parts) and "".join(parts) in vocab:
                keep.append(m)
        model["merges"] = keep[:32]
    added = []
    for k, a in enumerate(tok.get("added_tokens") or []):
        a = dict(a)
        a["id"] = n + k if a["id"] >= n else a["id"]
        added.append(a)
    tok["added_tokens"] = added[:8]
    return tok


for sel, m in enumerate(MODELS):
    tok = shrink_tokenizer(json.load(open(os.path.join(FIX, m, "tokenizer.json"))))
    arch = json.load(open(os.path.join(FIX, m, "config.json")))["architectures"][0]
    selector = bytes([0 if arch.startswith(("Llama", "Mistral")) else 1])
    tc = open(os.path.join(FIX, m, "tokenizer_config.json"), "rb").read()
    body = json.dumps(tok, ensure_ascii=False, separators=(",", ":")).encode()
    put("tokenizer_json", m, selector + body)
    put("tokenizer_json", m + "+config", selector + body + b"\xff" + tc)

# ---- tokenizer.model (protobuf) ----------------------------------------------
def varint(v):
    out = b""
    while v >= 0x80:
        out += bytes([(v & 0x7F) | 0x80])
        v >>= 7
    return out + bytes([v])


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def spm(pieces, extra=b""):
    out = b""
    for text, score, kind in pieces:
        body = field(1, 2, text.encode()) + field(2, 5, struct.pack("<f", score)) + field(3, 0, varint(kind))
        out += field(1, 2, body)
    return out + extra


put("tokenizer_model", "small", spm([("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), ("<0x00>", 0, 6),
                                     ("\u2581the", -1.5, 1), ("a", -2.0, 1), ("\u2581", -3.0, 4), ("x", -4.0, 5)],
                                    extra=field(2, 2, field(1, 2, b"model.txt") + field(3, 0, varint(8000)))
                                    + field(3, 2, field(1, 2, b"nmt_nfkc"))))
try:
    import sentencepiece as sp
    p = sp.SentencePieceProcessor(model_file=os.path.join(FIX, "tinyllama-spm", "tokenizer.model"))
    kind = lambda i: 2 if p.is_unknown(i) else 3 if p.is_control(i) else 5 if p.is_unused(i) else 6 if p.is_byte(i) else 1
    put("tokenizer_model", "tinyllama-head", spm([(p.id_to_piece(i), p.get_score(i), kind(i)) for i in range(min(300, p.get_piece_size()))]))
except ImportError:
    pass

# ---- GGUF --------------------------------------------------------------------
GT = {"U8": 0, "I8": 1, "U16": 2, "I16": 3, "U32": 4, "I32": 5, "F32": 6, "BOOL": 7, "STR": 8, "ARR": 9, "U64": 10, "I64": 11, "F64": 12}
FMT = {"U8": "<B", "I8": "<b", "U16": "<H", "I16": "<h", "U32": "<I", "I32": "<i", "F32": "<f", "BOOL": "<?", "U64": "<Q", "I64": "<q", "F64": "<d"}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    if t == "STR":
        return gstr(v)
    if isinstance(t, tuple):  # ("ARR", elem)
        et = t[1]
        return struct.pack("<IQ", GT["ARR"] if isinstance(et, tuple) else GT[et], len(v)) + b"".join(gval(et, x) for x in v)
    return struct.pack(FMT[t], v)


def gguf(kvs, tensors, align=32):
    """tensors: (name, dims, ggml type id, raw bytes)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", GT["ARR"] if isinstance(t, tuple) else GT[t]) + gval(t, v)
    off, data = 0, b""
    for name, dims, ty, raw in tensors:
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, off)
        pad = (-len(raw)) % align
        data += raw + b"\x00" * pad
        off += len(raw) + pad
    out += b"\x00" * ((-len(out)) % align)
    return out + data


q8_block = struct.pack("<e", 0.5) + bytes(range(32))
put("gguf", "model", gguf([
    ("general.architecture", "STR", "llama"), ("general.name", "STR", "seed"),
    ("llama.block_count", "U32", 1), ("llama.rope.freq_base", "F32", 10000.0), ("x.u8", "U8", 7), ("x.i8", "I8", -7),
    ("x.u16", "U16", 7), ("x.i16", "I16", -7), ("x.i32", "I32", -7), ("x.b", "BOOL", True), ("x.u64", "U64", 7),
    ("x.i64", "I64", -7), ("x.f64", "F64", 0.5),
    ("tokenizer.ggml.tokens", ("ARR", "STR"), ["<s>", "</s>", "a"]), ("tokenizer.ggml.scores", ("ARR", "F32"), [0.0, -1.0, -2.0]),
    ("x.nested", ("ARR", ("ARR", "U8")), [[1, 2], [3]]),
], [
    ("token_embd.weight", [4, 2], 0, f32(*range(8))),
    ("output_norm.weight", [4], 1, struct.pack("<4e", 1, 2, 3, 4)),
    ("blk.0.attn_q.weight", [32, 1], 8, q8_block),
]))
put("gguf", "aligned64", gguf([("general.alignment", "U32", 64)], [("t", [2], 0, f32(1, 2))], align=64))
put("gguf", "empty", gguf([], []))

# ---- imatrix -----------------------------------------------------------------
def imatrix_gguf(entries):
    tensors = []
    for name, sums, counts in sorted(entries):
        n_mat = len(counts)
        ne0 = len(sums) // n_mat
        tensors.append((name + ".in_sum2", [ne0] if n_mat == 1 else [ne0, n_mat], 0, f32(*sums)))
        tensors.append((name + ".counts", [1] if n_mat == 1 else [1, n_mat], 0, f32(*counts)))
    return gguf([("general.type", "STR", "imatrix"), ("imatrix.datasets", ("ARR", "STR"), ["seed.txt"]),
                 ("imatrix.chunk_count", "U32", 2), ("imatrix.chunk_size", "U32", 512)], tensors)


entries = [("blk.0.attn_q.weight", [1.0, 4.0, 9.0, 16.0], [1024.0]), ("blk.0.ffn_down_exps.weight", [1.0, 2.0, 3.0, 4.0], [2.0, 0.0])]
put("imatrix_gguf", "two", imatrix_gguf(entries))
put("gguf", "imatrix", imatrix_gguf(entries))


def dat(entries, chunks=2, dataset="seed.txt"):
    out = struct.pack("<i", len(entries))
    for name, vals, ncall in entries:
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, len(vals)) + f32(*vals)
    if chunks is not None:
        out += struct.pack("<i", chunks) + struct.pack("<i", len(dataset)) + dataset.encode()
    return out


put("imatrix_dat", "two", dat([("blk.0.attn_q.weight", [1.0, 2.0, 3.0, 4.0], 3), ("output.weight", [0.5, 0.25], 1)]))
put("imatrix_dat", "no-trailer", dat([("w", [1.0], 1)], chunks=None))
print("seeds written to", OUT)
