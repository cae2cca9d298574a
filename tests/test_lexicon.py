"""Lexicon readers: formats, field names, normalisation, hashing, every error path, bundled lexicons."""

from __future__ import annotations

import hashlib
import json
import unicodedata

import pytest

from tli.data.audit import audit
from tli.data.lexicon import FORMATS, Lexicon, Pair, bundled, list_bundled, normalize, read_lexicon
from tli.errors import DataError

PAIRS = [("maji", "water"), ("mkate", "bread"), ("chungwa", "orange")]


def write_json(path, records, **kw):
    path.write_text(json.dumps(records, ensure_ascii=False, **kw), encoding="utf-8")
    return path


def sw_en(pairs=PAIRS):
    return [{"swahili": s, "english": e} for s, e in pairs]


def as_tuples(lex: Lexicon) -> list[tuple[str, str]]:
    return [(p.source, p.target) for p in lex.pairs]


def raises(path, match_all: list[str], **kw) -> str:
    """Read `path`, expect a DataError whose message contains every string in `match_all`."""
    with pytest.raises(DataError) as info:
        read_lexicon(path, **kw)
    msg = str(info.value)
    for part in match_all:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- formats


def test_paper_release_format_loads_as_is(tmp_path):
    path = write_json(tmp_path / "train.json", sw_en(), indent=2)
    lex = read_lexicon(path)
    assert isinstance(lex, Lexicon)
    assert as_tuples(lex) == PAIRS
    assert lex.sources == ["maji", "mkate", "chungwa"]
    assert lex.targets == ["water", "bread", "orange"]
    assert len(lex) == 3
    assert lex.src_lang == "swahili" and lex.tgt_lang == "english"
    assert lex.path == path
    assert [p.where for p in lex.pairs] == ["entry 1", "entry 2", "entry 3"]
    assert lex.dropped == []


def test_jsonl_csv_tsv_load_the_same_pairs(tmp_path):
    expected = read_lexicon(write_json(tmp_path / "a.json", sw_en()))
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in sw_en()) + "\n\n", encoding="utf-8")  # trailing blank line ok
    ndjson = tmp_path / "a.ndjson"
    ndjson.write_text(jsonl.read_text(encoding="utf-8"), encoding="utf-8")
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("swahili,english\n" + "".join(f"{s},{e}\n" for s, e in PAIRS), encoding="utf-8")
    tsv_path = tmp_path / "a.tsv"
    tsv_path.write_text("swahili\tenglish\n" + "".join(f"{s}\t{e}\n" for s, e in PAIRS), encoding="utf-8")
    for path in (jsonl, ndjson, csv_path, tsv_path):
        lex = read_lexicon(path)
        assert as_tuples(lex) == as_tuples(expected) == PAIRS, path
        assert lex.src_lang == "swahili" and lex.tgt_lang == "english"
    # line numbers count the header for CSV/TSV and every line for JSONL
    assert [p.where for p in read_lexicon(csv_path).pairs] == ["line 2", "line 3", "line 4"]
    assert [p.where for p in read_lexicon(tsv_path).pairs] == ["line 2", "line 3", "line 4"]
    assert [p.where for p in read_lexicon(jsonl).pairs] == ["line 1", "line 2", "line 3"]


