"""Bilingual lexicons: read, validate and normalise word pairs from JSON, JSONL, CSV or TSV.

The paper's release format loads as is: `[{"swahili": "...", "english": "..."}, ...]`. Field names are options
(`src_field`, `tgt_field`), so any language pair works. Every error names the file and the entry (1-based entry
number for a JSON list, line number for JSONL/CSV/TSV) and says what is wrong.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tli.errors import DataError

FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}



@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    where: str  # "entry 3" or "line 4": where the pair stands in its file


@dataclass
class Lexicon:
    path: Path
    pairs: list[Pair]
    src_lang: str
    tgt_lang: str
    sha256: str = ""
    dropped: list[tuple[Pair, str]] = field(default_factory=list)  # (pair, reason) removed by the audit

    @property
    def sources(self) -> list[str]:
        return [p.source for p in self.pairs]

    @property
    def targets(self) -> list[str]:
        return [p.target for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)


def bundled(name: str) -> Path:
    """Path of a lexicon file shipped with tli, e.g. `bundled("sw_en/train.json")`."""
    path = Path(str(resources.files("tli") / "lexicons" / name))
    if not path.is_file():
        raise DataError(f"no bundled lexicon {name!r}; available: {', '.join(list_bundled())}")
    return path


def list_bundled() -> list[str]:
    root = Path(str(resources.files("tli") / "lexicons"))
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*.json"))


_PAREN = re.compile(r"\s*\([^)]*\)")


def normalize(text: str, clean_glosses: bool = False) -> str:
    """Unicode NFC, trimmed and single-spaced; optionally `orange (fruit)` -> `orange`, `a/b` -> `a`."""
    text = unicodedata.normalize("NFC", text)
    if clean_glosses:
        text = _PAREN.sub("", text).split("/")[0]
    return " ".join(text.split())


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: not valid UTF-8 at byte {err.start} (line {line})") from err


def _rows(path: Path, text: str, fmt: str) -> list[tuple[str, object]]:
    """(where, record) for each record in the file."""
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
        if not isinstance(data, list):
            raise DataError(
                f"{path}: expected a JSON list of pair objects like "
                f'[{{"swahili": "maji", "english": "water"}}], got a {type(data).__name__}'
            )
        return [(f"entry {i}", rec) for i, rec in enumerate(data, 1)]
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 etc. may sit inside a string
            if line.strip():
                try:
                    rows.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: invalid JSON on line {n}: {err.msg}") from err
        return rows
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if fmt == "tsv" else ",")
    try:
        return [(f"line {reader.line_num}", row) for row in reader]
    except csv.Error as err:
        raise DataError(f"{path}: malformed {fmt.upper()} at line {reader.line_num}: {err}") from err


def _field(path: Path, where: str, rec: object, name: str, clean: bool) -> str:
    if not isinstance(rec, dict):
        raise DataError(f"{path}: {where} is a {type(rec).__name__}, expected an object with a {name!r} field")
    if name not in rec or rec[name] is None:
        raise DataError(f"{path}: {where} has no field {name!r} (fields present: {sorted(map(str, rec))})")
    raw = rec[name]
    if not isinstance(raw, str):
        raise DataError(f"{path}: {where} field {name!r} is a {type(raw).__name__}, expected a string")
    value = normalize(raw, clean)
    if not value:
        why = f" after gloss cleaning (was {raw!r})" if raw.strip() else ""
        raise DataError(f"{path}: {where} field {name!r} is empty{why}")
    return value


def read_lexicon(
    path: str | Path,
    *,
    src_field: str = "swahili",
    tgt_field: str = "english",
    fmt: str = "auto",
    clean_glosses: bool = False,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> Lexicon:
    """Read and validate one lexicon file; `fmt` is auto (by suffix), json, jsonl, csv or tsv.

    `path` may be `bundled:NAME` for a lexicon shipped with tli (e.g. `bundled:sw_en/train.json`).
    """
    text_path = str(path)
    path = bundled(text_path[len("bundled:"):]) if text_path.startswith("bundled:") else Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"lexicon file {path} does not exist")
    if fmt == "auto":
        fmt = FORMATS.get(path.suffix.lower(), "")
        if not fmt:
            raise DataError(f"{path}: unknown lexicon suffix {path.suffix!r}; use one of {', '.join(FORMATS)}")
    elif fmt not in FORMATS.values():
        valid = ", ".join(sorted(set(FORMATS.values())))
        raise DataError(f"{path}: data.format={fmt!r} is not one of auto, {valid}")
    text = _decode(path)
    pairs = []
    for where, rec in _rows(path, text, fmt):
        src = _field(path, where, rec, src_field, clean_glosses)
        pairs.append(Pair(src, _field(path, where, rec, tgt_field, clean_glosses), where))
    if not pairs:
        raise DataError(f"{path}: contains no pairs")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Lexicon(path, pairs, src_lang or src_field, tgt_lang or tgt_field, digest)
