"""Lexicon audit: duplicates, leakage, multi-word entries, policies, reports and the CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from tli.data.audit import (
    DEFAULT_POLICY,
    POLICIES,
    AuditConfig,
    AuditResult,
    audit,
    check_policy,
    format_audit,
    write_audit,
)
from tli.data.lexicon import read_lexicon
from tli.errors import ConfigError, DataError


def lexicon(tmp_path, name, pairs):
    path = tmp_path / name
    path.write_text(json.dumps([{"swahili": s, "english": e} for s, e in pairs], ensure_ascii=False), encoding="utf-8")
    return read_lexicon(path)


def tuples(lex):
    return [(p.source, p.target) for p in lex.pairs]


def kinds(result, split=None):
    return [f.kind for f in result.findings if split is None or f.split == split]


TRAIN = [("maji", "water"), ("mkate", "bread"), ("kitabu", "book"), ("mti", "tree")]
CONTROL = [("nyumba", "house"), ("mbwa", "dog")]


# ---------------------------------------------------------------- clean input


def test_clean_lexicons_have_no_findings(tmp_path):
    train, control = lexicon(tmp_path, "train.json", TRAIN), lexicon(tmp_path, "control.json", CONTROL)
    result = audit(train, control)
    assert isinstance(result, AuditResult)
    assert result.findings == []
    assert result.counts() == {}
    assert result.policy == DEFAULT_POLICY
    assert tuples(result.train) == TRAIN and tuples(result.control) == CONTROL
    assert "no findings" in format_audit(result)


def test_train_only(tmp_path):
    result = audit(lexicon(tmp_path, "train.json", TRAIN))
    assert result.control is None and result.findings == []
    assert result.to_dict()["control"] is None
    assert "control" not in format_audit(result)


def test_default_policy():
    assert DEFAULT_POLICY == {
        "duplicate_pair": "drop",
        "duplicate_source": "warn",
        "duplicate_target": "warn",
        "leaked_pair": "error",
        "leaked_word": "warn",
        "multi_word": "warn",
        "long_word": "error",
        "special_token": "warn",
    }
    assert DEFAULT_POLICY == vars(AuditConfig())  # one definition: the config's defaults
    assert POLICIES == ("error", "warn", "drop", "ignore")


# ---------------------------------------------------------------- duplicates


def test_duplicate_pair_dropped_by_default(tmp_path):
    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("mkate", "bread"), ("Maji", "WATER"), ("mti", "tree")])
    result = audit(train)
    assert tuples(result.train) == [("maji", "water"), ("mkate", "bread"), ("mti", "tree")]  # first kept
    assert len(result.train.dropped) == 1
    pair, reason = result.train.dropped[0]
    assert (pair.source, pair.target, pair.where) == ("Maji", "WATER", "entry 3")
    assert reason == "duplicate_pair"
    (finding,) = result.findings
    assert finding.kind == "duplicate_pair" and finding.split == "train" and finding.action == "drop"
    assert finding.where == ["entry 1", "entry 3"]
    assert finding.file == str(train.path)
    assert "2 times" in finding.detail
    # the input lexicon is not modified
    assert len(train) == 4 and train.dropped == []
    # the dropped repeat does not also count as a duplicate source/target
    assert result.counts() == {"train/duplicate_pair": 1}


def test_duplicate_source_and_target_warned_by_default(tmp_path):
    pairs = [("maji", "water"), ("mkate", "bread"), ("maji", "liquid"), ("kinywaji", "water"), ("mti", "tree")]
    train = lexicon(tmp_path, "train.json", pairs)
    result = audit(train)
    assert tuples(result.train) == pairs  # warn keeps everything
    assert result.train.dropped == []
    by_kind = {f.kind: f for f in result.findings}
    assert set(by_kind) == {"duplicate_source", "duplicate_target"}
    assert by_kind["duplicate_source"].where == ["entry 1", "entry 3"]
    assert by_kind["duplicate_source"].action == "warn"
    assert "'maji'" in by_kind["duplicate_source"].detail and "'liquid'" in by_kind["duplicate_source"].detail
    assert by_kind["duplicate_target"].where == ["entry 1", "entry 4"]
    assert by_kind["duplicate_target"].action == "warn"
    assert result.counts() == {"train/duplicate_source": 1, "train/duplicate_target": 1}


def test_duplicates_are_case_folded(tmp_path):
    result = audit(lexicon(tmp_path, "train.json", [("Maji", "Water"), ("MAJI", "liquid"), ("straße", "street"),
                                                    ("STRASSE", "road")]))
    dup = [f for f in result.findings if f.kind == "duplicate_source"]
    assert [f.where for f in dup] == [["entry 1", "entry 2"], ["entry 3", "entry 4"]]


def test_duplicate_in_control_is_reported_for_control(tmp_path):
    train = lexicon(tmp_path, "train.json", TRAIN)
    control = lexicon(tmp_path, "control.json", [("nyumba", "house"), ("mbwa", "dog"), ("nyumba", "home")])
    result = audit(train, control)
    (finding,) = result.findings
    assert finding.kind == "duplicate_source" and finding.split == "control"
    assert finding.file == str(control.path) and finding.where == ["entry 1", "entry 3"]


def test_duplicate_drop_policy_drops_later_occurrences(tmp_path):
    pairs = [("maji", "water"), ("maji", "liquid"), ("mkate", "bread"), ("maji", "fluid"), ("kinywaji", "bread")]
    train = lexicon(tmp_path, "train.json", pairs)
    result = audit(train, policy={"duplicate_source": "drop", "duplicate_target": "drop"})
    assert tuples(result.train) == [("maji", "water"), ("mkate", "bread")]
    dropped = [(p.source, p.target, p.where, reason) for p, reason in result.train.dropped]
    assert dropped == [
        ("maji", "liquid", "entry 2", "duplicate_source"),
        ("maji", "fluid", "entry 4", "duplicate_source"),
        ("kinywaji", "bread", "entry 5", "duplicate_target"),
    ]
    assert all(f.action == "drop" for f in result.findings)
    source = next(f for f in result.findings if f.kind == "duplicate_source")
    assert source.where == ["entry 1", "entry 2", "entry 4"] and "3 times" in source.detail


def test_duplicate_error_policy(tmp_path):
    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("mkate", "bread"), ("maji", "liquid")])
    with pytest.raises(DataError) as info:
        audit(train, policy={"duplicate_source": "error"})
    msg = str(info.value)
    assert str(train.path) in msg
    assert "duplicate_source" in msg and "entry 1" in msg and "entry 3" in msg
    assert "'maji'" in msg
    assert "data.audit" in msg  # says how to relax it
    assert isinstance(info.value, DataError)


def test_duplicate_pair_error_policy(tmp_path):
    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("mkate", "bread"), ("maji", "water")])
    with pytest.raises(DataError, match=r"duplicate_pair .*entry 1, entry 3"):
        audit(train, policy={"duplicate_pair": "error"})


def test_all_error_findings_are_listed(tmp_path):
    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("maji", "liquid"), ("mkate", "bread"),
                                             ("kinywaji", "bread")])
    with pytest.raises(DataError) as info:
        audit(train, policy={"duplicate_source": "error", "duplicate_target": "error"})
    msg = str(info.value)
    assert "2 finding(s)" in msg
    assert "duplicate_source" in msg and "duplicate_target" in msg
    assert "entry 2" in msg and "entry 4" in msg


# ---------------------------------------------------------------- leakage


def test_leaked_pair_is_an_error_by_default(tmp_path):
    train = lexicon(tmp_path, "train.json", TRAIN)
    control = lexicon(tmp_path, "control.json", [("nyumba", "house"), ("Mkate", "Bread")])
    with pytest.raises(DataError) as info:
        audit(train, control)
    msg = str(info.value)
    assert "leaked_pair" in msg
    assert str(control.path) in msg
    assert "'Mkate'->'Bread'" in msg
    assert "entry 2" in msg
    assert str(train.path) in msg


def test_leaked_pair_drop_removes_it_from_control_only(tmp_path):
    train = lexicon(tmp_path, "train.json", TRAIN)
    control = lexicon(tmp_path, "control.json", [("nyumba", "house"), ("mkate", "bread"), ("mbwa", "dog")])
    result = audit(train, control, {"leaked_pair": "drop"})
    assert tuples(result.control) == [("nyumba", "house"), ("mbwa", "dog")]
    assert [(p.source, p.where, r) for p, r in result.control.dropped] == [("mkate", "entry 2", "leaked_pair")]
    assert tuples(result.train) == TRAIN and result.train.dropped == []
    (finding,) = result.findings
    assert finding.kind == "leaked_pair" and finding.split == "control" and finding.action == "drop"
    assert finding.where == ["entry 2"]
    # a dropped leaked pair is not reported again as a leaked word
    assert "leaked_word" not in kinds(result)


def test_leaked_pair_warn_keeps_it(tmp_path):
    train = lexicon(tmp_path, "train.json", TRAIN)
    control = lexicon(tmp_path, "control.json", [("nyumba", "house"), ("mkate", "bread")])
    result = audit(train, control, {"leaked_pair": "warn"})
    assert tuples(result.control) == [("nyumba", "house"), ("mkate", "bread")]
    assert kinds(result) == ["leaked_pair"]


def test_leaked_word(tmp_path):
    train = lexicon(tmp_path, "train.json", TRAIN)
    control = lexicon(tmp_path, "control.json", [("nyumba", "house"), ("maji", "liquid"), ("mbao", "Tree")])
    result = audit(train, control)  # leaked_word: warn by default
    assert tuples(result.control) == [("nyumba", "house"), ("maji", "liquid"), ("mbao", "Tree")]
    found = [f for f in result.findings if f.kind == "leaked_word"]
    assert [f.where for f in found] == [["entry 2"], ["entry 3"]]
    assert all(f.action == "warn" and f.split == "control" and f.file == str(control.path) for f in found)
    assert "['maji']" in found[0].detail
    assert "['Tree']" in found[1].detail  # case-folded match against "tree"
    assert "leaked_pair" not in kinds(result)

    result = audit(train, control, {"leaked_word": "drop"})
    assert tuples(result.control) == [("nyumba", "house")]
    assert [(p.where, r) for p, r in result.control.dropped] == [("entry 2", "leaked_word"), ("entry 3", "leaked_word")]
    assert tuples(result.train) == TRAIN

    with pytest.raises(DataError, match=r"leaked_word in .*control\.json \(entry 2\)"):
        audit(train, control, {"leaked_word": "error"})


def test_leakage_checked_after_train_drops(tmp_path):
    """Leakage compares against the cleaned training set, and leaked_pair=drop keeps the rest of control."""
    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("maji", "liquid")])
    control = lexicon(tmp_path, "control.json", [("nyumba", "liquid"), ("mbwa", "dog")])
    result = audit(train, control, {"duplicate_source": "drop"})
    assert tuples(result.train) == [("maji", "water")]
    assert "leaked_word" not in kinds(result)  # "liquid" was dropped from train
    result = audit(train, control)
    assert [f.where for f in result.findings if f.kind == "leaked_word"] == [["entry 1"]]


# ---------------------------------------------------------------- multi-word, ignore


def test_multi_word(tmp_path):
    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("habari za asubuhi", "good morning"),
                                             ("mkate", "white bread")])
    result = audit(train)
    found = [f for f in result.findings if f.kind == "multi_word"]
    assert [f.where for f in found] == [["entry 2"], ["entry 3"]]
    assert all(f.action == "warn" for f in found)
    assert len(result.train) == 3
    result = audit(train, policy={"multi_word": "drop"})
    assert tuples(result.train) == [("maji", "water")]
    assert [r for _, r in result.train.dropped] == ["multi_word", "multi_word"]


def test_long_words_are_refused_with_their_limit(tmp_path):
    long = "x" * 10_000  # a gloss or a sentence pasted as a word: useless, and slow to embed
    train = lexicon(tmp_path, "train.json", [("maji", "water"), (long, "flood"), ("moto", "fire")])
    with pytest.raises(DataError, match=r"long_word in .*train.json \(entry 2\): 'x+'->'flood' is longer than 100 "
                                        r"characters \(data.max_word_chars\)"):
        audit(train)
    assert tuples(audit(train, policy={"long_word": "drop"}).train) == [("maji", "water"), ("moto", "fire")]
    assert len(audit(train, max_word_chars=20_000).train) == 3


def test_special_token_text_is_a_warning(tmp_path):
    pairs = [("maji", "water"), ("<bos>", "start"), ("mkate", "bread </s>"), ("mti", "<|im_end|>"), ("<b>", "bold")]
    train = lexicon(tmp_path, "train.json", pairs)
    result = audit(train)
    found = [f for f in result.findings if f.kind == "special_token"]
    assert [f.where for f in found] == [["entry 2"], ["entry 3"], ["entry 4"]]  # <b> is not special-token text
    assert all(f.action == "warn" and f.split == "train" and f.file == str(train.path) for f in found)
    assert "'<bos>'->'start'" in found[0].detail and "['<bos>']" in found[0].detail
    assert "['</s>']" in found[1].detail and "['<|im_end|>']" in found[2].detail
    assert len(result.train) == 5
    assert tuples(audit(train, policy={"special_token": "drop"}).train) == [("maji", "water"), ("<b>", "bold")]
    assert "special_token" not in kinds(audit(train, policy={"special_token": "ignore"}))
    with pytest.raises(DataError, match=r"special_token in .*train\.json \(entry 2\)"):
        audit(train, policy={"special_token": "error"})


def test_special_token_text_of_the_tokenizer(tmp_path):
    class Tokenizer:  # the attributes of a transformers tokenizer the check reads
        all_special_tokens = ["<start_of_turn>", "<pad>"]
        added_tokens_decoder = {}

    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("<start_of_turn>", "turn"), ("<bos>", "start")])
    control = lexicon(tmp_path, "control.json", [("nyumba", "<pad>"), ("mbwa", "dog")])
    result = audit(train, control, tokenizer=Tokenizer())
    found = [(f.split, f.where) for f in result.findings if f.kind == "special_token"]
    assert found == [("train", ["entry 2"]), ("control", ["entry 1"])]  # "<bos>" is plain text to this tokenizer


def test_special_token_text_of_the_tiny_tokenizer(tmp_path, tiny_spec):
    from tli.model.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_spec)
    special = tokenizer.all_special_tokens[0]
    train = lexicon(tmp_path, "train.json", [("maji", "water"), (f"mkate{special}", "bread"), ("mti", "tree")])
    (finding,) = audit(train, tokenizer=tokenizer).findings
    assert finding.kind == "special_token" and finding.where == ["entry 2"] and repr(special) in finding.detail


@pytest.mark.parametrize("kind", ["duplicate_pair", "duplicate_source", "duplicate_target", "multi_word"])
def test_ignore_suppresses_a_split_check(tmp_path, kind):
    pairs = [("maji", "water"), ("maji", "water"), ("maji", "liquid"), ("kinywaji", "water"), ("mti mkubwa", "tree")]
    train = lexicon(tmp_path, "train.json", pairs)
    assert kind in kinds(audit(train))
    result = audit(train, policy={kind: "ignore"})
    assert kind not in kinds(result)
    assert kinds(result)  # the other checks still run


@pytest.mark.parametrize("kind", ["leaked_pair", "leaked_word"])
def test_ignore_suppresses_a_leakage_check(tmp_path, kind):
    train = lexicon(tmp_path, "train.json", TRAIN)
    control = lexicon(tmp_path, "control.json", [("mkate", "bread"), ("maji", "liquid"), ("mbwa", "dog")])
    result = audit(train, control, {"leaked_pair": "warn", kind: "ignore"})
    assert kind not in kinds(result)
    assert len(result.control) == 3


def test_ignore_leaked_pair_keeps_pair_and_does_not_raise(tmp_path):
    train = lexicon(tmp_path, "train.json", TRAIN)
    control = lexicon(tmp_path, "control.json", [("mkate", "bread"), ("mbwa", "dog")])
    result = audit(train, control, {"leaked_pair": "ignore"})
    assert result.findings == []
    assert tuples(result.control) == [("mkate", "bread"), ("mbwa", "dog")]


# ---------------------------------------------------------------- policy validation


def test_check_policy_merges_defaults():
    assert check_policy(None) == DEFAULT_POLICY
    assert check_policy({}) == DEFAULT_POLICY
    merged = check_policy({"multi_word": "ignore"})
    assert merged == {**DEFAULT_POLICY, "multi_word": "ignore"}
    assert DEFAULT_POLICY["multi_word"] == "warn"  # the defaults are not mutated


def test_invalid_policy_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        check_policy({"duplicates": "drop"})
    msg = str(info.value)
    assert "data.audit.duplicates" in msg and "unknown" in msg
    for kind in DEFAULT_POLICY:
        assert kind in msg
    with pytest.raises(ConfigError, match=r"data\.audit\.duplicates"):
        audit(lexicon(tmp_path, "train.json", TRAIN), policy={"duplicates": "drop"})


@pytest.mark.parametrize("action", ["fail", "Drop", "", None])
def test_invalid_policy_action(action):
    with pytest.raises(ConfigError) as info:
        check_policy({"leaked_word": action})
    msg = str(info.value)
    assert f"data.audit.leaked_word={action!r}" in msg
    for allowed in POLICIES:
        assert allowed in msg
    with pytest.raises(ConfigError, match=r"data\.audit\.leaked_word"):
        AuditConfig(leaked_word=action)  # the config refuses it at start-up


# ---------------------------------------------------------------- nothing left


def test_everything_dropped_is_an_error(tmp_path):
    train = lexicon(tmp_path, "train.json", TRAIN)
    control = lexicon(tmp_path, "control.json", [("mkate", "bread"), ("maji", "liquid")])
    with pytest.raises(DataError) as info:
        audit(train, control, {"leaked_pair": "drop", "leaked_word": "drop"})
    msg = str(info.value)
    assert str(control.path) in msg and "no pairs left" in msg and "control" in msg

    multi = lexicon(tmp_path, "multi.json", [("habari za asubuhi", "good morning"), ("lala salama", "sleep well")])
    with pytest.raises(DataError, match=r"no pairs left in the train set"):
        audit(multi, policy={"multi_word": "drop"})


# ---------------------------------------------------------------- reports


def _mixed(tmp_path):
    train = lexicon(tmp_path, "train.json", [*TRAIN, ("maji", "water"), ("maji", "liquid")])
    control = lexicon(tmp_path, "control.json", [("nyumba", "house"), ("mti", "wood")])
    return audit(train, control)


def test_counts_and_to_dict(tmp_path):
    result = _mixed(tmp_path)
    assert result.counts() == {"train/duplicate_pair": 1, "train/duplicate_source": 1, "control/leaked_word": 1}
    d = result.to_dict()
    assert d["policy"] == DEFAULT_POLICY
    assert d["train"] == {"file": str(result.train.path), "sha256": result.train.sha256, "pairs": 5, "dropped": 1}
    assert d["control"]["pairs"] == 2 and d["control"]["dropped"] == 0
    assert d["counts"] == result.counts()
    assert [f["kind"] for f in d["findings"]] == ["duplicate_pair", "duplicate_source", "leaked_word"]
    assert set(d["findings"][0]) == {"kind", "split", "file", "detail", "where", "action"}
    json.dumps(d)  # serialisable


def test_write_audit(tmp_path):
    result = _mixed(tmp_path)
    out_dir = tmp_path / "reports" / "nested"
    out = write_audit(result, out_dir / "audit.json")
    assert out == out_dir / "audit.json"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["counts"]["train/duplicate_pair"] == 1
    assert data["findings"][0]["where"] == ["entry 1", "entry 5"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["audit.json"]  # no temp files left
    write_audit(result, out)  # overwrite
    assert sorted(p.name for p in out_dir.iterdir()) == ["audit.json"]


def test_format_audit(tmp_path):
    result = _mixed(tmp_path)
    text = format_audit(result)
    assert f"train: {result.train.path} (5 pairs kept, 1 dropped)" in text
    assert f"control: {result.control.path} (2 pairs kept, 0 dropped)" in text
    assert "train/duplicate_pair: 1 [drop]" in text
    assert "train/duplicate_source: 1 [warn]" in text
    assert "control/leaked_word: 1 [warn]" in text
    assert "no findings" not in text


# ---------------------------------------------------------------- logging


def test_warnings_are_logged(tmp_path, caplog):
    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("maji", "liquid"), ("mkate", "bread"),
                                             ("mkate", "bread")])
    with caplog.at_level(logging.WARNING, logger="tli.data.audit"):
        audit(train)
    records = [r for r in caplog.records if r.name == "tli.data.audit"]
    assert len(records) == 2
    assert all(r.levelno == logging.WARNING for r in records)
    text = "\n".join(r.getMessage() for r in records)
    assert "duplicate_source" in text and "[warn]" in text
    assert "duplicate_pair" in text and "[drop]" in text
    assert str(train.path) in text and "entry 1, entry 2" in text


def test_two_audits_in_one_process_both_log(tmp_path, caplog):
    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("maji", "liquid")])
    with caplog.at_level(logging.WARNING, logger="tli.data.audit"):
        audit(train)
        audit(train)
    assert len([r for r in caplog.records if r.name == "tli.data.audit"]) == 2
    caplog.clear()
    reported: set = set()  # a caller that audits the same lexicon twice logs each finding once
    with caplog.at_level(logging.WARNING, logger="tli.data.audit"):
        first = audit(train, reported=reported)
        second = audit(train, reported=reported)
    assert len([r for r in caplog.records if r.name == "tli.data.audit"]) == 1
    assert first.findings == second.findings and reported


def test_ignored_and_clean_are_not_logged(tmp_path, caplog):
    train = lexicon(tmp_path, "train.json", [("maji", "water"), ("maji", "liquid")])
    with caplog.at_level(logging.WARNING, logger="tli.data.audit"):
        audit(train, policy={"duplicate_source": "ignore"})
        audit(lexicon(tmp_path, "clean.json", TRAIN))
    assert [r for r in caplog.records if r.name == "tli.data.audit"] == []


# ---------------------------------------------------------------- CLI


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tli.data.audit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_cli_summary_and_json(tmp_path):
    train = lexicon(tmp_path, "train.json", [*TRAIN, ("maji", "water")])
    control = lexicon(tmp_path, "control.json", CONTROL)
    out = tmp_path / "out" / "audit.json"
    proc = _cli(train.path, control.path, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"train: {train.path} (4 pairs kept, 1 dropped)" in proc.stdout
    assert f"control: {control.path} (2 pairs kept, 0 dropped)" in proc.stdout
    assert "train/duplicate_pair: 1 [drop]" in proc.stdout
    assert f"wrote {out}" in proc.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["train"]["pairs"] == 4 and data["control"]["pairs"] == 2
    assert data["counts"] == {"train/duplicate_pair": 1}


def test_cli_leaked_pair_fails(tmp_path):
    train = lexicon(tmp_path, "train.json", TRAIN)
    control = lexicon(tmp_path, "control.json", [("nyumba", "house"), ("maji", "water")])
    out = tmp_path / "audit.json"
    proc = _cli(train.path, control.path, "--out", out, cwd=tmp_path)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "leaked_pair" in output and "'maji'->'water'" in output and "entry 2" in output
    assert str(control.path) in proc.stderr
    assert "Traceback" not in output  # the message, not a stack trace
    assert not out.exists()


def test_cli_bad_input(tmp_path):
    missing = tmp_path / "missing.json"
    proc = _cli(missing, cwd=tmp_path)
    assert proc.returncode != 0
    assert str(missing) in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    train = lexicon(tmp_path, "train.json", TRAIN)
    proc = _cli(train.path, "--policy", "leaked_pair", cwd=tmp_path)
    assert proc.returncode == 2
    assert "CHECK=ACTION" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli(train.path, "--policy", "leaked_pair=maybe", cwd=tmp_path)
    assert proc.returncode != 0
    assert "data.audit.leaked_pair='maybe'" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_policy_and_fields(tmp_path):
    path = tmp_path / "ko.jsonl"
    path.write_text('{"korean": "물", "english": "water"}\n{"korean": "빵", "english": "bread (food)"}\n',
                    encoding="utf-8")
    control = tmp_path / "ko_control.jsonl"
    control.write_text('{"korean": "물", "english": "water"}\n{"korean": "집", "english": "house"}\n', encoding="utf-8")
    out = tmp_path / "audit.json"
    proc = _cli(path, control, "--src-field", "korean", "--tgt-field", "english", "--clean-glosses",
                "--policy", "leaked_pair=drop", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["policy"]["leaked_pair"] == "drop"
    assert data["control"] == {"file": str(control), "sha256": data["control"]["sha256"], "pairs": 1, "dropped": 1}
    assert "control/leaked_pair: 1 [drop]" in proc.stdout


def test_cli_train_only(tmp_path):
    train = lexicon(tmp_path, "train.json", TRAIN)
    proc = _cli(train.path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no findings" in proc.stdout and "wrote" not in proc.stdout
