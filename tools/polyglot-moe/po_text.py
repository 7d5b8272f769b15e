#!/usr/bin/env python3
"""Training text from gettext catalogues: the `locale/<lang>/LC_MESSAGES/*.po` inside wheels (Django and apps).

For each of the 29 languages, every translated `msgstr` (every `msgid` for English, taken from the
catalogues of all languages), unescaped, deduplicated in first-seen order, one string per line,
capped at CAP bytes per language so that the languages are roughly balanced.

    po_text.py OUT_DIR CAP WHEEL...     writes OUT_DIR/<lang>.txt and prints bytes and lines per language
"""
import ast
import sys
import zipfile

LANGS = "ar bn ca cs da de el en es fa fr he hi id it ja ko nl pl pt ro ru sv ta th tr uk vi zh".split()
# Locale folders taken for a language besides its own code (zh: Simplified Chinese only).
FOLDERS = {"zh": ["zh_Hans"], "pt": ["pt_PT", "pt_BR"], "he": ["he_IL"], "id": ["id_ID"], "tr": ["tr_TR"]}


def lang_of(folder):
    """The language (of LANGS) a locale folder holds, or None."""
    for lang in LANGS:
        if folder == lang or folder in FOLDERS.get(lang, []):
            return lang
    return None


def unquote(s):
    """A .po string literal ("...") as text: C-style escapes like Python's."""
    return ast.literal_eval(s) if s.startswith('"') else ""


def entries(text):
    """(msgid, [msgstr...]) of each entry of a .po file; fuzzy entries and the header skipped."""
    out, cur, field, fuzzy = [], {}, None, False

    def flush():
        nonlocal cur, fuzzy
        if cur.get("msgid") and not fuzzy:
            strs = [v for k, v in sorted(cur.items()) if k.startswith("msgstr")]
            out.append((cur["msgid"], strs))
        cur, fuzzy = {}, False

    for line in text.splitlines():
        line = line.strip()
        if not line:
            flush()
            field = None
        elif line.startswith("#,") and "fuzzy" in line:
            fuzzy = True
        elif line.startswith("#"):
            continue
        elif line.startswith('"') and field:
            cur[field] += unquote(line)
        else:
            key, _, rest = line.partition(" ")
            if key == "msgid" and ("msgid" in cur and any(k.startswith("msgstr") for k in cur)):
                flush()
            field = key
            cur[field] = unquote(rest.strip())
    flush()
    return out


def main():
    out_dir, cap, wheels = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    texts = {lang: [] for lang in LANGS}
    for wheel in wheels:
        z = zipfile.ZipFile(wheel)
        names = sorted(n for n in z.namelist() if n.endswith(".po") and "/LC_MESSAGES/" in n)
        for n in names:
            lang = lang_of(n.split("/LC_MESSAGES/")[0].rsplit("/", 1)[-1])
            for msgid, strs in entries(z.read(n).decode("utf-8")):
                # English: the source strings of every catalogue.
                texts["en"].append(msgid)
                if lang and lang != "en":
                    texts[lang].extend(s for s in strs if s)
    for lang in LANGS:
        seen, lines, size = set(), [], 0
        for s in texts[lang]:
            s = " ".join(s.split())
            if len(s) < 2 or s in seen:
                continue
            seen.add(s)
            b = len(s.encode("utf-8")) + 1
            if size + b > cap:
                break
            lines.append(s)
            size += b
        if not lines:
            sys.exit(f"po_text: no text for {lang} in {' '.join(wheels)}")
        with open(f"{out_dir}/{lang}.txt", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"{lang} {size} bytes {len(lines)} lines")


if __name__ == "__main__":
    main()
