"""Import an installed FreeDict dictionary (dictd format) as a tli lexicon.

FreeDict data (e.g. Debian's ``dict-freedict-swh-eng`` / ``dict-freedict-eng-swh``) is GPL-licensed: the
lexicon this module generates is a derived work and must NOT be committed to the tli repository. Generate it
locally instead::

    python -m tli.data.freedict --package swh-eng --out data/lexicon.freedict.json

dictd format: ``NAME.index`` has lines ``headword<TAB>offset<TAB>length`` (base64 integers); the entry text
is ``dict[offset:offset+length]`` of the (optionally dictzip/gzip-compressed) ``NAME.dict``. FreeDict entries
look like::

    acha /ˈatʃa/ <v>          <- headline: headword(s), pronunciation, POS, (pl: {...}), [sg=pl]
    1.                        <- sense number (or a blank line when there is a single sense)
    leave                     <- translations, comma-separated
    ; quit, stop              <- more translations of the same sense
     (a note)                 <- 1-space indent: note / definition / "Plural of {x}: ..."
       See also: {anza}       <- 3-space indent: cross reference
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import unicodedata
import zlib
from collections.abc import Iterator
from pathlib import Path

from tli.errors import DataError
from tli.io import atomic_write_json

DICTD_DIR = Path("/usr/share/dictd")
PACKAGES = ("swh-eng", "eng-swh")
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_METADATA_PREFIXES = ("00database", "00-database")
_SENSE_NUMBER = re.compile(r"\d+\.")
_XREF = re.compile(r"(see also|synonyms?|antonyms?|plural of)\b", re.IGNORECASE)
_HEADLINE_EXTRAS = re.compile(r"\((?:pl|imp):[^)]*\)|\[sg=pl\]")
_PARENS = re.compile(r"\([^()]*\)")



def _b64_int(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _B64[ch]  # KeyError on a bad digit, reported by the caller
    return value


def _read_dict_bytes(dict_path: Path) -> bytes:
    if not dict_path.is_file():
        raise DataError(f"{dict_path}: no such dict file")
    try:
        if dict_path.suffix in (".dz", ".gz"):  # dictzip is gzip-compatible
            with gzip.open(dict_path, "rb") as f:
                return f.read()
        return dict_path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{dict_path}: cannot read dict data: {e}") from e


def read_dictd(index_path: str | Path, dict_path: str | Path) -> Iterator[tuple[str, str]]:
    """Yield (index headword, raw entry text) for every index line, metadata entries included."""
    index_path, dict_path = Path(index_path), Path(dict_path)
    if not index_path.is_file():
        raise DataError(f"{index_path}: no such index file")
    data = _read_dict_bytes(dict_path)
    with open(index_path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{index_path}:{lineno}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: index line is not valid UTF-8 ({e.reason})") from e
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                if len(fields) != 3 or not fields[0] or not fields[1] or not fields[2]:
                    raise KeyError
                headword, offset, length = fields[0], _b64_int(fields[1]), _b64_int(fields[2])
            except KeyError:
                raise DataError(f"{where}: malformed index line {line!r} "
                                    "(expected headword<TAB>base64 offset<TAB>base64 length)") from None
            if offset + length > len(data):
                raise DataError(f"{where}: entry {headword!r} spans bytes {offset}..{offset + length} "
                                    f"but {dict_path} holds only {len(data)} bytes")
            try:
                text = data[offset:offset + length].decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{dict_path}: entry {headword!r} (index {where}) is not valid UTF-8 "
                                    f"({e.reason})") from e
            yield headword, text


def _norm(text: str) -> str:
    """dictd's index key: lowercase, punctuation dropped, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


def _clean(text: str) -> list[str]:
    """Split a translation line into cleaned alternatives (parenthesised notes and {} markup removed)."""
    text = text.replace("{", "").replace("}", "")
    while (stripped := _PARENS.sub(" ", text)) != text:  # innermost first, so nesting is handled
        text = stripped
    text = text.split("(", 1)[0]  # unbalanced "(": drop the dangling note
    out = []
    for part in re.split(r"[,;]", text):
        part = " ".join(unicodedata.normalize("NFC", part).split()).rstrip("!?").strip()
        if part:
            out.append(part)
    return out


def headline_forms(text: str) -> list[str]:
    """The headword spellings on an entry's first line, e.g. ``afisa, ofisa /.../ <n>`` -> [afisa, ofisa]."""
    head = text.split("\n", 1)[0]
    head = re.split(r" /| <", head, maxsplit=1)[0]
    head = _HEADLINE_EXTRAS.sub("", head)
    return [" ".join(unicodedata.normalize("NFC", f).split()) for f in head.split(",") if f.strip()]


def display_headword(headword: str, text: str) -> str:
    """The entry's own spelling of `headword` (the index key is lowercased and stripped of punctuation,
    e.g. ``ngombe`` for ``ng'ombe``), with parenthesised notes removed; falls back to the index key."""
    for form in headline_forms(text):
        if _norm(form) == _norm(headword):
            cleaned = _clean(form)
            if cleaned:
                return cleaned[0]
    return " ".join(unicodedata.normalize("NFC", headword).split())