def test_csv_quoted_field_with_comma(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('swahili,english\nasante,"thanks, thank you"\n', encoding="utf-8")
    assert as_tuples(read_lexicon(path)) == [("asante", "thanks, thank you")]


def test_suffix_is_case_insensitive(tmp_path):
    path = write_json(tmp_path / "UPPER.JSON", sw_en())
    assert as_tuples(read_lexicon(path)) == PAIRS


def test_custom_field_and_language_names(tmp_path):
    records = [{"korean": "물", "english": "water"}, {"korean": "빵", "english": "bread"}]
    path = write_json(tmp_path / "ko.json", records)
    lex = read_lexicon(path, src_field="korean", tgt_field="english")
    assert as_tuples(lex) == [("물", "water"), ("빵", "bread")]
    assert lex.src_lang == "korean" and lex.tgt_lang == "english"  # default to the field names
    lex = read_lexicon(path, src_field="korean", tgt_field="english", src_lang="ko", tgt_lang="en")
    assert lex.src_lang == "ko" and lex.tgt_lang == "en"
    # the default fields are swahili/english, so reading without the options fails and says why
    raises(path, [str(path), "entry 1", "'swahili'", "korean"])


def test_reversed_fields_swap_direction(tmp_path):
    path = write_json(tmp_path / "a.json", sw_en())
    lex = read_lexicon(path, src_field="english", tgt_field="swahili")
    assert as_tuples(lex) == [(e, s) for s, e in PAIRS]


def test_extra_fields_are_ignored(tmp_path):
    records = [{"swahili": s, "english": e, "pos": "noun", "freq": 3, "note": None} for s, e in PAIRS]
    assert as_tuples(read_lexicon(write_json(tmp_path / "a.json", records))) == PAIRS
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("pos,english,swahili\n" + "".join(f"noun,{e},{s}\n" for s, e in PAIRS), encoding="utf-8")
    assert as_tuples(read_lexicon(csv_path)) == PAIRS  # column order does not matter either


@pytest.mark.parametrize(
    "fmt, text",
    [
        ("json", json.dumps(sw_en())),
        ("jsonl", "\n".join(json.dumps(r) for r in sw_en())),
        ("csv", "swahili,english\n" + "".join(f"{s},{e}\n" for s, e in PAIRS)),
        ("tsv", "swahili\tenglish\n" + "".join(f"{s}\t{e}\n" for s, e in PAIRS)),
    ],
)
def test_fmt_overrides_the_suffix(tmp_path, fmt, text):
    path = tmp_path / "lexicon.txt"  # unknown suffix: only works with an explicit fmt
    path.write_text(text, encoding="utf-8")
    assert as_tuples(read_lexicon(path, fmt=fmt)) == PAIRS
    with pytest.raises(DataError, match="unknown lexicon suffix"):
        read_lexicon(path)


def test_fmt_overrides_a_known_suffix(tmp_path):
    path = tmp_path / "really_tsv.csv"
    path.write_text("swahili\tenglish\nmaji\twater\n", encoding="utf-8")
    assert as_tuples(read_lexicon(path, fmt="tsv")) == [("maji", "water")]
    raises(path, [str(path), "'swahili'", "line 2"])  # read as CSV the header is one column "swahili\tenglish"


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".tsv"])
def test_utf8_bom_is_accepted(tmp_path, suffix):
    texts = {
        ".json": json.dumps(sw_en(), ensure_ascii=False),
        ".jsonl": "\n".join(json.dumps(r, ensure_ascii=False) for r in sw_en()),
        ".csv": "swahili,english\n" + "".join(f"{s},{e}\n" for s, e in PAIRS),
        ".tsv": "swahili\tenglish\n" + "".join(f"{s}\t{e}\n" for s, e in PAIRS),
    }
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + texts[suffix].encode("utf-8"))
    assert as_tuples(read_lexicon(path)) == PAIRS  # the BOM does not end up in the first field name


def test_expanduser(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_json(tmp_path / "home.json", sw_en())
    assert as_tuples(read_lexicon("~/home.json")) == PAIRS


# ---------------------------------------------------------------- normalisation


def test_nfd_comes_back_nfc(tmp_path):
    nfd = unicodedata.normalize("NFD", "café")
    assert nfd != "café" and len(nfd) == 5
    hangul_nfd = unicodedata.normalize("NFD", "물")
    assert hangul_nfd != "물"
    path = write_json(tmp_path / "a.json", [{"swahili": nfd, "english": hangul_nfd}])
    (pair,) = read_lexicon(path).pairs
    assert pair.source == "café" and len(pair.source) == 4
    assert pair.target == "물"
    assert unicodedata.is_normalized("NFC", pair.source) and unicodedata.is_normalized("NFC", pair.target)
    assert normalize(nfd) == "café"


def test_whitespace_trimmed_and_collapsed(tmp_path):
    records = [{"swahili": "  habari \t za\n asubuhi ", "english": "\u00a0good   morning "}]
    path = write_json(tmp_path / "a.json", records)
    (pair,) = read_lexicon(path).pairs
    assert pair.source == "habari za asubuhi"
    assert pair.target == "good morning"
    assert normalize("  a   b  ") == "a b"


def test_clean_glosses(tmp_path):
    records = [
        {"swahili": "chungwa", "english": "orange (fruit)"},
        {"swahili": "askari", "english": "soldier/police officer"},
        {"swahili": "mbwa (mnyama)", "english": "dog (animal) / hound"},
    ]
    path = write_json(tmp_path / "a.json", records)
    assert as_tuples(read_lexicon(path, clean_glosses=True)) == [
        ("chungwa", "orange"),
        ("askari", "soldier"),
        ("mbwa", "dog"),
    ]
    # without the option, glosses stay (whitespace still normalised)
    assert as_tuples(read_lexicon(path)) == [
        ("chungwa", "orange (fruit)"),
        ("askari", "soldier/police officer"),
        ("mbwa (mnyama)", "dog (animal) / hound"),
    ]
    assert normalize("orange (fruit)", clean_glosses=True) == "orange"
    assert normalize("soldier/police officer", clean_glosses=True) == "soldier"
    assert normalize("orange (fruit)") == "orange (fruit)"


def test_sha256_of_file_bytes(tmp_path):
    path = write_json(tmp_path / "a.json", sw_en(), indent=1)
    lex = read_lexicon(path)
    assert lex.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(lex.sha256) == 64
    # same pairs, different bytes -> different hash
    other = write_json(tmp_path / "b.json", sw_en(), indent=4)
    assert read_lexicon(other).sha256 != lex.sha256
    assert as_tuples(read_lexicon(other)) == as_tuples(lex)


def test_pair_is_frozen():
    p = Pair("maji", "water", "entry 1")
    with pytest.raises(AttributeError):
        p.source = "x"  # type: ignore[misc]


# ---------------------------------------------------------------- errors


def test_lexicon_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    raises(path, [str(path), "does not exist"])


def test_directory_is_not_a_file(tmp_path):
    raises(tmp_path, [str(tmp_path), "does not exist"])


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"swahili": "maji", "english": "water"},\n  {"swahili": "mkate" "english": "bread"}\n]\n')
    msg = raises(path, [str(path), "invalid JSON", "line 3"])
    assert "column" in msg


