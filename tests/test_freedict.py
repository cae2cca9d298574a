"""Tests for tli.data.freedict on a synthetic dictd dictionary shaped like FreeDict's (no FreeDict data copied)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from tli.data.freedict import import_freedict, parse_entry, read_dictd
from tli.errors import DataError

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path("/usr/share/dictd")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# (index headword, entry text): invented entries in the FreeDict c5 layout.
SWH_ENG = [
    ("00databaseinfo", "00-database-info\nA synthetic test dictionary\n"),
    ("00databaseshort", "Test Swahili-English\n"),
    ("afisa", "afisa, ofisa /afˈisa/ <n>\n\nofficer\n"),
    ("asante sana", "asante sana /asˈante sˈana/ <interj>\n\nthank you very much\n"),
    ("habari", "habari /habˈari/ <n> [sg=pl]\n\nnews, tidings(used in greetings (e.g. Habari?; Nzuri))\n; report\n"),
    ("kaa", "kaa /kˈaa/ <v>\n1.\nsit\n2.\nstay, live\n"),
    ("kaa", "kaa /kˈaa/ <n> [sg=pl]\n\ncrab\n"),
    ("kahawa", "kahawa /kahˈawa/ <n> [sg=pl]\n\ncoffee; cafe\u0301\n"),
    ("karibu", "karibu /karˈibu/ <interj>\n\nWelcome!\n; come in\n   See also: {hodi}\n\n"),
    ("kitabu", "kitabu /kitˈabu/ <n> (pl: {vitabu})\n1.\nbook\n2.\nvolume, tome\n   Synonym: {buku}\n\n"),
    ("maji", "maji /mˈaɟi/ <n>\n\nwater\n"),
    ("maji", "maji /mˈaɟi/ <n>\n\nwater\n"),  # exact duplicate entry: its pair must appear once
    ("mama mdogo", "mama mdogo /mˈama mdˈoɡo/ <n>\n\n(maternal) aunt\n mother's younger sister\n\n"),
    ("ngombe", "ng'ombe /ŋˈombe/ <n> [sg=pl]\n1.\ncow, cattle\n2.\nbeef\n"),
    ("ofisa", "afisa, ofisa /afˈisa/ <n>\n\nofficer\n"),
    ("vitabu", "vitabu /vitˈabu/ <n>\n\n Plural of {kitabu}: 1. book 2. volume,\n tome\n\n\n"),
]
ENG_SWH = [
    ("00databaseurl", "unknown\n"),
    ("big", "big /bˈɪɡ/ <adj>\n\n kubwa\n"),
    ("cow", "cow /kˈaʊ/ <n>\n\nng'ombe\n"),
    ("water", "water /wˈɔːtə/ <n>\n\nmaji\n"),
    ("what", "what /wˈɒt/ <pron>\n\nnini?\n"),
    ("you plural", "you (plural) /juː plˈʊəɹəl/ <pron>\n\nninyi\n"),
]

DEFAULT_PAIRS = [
    ("afisa", "officer"), ("asante sana", "thank you very much"), ("habari", "news"), ("kaa", "sit"),
    ("kahawa", "coffee"), ("karibu", "Welcome"), ("kitabu", "book"), ("maji", "water"), ("mama mdogo", "aunt"),
    ("ng'ombe", "cow"), ("ofisa", "officer"),
]


def b64(n: int) -> str:
    digits = ""
    while True:
        n, r = divmod(n, 64)
        digits = _ALPHABET[r] + digits
        if not n:
            return digits


def write_dictd(directory: Path, name: str, entries: list[tuple[str, str]], *, gz: bool = True) -> tuple[Path, Path]:
    """Write NAME.index and NAME.dict(.dz); entries are stored in reverse order so offsets are not sequential."""
    data, spans = b"", {}
    for i, (_, text) in reversed(list(enumerate(entries))):
        spans[i] = (len(data), len(text.encode()))
        data += text.encode()
    index = directory / f"{name}.index"
    index.write_text("".join(f"{h}\t{b64(spans[i][0])}\t{b64(spans[i][1])}\n" for i, (h, _) in enumerate(entries)),
                     encoding="utf-8")
    dict_path = directory / (f"{name}.dict.dz" if gz else f"{name}.dict")
    dict_path.write_bytes(gzip.compress(data) if gz else data)
    return index, dict_path


def pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["swahili"], r["english"]) for r in rows]


@pytest.fixture
def swh(tmp_path: Path) -> tuple[Path, Path]:
    return write_dictd(tmp_path, "freedict-swh-eng", SWH_ENG)


def test_b64_helper_matches_dictd_alphabet() -> None:
    assert [b64(n) for n in (0, 1, 63, 64, 4095, 4096)] == ["A", "B", "/", "BA", "//", "BAA"]


def test_read_dictd_gzip_and_plain(tmp_path: Path) -> None:
    for gz in (True, False):
        d = tmp_path / str(gz)
        d.mkdir()
        got = list(read_dictd(*write_dictd(d, "x", SWH_ENG, gz=gz)))
        assert got == SWH_ENG  # metadata included: skipping it is import_freedict's job


def test_parse_entry() -> None:
    entries = dict(SWH_ENG[2:])
    assert parse_entry("kitabu", entries["kitabu"]) == ["book", "volume", "tome"]
    assert parse_entry("habari", entries["habari"]) == ["news", "tidings", "report"]
    assert parse_entry("karibu", entries["karibu"]) == ["Welcome", "come in"]
    assert parse_entry("mama mdogo", entries["mama mdogo"]) == ["aunt"]
    assert parse_entry("vitabu", entries["vitabu"]) == []  # "Plural of" back reference only
    assert parse_entry("kahawa", entries["kahawa"]) == ["coffee", unicodedata.normalize("NFC", "cafe\u0301")]
    assert parse_entry("big", dict(ENG_SWH)["big"]) == ["kubwa"]  # indented-only entry
    assert parse_entry("x", "x <n>\n1.\na, b\n2.\nb; a ,  c  d\n") == ["a", "b", "c d"]


def test_import_default(swh: tuple[Path, Path]) -> None:
    rows = import_freedict(*swh)
    assert pairs(rows) == DEFAULT_PAIRS
    assert all(list(r) == ["swahili", "english"] for r in rows)


def test_import_max_translations_pools_homographs(swh: tuple[Path, Path]) -> None:
    got = pairs(import_freedict(*swh, max_translations=4))
    assert [e for s, e in got if s == "kaa"] == ["sit", "stay", "live", "crab"]
    assert [e for s, e in got if s == "ng'ombe"] == ["cow", "cattle", "beef"]
    assert [e for s, e in got if s == "kahawa"] == ["coffee", "café"]
    assert len(got) == len(set(got))
    with pytest.raises(ValueError):
        import_freedict(*swh, max_translations=0)


def test_import_single_word_and_fields(swh: tuple[Path, Path]) -> None:
    rows = import_freedict(*swh, single_word=True, src_field="sw", tgt_field="en")
    expected = [(s, e) for s, e in DEFAULT_PAIRS if " " not in s + e]
    assert [(r["sw"], r["en"]) for r in rows] == expected


def test_import_reverse(tmp_path: Path) -> None:
    rows = import_freedict(*write_dictd(tmp_path, "freedict-eng-swh", ENG_SWH), reverse=True)
    assert pairs(rows) == [("kubwa", "big"), ("ng'ombe", "cow"), ("maji", "water"), ("nini", "what"),
                           ("ninyi", "you")]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "tli.data.freedict", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_cli_writes_lexicon(swh: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "lex.json"
    res = run_cli("--index", str(swh[0]), "--dict", str(swh[1]), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "read 12 headwords" in res.stdout and "wrote 11 pairs" in res.stdout
    assert pairs(json.loads(out.read_text(encoding="utf-8"))) == DEFAULT_PAIRS
    assert "ng'ombe" in out.read_text(encoding="utf-8")  # ensure_ascii=False keeps text readable


def test_cli_package_eng_swh_implies_reverse(tmp_path: Path) -> None:
    write_dictd(tmp_path, "freedict-eng-swh", ENG_SWH)
    out = tmp_path / "lex.json"
    res = run_cli("--package", "eng-swh", "--dictd-dir", str(tmp_path), "--out", str(out), "--single-word")
    assert res.returncode == 0, res.stderr
    assert pairs(json.loads(out.read_text(encoding="utf-8"))) == [
        ("kubwa", "big"), ("ng'ombe", "cow"), ("maji", "water"), ("nini", "what"), ("ninyi", "you")]


def test_cli_missing_package(tmp_path: Path) -> None:
    res = run_cli("--package", "swh-eng", "--dictd-dir", str(tmp_path), "--out", str(tmp_path / "o.json"))
    assert res.returncode == 1
    assert "apt-get install dict-freedict-swh-eng" in res.stderr
    assert not (tmp_path / "o.json").exists()


def test_error_missing_files(swh: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.index"):
        list(read_dictd(tmp_path / "nope.index", swh[1]))
    with pytest.raises(DataError, match="nope.dict.dz"):
        list(read_dictd(swh[0], tmp_path / "nope.dict.dz"))


@pytest.mark.parametrize("line", ["maji\tAA\n", "maji\tA?\tB\n", "maji\t\tB\n", "maji\tA\tB\tC\n"])
def test_error_malformed_index_line(swh: tuple[Path, Path], line: str) -> None:
    index, dict_path = swh
    index.write_text("kitabu\tA\tB\n" + line, encoding="utf-8")
    with pytest.raises(DataError, match=r"freedict-swh-eng\.index:2: malformed index line"):
        list(read_dictd(index, dict_path))


def test_error_offset_beyond_dict(swh: tuple[Path, Path]) -> None:
    index, dict_path = swh
    size = len(gzip.decompress(dict_path.read_bytes()))
    index.write_text(f"maji\t{b64(size - 2)}\t{b64(3)}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"index:1: entry 'maji' .* only {size} bytes") as e:
        list(read_dictd(index, dict_path))
    assert str(dict_path) in str(e.value)


def test_error_bad_utf8(tmp_path: Path) -> None:
    index, dict_path = write_dictd(tmp_path, "d", [("maji", "maji\n\nwater\n")], gz=False)
    dict_path.write_bytes(b"maji\n\nw\xffter\n")
    with pytest.raises(DataError, match=r"d\.dict: entry 'maji' \(index .*d\.index:1\) is not valid UTF-8"):
        list(read_dictd(index, dict_path))
    index.write_bytes(b"m\xffji\tA\tB\n")
    with pytest.raises(DataError, match=r"d\.index:1: index line is not valid UTF-8"):
        list(read_dictd(index, dict_path))


def test_error_corrupt_gzip(swh: tuple[Path, Path]) -> None:
    index, dict_path = swh
    dict_path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"freedict-swh-eng\.dict\.dz: cannot read dict data"):
        list(read_dictd(index, dict_path))


@pytest.mark.skipif(not (REAL_DIR / "freedict-swh-eng.index").is_file(),
                    reason="FreeDict not installed: apt-get install dict-freedict-swh-eng dict-freedict-eng-swh")
def test_real_swh_eng_package() -> None:
    rows = import_freedict(REAL_DIR / "freedict-swh-eng.index", REAL_DIR / "freedict-swh-eng.dict.dz")
    got = set(pairs(rows))
    for pair in [("maji", "water"), ("kitabu", "book"), ("ng'ombe", "cow"), ("nyumba", "house"),
                 ("simba", "lion"), ("rafiki", "friend"), ("chai", "tea")]:
        assert pair in got
    assert len(rows) > 1000
    assert not any(s.startswith("00") for s, _ in got)
    if (REAL_DIR / "freedict-eng-swh.index").is_file():
        rev = set(pairs(import_freedict(REAL_DIR / "freedict-eng-swh.index", REAL_DIR / "freedict-eng-swh.dict.dz",
                                        reverse=True)))
        assert ("maji", "water") in rev and ("ng'ombe", "cow") in rev and len(rev) > 500