def parse_entry(headword: str, text: str) -> list[str]:
    """The translations in a FreeDict entry, most common sense first, deduplicated.

    The first line (headword, pronunciation, POS) is skipped, as are sense numbers. Unindented lines hold
    the translations. Indented lines are notes, definitions, cross references or "Plural of {x}: ..." back
    references (whose translations belong to the singular); they are used only when the entry has no
    unindented line, up to the first cross reference (eng-swh has a few entries like ``big`` -> `` kubwa``).
    `headword` (the index key) is not needed for FreeDict's layout; it is taken for symmetry with read_dictd.
    """
    lines = text.split("\n")[1:]
    content = [ln for ln in lines if ln.strip() and not _SENSE_NUMBER.fullmatch(ln.strip())]
    chosen = [ln for ln in content if not ln[0].isspace()]
    if not chosen:  # indented lines only: keep those before the first cross reference (wrapped lines follow it)
        for ln in content:
            if _XREF.match(ln.strip()):
                break
            chosen.append(ln)
    out: list[str] = []
    for line in chosen:
        for tr in _clean(line):
            if tr not in out:
                out.append(tr)
    return out


def _import(index_path: str | Path, dict_path: str | Path, *, reverse: bool, max_translations: int,
            single_word: bool, src_field: str, tgt_field: str) -> tuple[list[dict], int]:
    """(pairs, number of distinct non-metadata headwords read)."""
    # Homograph entries (e.g. kaa <v> / kaa <n>) share a headword: pool their translations in file order.
    by_headword: dict[str, list[str]] = {}
    for headword, text in read_dictd(index_path, dict_path):
        if headword.startswith(_METADATA_PREFIXES):
            continue
        translations = by_headword.setdefault(display_headword(headword, text), [])
        translations.extend(t for t in parse_entry(headword, text) if t not in translations)
    pairs: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for headword, translations in by_headword.items():
        for tr in translations[:max_translations]:
            src, tgt = (tr, headword) if reverse else (headword, tr)
            if not src or not tgt or (single_word and (len(src.split()) > 1 or len(tgt.split()) > 1)):
                continue
            if (src, tgt) not in seen:
                seen.add((src, tgt))
                pairs.append({src_field: src, tgt_field: tgt})
    return pairs, len(by_headword)


def import_freedict(index_path: str | Path, dict_path: str | Path, *, reverse: bool = False,
                    max_translations: int = 1, single_word: bool = False, src_field: str = "swahili",
                    tgt_field: str = "english") -> list[dict]:
    """Lexicon pairs ``{src_field: ..., tgt_field: ...}``: up to `max_translations` per headword.

    For a swh-eng dictionary the headword is the source; pass ``reverse=True`` for eng-swh, where the
    headword is the target (English) and the translations are the source (Swahili).
    """
    if max_translations < 1:
        raise ValueError(f"max_translations={max_translations} must be >= 1")
    return _import(index_path, dict_path, reverse=reverse, max_translations=max_translations,
                   single_word=single_word, src_field=src_field, tgt_field=tgt_field)[0]


def package_paths(package: str, dictd_dir: str | Path = DICTD_DIR) -> tuple[Path, Path]:
    """(index, dict) paths of an installed ``dict-freedict-<package>``; DataError when absent."""
    index = Path(dictd_dir) / f"freedict-{package}.index"
    for name in (f"freedict-{package}.dict.dz", f"freedict-{package}.dict"):
        if index.is_file() and (Path(dictd_dir) / name).is_file():
            return index, Path(dictd_dir) / name
    raise DataError(f"FreeDict package {package!r} is not installed ({index} and its .dict.dz not found); "
                        f"install it with: apt-get install dict-freedict-{package}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tli.data.freedict", description=__doc__.split("\n\n")[0])
    p.add_argument("--package", choices=PACKAGES, help="use the installed Debian dict-freedict-PACKAGE "
                   "(eng-swh implies --reverse)")
    p.add_argument("--dictd-dir", default=str(DICTD_DIR), help="where --package looks (default: %(default)s)")
    p.add_argument("--index", help="dictd .index file")
    p.add_argument("--dict", help="dictd .dict.dz or .dict file")
    p.add_argument("--out", required=True, help="output lexicon JSON (GPL data: do not commit it)")
    p.add_argument("--reverse", action="store_true", help="headwords are the target language (eng-swh)")
    p.add_argument("--max-translations", type=int, default=1, help="translations kept per headword")
    p.add_argument("--single-word", action="store_true", help="keep only pairs without whitespace on both sides")
    p.add_argument("--src-field", default="swahili")
    p.add_argument("--tgt-field", default="english")
    args = p.parse_args(argv)
    if args.package and (args.index or args.dict):
        p.error("give either --package or --index/--dict, not both")
    if not args.package and not (args.index and args.dict):
        p.error("give --package, or both --index and --dict")
    if args.max_translations < 1:
        p.error("--max-translations must be >= 1")
    try:
        if args.package:
            index, dict_ = package_paths(args.package, args.dictd_dir)
        else:
            index, dict_ = Path(args.index), Path(args.dict)
        pairs, n_headwords = _import(index, dict_, reverse=args.reverse or args.package == "eng-swh",
                                     max_translations=args.max_translations, single_word=args.single_word,
                                     src_field=args.src_field, tgt_field=args.tgt_field)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    atomic_write_json(args.out, pairs)
    print(f"read {n_headwords} headwords from {index}; wrote {len(pairs)} pairs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
