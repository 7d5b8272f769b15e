#!/usr/bin/env python3
"""Reference snapshots for src/hf/convert_py/, made with llama.cpp's own gguf-py.

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
       python3 scripts/card-ref.py --fuzz SEED COUNT DIR
         writes random model ids and model cards with gguf-py's answers to DIR
         (names.json, frontmatter-in.json, frontmatter.json); run
         LAQUANT_CARD_SNAPSHOTS=DIR cargo test --test card_snapshots to compare.
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
    # A falsy basename/size label/finetune/version (false, 0, [], "") is not written,
    # yet naming_convention still prints it: no writer of the keys alone can know.
    if any(v is not None and (not v or not isinstance(v, str))
           for v in (md.basename, md.size_label, md.finetune, md.version)):
        result["stems_use_unwritten_values"] = True
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
    if isinstance(v, (bytes, set, tuple)):
        return {"t": type(v).__name__}
    if isinstance(v, (datetime.date, datetime.datetime)):
        return {"t": "date"}
    if isinstance(v, list):
        return {"t": "list", "v": [enc(x) for x in v]}
    if isinstance(v, dict):
        return {"t": "dict", "v": [[enc(k), enc(x)] for k, x in v.items()]}
    return {"t": type(v).__name__}


def frontmatter_cases(cases=None):
    out = []
    if cases is None:
        cases = json.loads((CARDS / "frontmatter.json").read_text(encoding="utf-8"))
    for case in cases:
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


def names_cases(names=None):
    out = []
    if names is None:
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


NAME_TOKENS = ["llama", "Llama", "3", "3.1", "8B", "8b", "70b", "7b1", "1.1B", "1_5B", "0.5B", "A3B",
               "8x7B", "2x7b", "128k", "4k", "32K", "instruct", "Instruct", "chat", "Chat", "vision",
               "lora", "v0.1", "v2", "V3", "iter123", "q4_k_m", "Q8_0", "f16", "bf16", "fp32", "small",
               "mini", "medium", "large", "xl", "xxl", "hf", "it", "mt", "base", "GGUF", "2407", "01",
               "Yi", "ünï", "Модель", "中文", "ß", "ǆ", "", "x", "1.5T", "300M", "7B2", "0", "1e3"]
ORGS = ["", "", "meta-llama/", "Qwen/", ".hidden/", "../", "my org/", "a/b/"]
SCALARS = ["yes", "No", "on", "~", "null", "", "1.0", "1e5", "1.0e+5", "0x1F", "0o17", "0777", "08",
           "1_000", "1:30", "2024-01-31", "2024-13-01", "2001-12-14 21:59:43.10 -5", "'quoted'",
           '"dq"', ".inf", "-.Inf", ".nan", "true", "text with spaces", "apache-2.0", "mit", "en",
           "no", "Qwen/Qwen2.5-7B", "https://huggingface.co/a/B-7B-v1", "!!str 5", "! 7", "12:60",
           "190:20:30.15", "+.5", "-0", "1__0", "0.", "1.e+3", "-12", "99999999999", "3.4e+39",
           "null-ish", "v1.2", "7B"]
SAFE_SCALARS = ["'quoted'", '"dq"', "text with spaces", "apache-2.0", "mit", "en", "'no'", "fr",
                "Qwen/Qwen2.5-7B", "https://huggingface.co/a/B-7B-v1", "!!str 5", "null-ish", "v1.2",
                "7B", "meta-llama/Llama-2-7b-chat-hf", "ssh://host/repo", "org/Model-1.5B-Chat-v2",
                "./local/thing", "TheBloke/Mistral-7B-Instruct-v0.2-GGUF", "zh", "'1.0'", "x/y/z"]
CARD_KEYS = ["license", "version", "name", "tags", "language", "languages", "base_model", "datasets",
             "pipeline_tag", "author", "model_name", "size_label", "finetune", "license_name", "x"]


def fuzz(seed: int, count: int, outdir: Path):
    import random
    rng = random.Random(seed)
    names = []
    for _ in range(count):
        parts = [rng.choice(NAME_TOKENS) for _ in range(rng.randint(1, 6))]
        name = rng.choice(ORGS) + rng.choice(["-", "-", "-", " ", "_"]).join(parts)
        names.append(name)
    cards = []
    for i in range(count):
        lines = ["---"]
        pool = SAFE_SCALARS if i % 2 else SCALARS
        for key in rng.sample(CARD_KEYS, rng.randint(1, 6)):
            shape = rng.random()
            if shape < 0.5:
                lines.append(f"{key}: {rng.choice(pool)}")
            elif shape < 0.8:
                lines.append(f"{key}:")
                lines += [f"- {rng.choice(pool)}" for _ in range(rng.randint(0, 4))]
            else:
                items = ", ".join(rng.choice(pool) for _ in range(rng.randint(0, 3)))
                lines.append(f"{key}: [{items}]")
        lines.append("---")
        cards.append({"name": f"fuzz-{i}", "text": "\n".join(lines) + "\n"})
    outdir.mkdir(parents=True, exist_ok=True)
    # whole folders: README.md, config.json, generation_config.json, folder name
    gen_values = ["0", "1", "40", "0.5", "1.0", "true", "false", "null", '"abc"', '""', "1099511627776",
                  "-3", "1e39", "40.0", "[1]", "{}"]
    sampling_keys = ["sequence", "top_k", "top_p", "min_p", "xtc_probability", "xtc_threshold",
                     "temperature", "penalty_last_n", "penalty_repeat", "repetition_penalty",
                     "mirostat", "mirostat_tau", "mirostat_eta"]
    cases = []
    (outdir / "expected").mkdir(exist_ok=True)
    for i in range(count):
        dname = rng.choice(names).replace("/", "-").strip() or "x"
        if dname in (".", ".."):
            dname = "dot"
        d = outdir / "cases" / str(i) / dname
        d.mkdir(parents=True, exist_ok=True)
        if rng.random() < 0.7:
            (d / "README.md").write_text(cards[i]["text"], encoding="utf-8")
        r = rng.random()
        if r < 0.3:
            (d / "config.json").write_text(json.dumps({"_name_or_path": rng.choice(names)}))
        elif r < 0.4:
            (d / "config.json").write_text(json.dumps({"_name_or_path": "/some/local/" + dname}))
        elif r < 0.45:
            (d / "config.json").write_text(json.dumps({"_name_or_path": rng.choice(["", None, 7])}))
        elif r < 0.8:
            (d / "config.json").write_text("{}")
        r = rng.random()
        if r < 0.6:
            keys = rng.sample(sampling_keys, rng.randint(1, 5))
            body = ", ".join(f'"{k}": {rng.choice(gen_values)}' for k in keys)
            (d / "generation_config.json").write_text("{" + body + "}")
        elif r < 0.7:
            (d / "generation_config.json").write_text(rng.choice(["[]", "[1]", "0", "null", "{", '{"top_k": NaN}']))
        total = rng.choice([0, 1000, 123456, 25172352, 1100048384, 7241732096, rng.randint(1, 10**12)])
        case = {"case": f"fuzz-{i}", "dir": str(d), "total_params": total}
        if rng.random() < 0.1:
            case["model_name"] = rng.choice(names)
        if rng.random() < 0.1:
            case.update(shared_params=total // 3, expert_params=total // 20, expert_count=rng.randint(1, 64))
        cases.append(case)
        (outdir / "expected" / f"case-fuzz-{i}.json").write_text(
            json.dumps({"case": case, **run_case(case)}, ensure_ascii=False, indent=1))
    (outdir / "cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1))
    (outdir / "names.json").write_text(json.dumps(names_cases(names), ensure_ascii=False, indent=1))
    (outdir / "frontmatter-in.json").write_text(json.dumps(cards, ensure_ascii=False, indent=1))
    (outdir / "frontmatter.json").write_text(
        json.dumps(frontmatter_cases(cards), ensure_ascii=False, indent=1))
    print(f"wrote {count} names and {count} cards to {outdir}")


def main():
    if sys.argv[1:2] == ["--fuzz"]:
        fuzz(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
        return
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