def test_empty_json_file(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("")
    raises(path, [str(path), "invalid JSON", "line 1"])


def test_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[\n{"swahili": "caf\xe9", "english": "coffee"}]'.encode("latin-1"))
    raises(path, [str(path), "not valid UTF-8", "line 2", "byte"])


@pytest.mark.parametrize("top, name", [({"swahili": "maji", "english": "water"}, "dict"), ("maji", "str"), (3, "int")])
def test_top_level_not_a_list(tmp_path, top, name):
    path = write_json(tmp_path / "top.json", top)
    raises(path, [str(path), "expected a JSON list", f"got a {name}"])


def test_entry_not_an_object(tmp_path):
    path = write_json(tmp_path / "a.json", [{"swahili": "maji", "english": "water"}, ["mkate", "bread"]])
    raises(path, [str(path), "entry 2 is a list", "expected an object"])
    path = write_json(tmp_path / "b.json", ["maji"])
    raises(path, [str(path), "entry 1 is a str"])


def test_jsonl_line_separators_inside_strings(tmp_path):
    """Raw U+2028/U+0085 are legal inside JSON strings (ensure_ascii=False writes them): not line breaks."""
    path = tmp_path / "a.jsonl"
    records = [{"swahili": "a\u2028b", "english": "x\x85y"}, {"swahili": "maji", "english": "water"}]
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n", encoding="utf-8")
    lex = read_lexicon(path)
    assert [p.source for p in lex.pairs] == ["a b", "maji"]  # U+2028 is whitespace: collapsed by normalize
    assert [p.where for p in lex.pairs] == ["line 1", "line 2"]


def test_jsonl_line_not_an_object(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"swahili": "maji", "english": "water"}\n\n"mkate"\n')
    raises(path, [str(path), "line 3 is a str"])


def test_missing_field_names_field_entry_and_present_fields(tmp_path):
    path = write_json(tmp_path / "a.json", [*sw_en(), {"swahili": "kitabu", "englsh": "book", "pos": "noun"}])
    raises(path, [str(path), "entry 4", "no field 'english'", "fields present", "'englsh'", "'pos'", "'swahili'"])
    path = write_json(tmp_path / "b.json", [{"english": "book"}])
    raises(path, [str(path), "entry 1", "no field 'swahili'", "'english'"])


def test_null_field_counts_as_missing(tmp_path):
    path = write_json(tmp_path / "a.json", [{"swahili": None, "english": "book"}])
    raises(path, [str(path), "entry 1", "no field 'swahili'"])


def test_missing_csv_column(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("swahili,eng\nmaji,water\n")
    raises(path, [str(path), "line 2", "no field 'english'", "'eng'"])
    short = tmp_path / "short.csv"
    short.write_text("swahili,english\nmaji,water\nmkate\n")  # a row with a missing cell
    raises(short, [str(short), "line 3", "no field 'english'"])


@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_empty_or_whitespace_field(tmp_path, value):
    path = write_json(tmp_path / "a.json", [*sw_en(), {"swahili": "kitabu", "english": value}])
    raises(path, [str(path), "entry 4", "'english'", "is empty"])


def test_empty_csv_cell(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("swahili,english\nmaji,water\n  ,bread\n")
    raises(path, [str(path), "line 3", "'swahili'", "is empty"])


@pytest.mark.parametrize("value, name", [(3, "int"), (["water"], "list"), ({"en": "water"}, "dict"), (True, "bool")])
def test_non_string_field(tmp_path, value, name):
    path = write_json(tmp_path / "a.json", [{"swahili": "maji", "english": value}])
    raises(path, [str(path), "entry 1", "'english'", f"is a {name}", "expected a string"])


def test_no_pairs(tmp_path):
    path = write_json(tmp_path / "a.json", [])
    raises(path, [str(path), "contains no pairs"])
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("swahili,english\n")
    raises(csv_path, [str(csv_path), "contains no pairs"])
    blank = tmp_path / "a.jsonl"
    blank.write_text("\n\n  \n")
    raises(blank, [str(blank), "contains no pairs"])
    empty_tsv = tmp_path / "a.tsv"
    empty_tsv.write_text("")
    raises(empty_tsv, [str(empty_tsv), "contains no pairs"])


def test_unknown_suffix(tmp_path):
    path = tmp_path / "lexicon.xml"
    path.write_text("<xml/>")
    msg = raises(path, [str(path), "unknown lexicon suffix", "'.xml'"])
    for suffix in FORMATS:
        assert suffix in msg
    no_suffix = tmp_path / "lexicon"
    no_suffix.write_text("[]")
    raises(no_suffix, [str(no_suffix), "unknown lexicon suffix"])


def test_invalid_fmt(tmp_path):
    path = write_json(tmp_path / "a.json", sw_en())
    msg = raises(path, [str(path), "'xml'", "auto", "json", "jsonl", "csv", "tsv"], fmt="xml")
    assert "is not one of" in msg


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"swahili": "maji", "english": "water"}\n{"swahili": "mkate", \n')
    raises(path, [str(path), "invalid JSON on line 2"])


def test_jsonl_missing_field_names_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"swahili": "maji", "english": "water"}\n\n{"swahili": "mkate"}\n')
    raises(path, [str(path), "line 3", "no field 'english'"])


def test_gloss_cleaning_that_empties_a_field(tmp_path):
    path = write_json(tmp_path / "a.json", [*sw_en(), {"swahili": "kitu", "english": "(thing)"}])
    assert read_lexicon(path).pairs[-1].target == "(thing)"  # fine without cleaning
    raises(path, [str(path), "entry 4", "'english'", "is empty after gloss cleaning", "'(thing)'"], clean_glosses=True)
    slash = write_json(tmp_path / "b.json", [{"swahili": "/kitu", "english": "thing"}])
    raises(slash, [str(slash), "entry 1", "'swahili'", "is empty after gloss cleaning"], clean_glosses=True)


# ---------------------------------------------------------------- bundled lexicons

BUNDLED = ["sw_en/train.json", "sw_en/control.json", "ko_en/train.json", "ko_en/control.json"]
STRICT = {
    "duplicate_pair": "error",
    "duplicate_source": "error",
    "duplicate_target": "error",
    "leaked_pair": "error",
    "leaked_word": "error",
}
FIELDS = {"sw_en": ("swahili", "english"), "ko_en": ("korean", "english")}


def _read_bundled(name: str) -> Lexicon:
    src, tgt = FIELDS[name.split("/")[0]]
    return read_lexicon(bundled(name), src_field=src, tgt_field=tgt)


def test_list_bundled():
    names = list_bundled()
    assert names == sorted(names)
    for name in BUNDLED:
        assert name in names
        assert bundled(name).is_file()


def test_bundled_sizes():
    assert len(_read_bundled("sw_en/train.json")) >= 600
    assert len(_read_bundled("sw_en/control.json")) >= 60
    assert len(_read_bundled("ko_en/train.json")) + len(_read_bundled("ko_en/control.json")) >= 150


@pytest.mark.parametrize("pair", ["sw_en", "ko_en"])
def test_bundled_pass_strict_audit(pair):
    train, control = _read_bundled(f"{pair}/train.json"), _read_bundled(f"{pair}/control.json")
    result = audit(train, control, STRICT)
    assert [f for f in result.findings if f.kind != "multi_word"] == []
    assert len(result.train) == len(train) and len(result.control) == len(control)
    # belt and braces: no source or target word shared between the splits, case-folded
    assert not {s.casefold() for s in train.sources} & {s.casefold() for s in control.sources}
    assert not {t.casefold() for t in train.targets} & {t.casefold() for t in control.targets}


def test_bundled_unknown_name_lists_available():
    with pytest.raises(DataError) as info:
        bundled("nope.json")
    msg = str(info.value)
    assert "'nope.json'" in msg and "available" in msg
    for name in list_bundled():
        assert name in msg
