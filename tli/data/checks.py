"""The audit's checks: each a function `(lexicon(s), ...) -> (findings, indices of the pairs a drop removes)`.

Strings are compared case-folded after NFC normalisation (lexicons are NFC-normalised when read). The policy that
decides what happens to the findings, and the order the checks run in, are tli.data.audit's.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from tli.data.lexicon import Lexicon, Pair

MAX_WORD_CHARS = 100
LEAKAGE = ("leaked_pair", "leaked_word")  # checks of the control set against the training set; the others: one split
# special-token text when no tokenizer is given: <bos> <eos> <pad> <unk> <mask> <sep> <cls>, <s> </s>, <|...|>
COMMON_SPECIAL = re.compile(r"<\|[^<>|]*\|>|</?s>|<(?:bos|eos|pad|unk|mask|sep|cls)>", re.IGNORECASE)


@dataclass
class Finding:
    kind: str
    split: str
    file: str
    detail: str
    where: list[str]
    action: str = ""


Found = tuple[list[Finding], set[int]]  # a check's findings, and the indices of the pairs `drop` removes


def _key(s: str) -> str:
    return s.casefold()


def _shown(p: Pair) -> str:
    return f"{p.source!r}->{p.target!r}"


def _each(lex: Lexicon, split: str, kind: str, hits: dict[int, str]) -> Found:
    """One finding per pair index in `hits` (index -> detail)."""
    return [Finding(kind, split, str(lex.path), hits[i], [lex.pairs[i].where]) for i in sorted(hits)], set(hits)


# ---------------------------------------------------------------- checks inside one split


def _duplicates(lex: Lexicon, split: str, kind: str, key) -> Found:
    """Findings for pairs sharing `key(pair)`, and the indices of the repeats (all but the first)."""
    groups: dict[object, list[int]] = defaultdict(list)
    for i, p in enumerate(lex.pairs):
        groups[key(p)].append(i)
    findings, repeats = [], set()
    for k, idx in groups.items():
        if len(idx) > 1:
            pairs = ", ".join(_shown(lex.pairs[i]) for i in idx)
            findings.append(Finding(kind, split, str(lex.path), f"{k!r} appears {len(idx)} times: {pairs}",
                                    [lex.pairs[i].where for i in idx]))
            repeats.update(idx[1:])
    return findings, repeats


def duplicate_pair(lex: Lexicon, split: str) -> Found:
    return _duplicates(lex, split, "duplicate_pair", lambda p: (_key(p.source), _key(p.target)))


def duplicate_source(lex: Lexicon, split: str) -> Found:
    return _duplicates(lex, split, "duplicate_source", lambda p: _key(p.source))


def duplicate_target(lex: Lexicon, split: str) -> Found:
    return _duplicates(lex, split, "duplicate_target", lambda p: _key(p.target))


def long_word(lex: Lexicon, split: str, max_word_chars: int = MAX_WORD_CHARS) -> Found:
    return _each(lex, split, "long_word", {
        i: f"{p.source[:40]!r}->{p.target[:40]!r} is longer than {max_word_chars} characters (data.max_word_chars)"
        for i, p in enumerate(lex.pairs) if max(len(p.source), len(p.target)) > max_word_chars})


def multi_word(lex: Lexicon, split: str) -> Found:
    return _each(lex, split, "multi_word", {i: _shown(p) for i, p in enumerate(lex.pairs)
                                            if " " in p.source or " " in p.target})


def special_pattern(tokenizer=None) -> re.Pattern:
    """What special-token text looks like: the tokenizer's special and added special tokens, or COMMON_SPECIAL."""
    if tokenizer is None:
        return COMMON_SPECIAL
    texts = set(getattr(tokenizer, "all_special_tokens", []))
    texts |= {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    texts = sorted((t for t in texts if t), key=len, reverse=True)  # the longest match first
    return re.compile("|".join(map(re.escape, texts))) if texts else re.compile(r"(?!)")


def special_token(lex: Lexicon, split: str, pattern: re.Pattern = COMMON_SPECIAL) -> Found:
    hits = {}
    for i, p in enumerate(lex.pairs):
        found = sorted({m.group() for w in (p.source, p.target) for m in pattern.finditer(w)})
        if found:
            hits[i] = f"{_shown(p)} contains special-token text {found}: the tokenizer reads it as a control token"
    return _each(lex, split, "special_token", hits)


# ---------------------------------------------------------------- leakage from the training into the control set


def _pair_keys(lex: Lexicon) -> set[tuple[str, str]]:
    return {(_key(p.source), _key(p.target)) for p in lex.pairs}


def leaked_pair(train: Lexicon, control: Lexicon) -> Found:
    pairs = _pair_keys(train)
    return _each(control, "control", "leaked_pair", {
        i: f"{_shown(p)} is also in the training set {train.path}" for i, p in enumerate(control.pairs)
        if (_key(p.source), _key(p.target)) in pairs})


def leaked_word(train: Lexicon, control: Lexicon) -> Found:
    """Control pairs sharing a source or target word with the training set (leaked pairs are leaked_pair's)."""
    pairs = _pair_keys(train)
    sources, targets = {_key(p.source) for p in train.pairs}, {_key(p.target) for p in train.pairs}
    hits = {}
    for i, p in enumerate(control.pairs):
        shared = [w for w, pool in ((p.source, sources), (p.target, targets)) if _key(w) in pool]
        if shared and (_key(p.source), _key(p.target)) not in pairs:
            hits[i] = f"{_shown(p)} shares {shared} with the training set"
    return _each(control, "control", "leaked_word", hits)
