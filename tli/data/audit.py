"""Lexicon audit: duplicates inside a split, leakage between training and control sets, multi-word entries.

Each kind of finding has a policy: `error` (stop), `warn` (report, keep), `drop` (report, remove) or `ignore`.
Strings are compared case-folded after NFC normalisation. Drops keep the first occurrence inside a split and remove
leaked pairs from the control set (the training set is what the model sees; the control set must stay unseen).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tli.data.lexicon import Lexicon
from tli.errors import DataError
from tli.io import atomic_write_json

log = logging.getLogger(__name__)

POLICIES = ("error", "warn", "drop", "ignore")
DEFAULT_POLICY = {
    "duplicate_pair": "drop",  # the same pair twice: pure redundancy
    "duplicate_source": "warn",  # one source word, several targets: false negatives for in-batch training
    "duplicate_target": "warn",
    "leaked_pair": "error",  # a control pair that is also trained on: the control set is no longer unseen
    "leaked_word": "warn",  # a source or target word in both sets (the paper's control set has 6 such words)
    "multi_word": "warn",
    "long_word": "error",  # longer than max_word_chars: a broken entry (a gloss, a sentence), and costly to embed
}
MAX_WORD_CHARS = 100
MAX_LOGGED = 5  # findings of one kind logged one by one; audit.json has them all
_REPORTED: set = set()



@dataclass
class Finding:
    kind: str
    split: str
    file: str
    detail: str
    where: list[str]
    action: str = ""


@dataclass
class AuditResult:
    train: Lexicon
    control: Lexicon | None
    findings: list[Finding] = field(default_factory=list)
    policy: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for f in self.findings:
            out[f"{f.split}/{f.kind}"] += 1
        return dict(out)

    def info(self) -> dict:
        """File, hash and size of each split: provenance for summaries and sidecars."""
        return {split: {"file": str(lex.path), "sha256": lex.sha256, "pairs": len(lex)}
                for split, lex in (("train", self.train), ("control", self.control)) if lex is not None}

    def to_dict(self) -> dict:
        def lex(x: Lexicon | None):
            if x is None:
                return None
            return {"file": str(x.path), "sha256": x.sha256, "pairs": len(x), "dropped": len(x.dropped)}

        return {
            "policy": self.policy,
            "train": lex(self.train),
            "control": lex(self.control),
            "counts": self.counts(),
            "findings": [asdict(f) for f in self.findings],
        }


def check_policy(policy: dict[str, str] | None) -> dict[str, str]:
    merged = dict(DEFAULT_POLICY)
    for kind, action in (policy or {}).items():
        if kind not in DEFAULT_POLICY:
            raise DataError(f"data.audit.{kind}: unknown audit check; valid: {', '.join(DEFAULT_POLICY)}")
        if action not in POLICIES:
            raise DataError(f"data.audit.{kind}={action!r} is not one of {', '.join(POLICIES)}")
        merged[kind] = action
    return merged


def _key(s: str) -> str:
    return s.casefold()


def _duplicates(lex: Lexicon, split: str, kind: str, key) -> tuple[list[Finding], set[int]]:
    """Findings for pairs sharing `key(pair)`, and the indices of the repeats (all but the first)."""
    groups: dict[object, list[int]] = defaultdict(list)
    for i, p in enumerate(lex.pairs):
        groups[key(p)].append(i)
    findings, repeats = [], set()
    for k, idx in groups.items():
        if len(idx) > 1:
            pairs = ", ".join(f"{lex.pairs[i].source!r}->{lex.pairs[i].target!r}" for i in idx)
            findings.append(Finding(kind, split, str(lex.path), f"{k!r} appears {len(idx)} times: {pairs}",
                                    [lex.pairs[i].where for i in idx]))
            repeats.update(idx[1:])
    return findings, repeats


def _apply(lex: Lexicon, findings: list[Finding], drop: set[int], action: str, reason: str) -> Lexicon:
    for f in findings:
        f.action = action
    if action != "drop" or not drop:
        return lex
    kept = [p for i, p in enumerate(lex.pairs) if i not in drop]
    dropped = lex.dropped + [(lex.pairs[i], reason) for i in sorted(drop)]
    return replace(lex, pairs=kept, dropped=dropped)


def audit(train: Lexicon, control: Lexicon | None = None, policy: dict[str, str] | None = None,
          max_word_chars: int = MAX_WORD_CHARS) -> AuditResult:
    """Run every check, apply the policies; raises DataError listing all `error` findings."""
    policy = check_policy(policy)
    result = AuditResult(train, control, policy=policy)
    splits = [("train", train)] + ([("control", control)] if control is not None else [])
    cleaned: dict[str, Lexicon] = {}
    for split, lex in splits:
        checks = [
            ("duplicate_pair", lambda p: (_key(p.source), _key(p.target))),
            ("duplicate_source", lambda p: _key(p.source)),
            ("duplicate_target", lambda p: _key(p.target)),
        ]
        for kind, key in checks:
            if policy[kind] == "ignore":
                continue
            found, repeats = _duplicates(lex, split, kind, key)
            lex = _apply(lex, found, repeats, policy[kind], kind)
            result.findings += found
        if policy["long_word"] != "ignore":
            long = {i for i, p in enumerate(lex.pairs) if max(len(p.source), len(p.target)) > max_word_chars}
            found = [Finding("long_word", split, str(lex.path), f"{lex.pairs[i].source[:40]!r}->"
                             f"{lex.pairs[i].target[:40]!r} is longer than {max_word_chars} characters "
                             "(data.max_word_chars)", [lex.pairs[i].where]) for i in sorted(long)]
            lex = _apply(lex, found, long, policy["long_word"], "long_word")
            result.findings += found
        if policy["multi_word"] != "ignore":
            multi = {i for i, p in enumerate(lex.pairs) if " " in p.source or " " in p.target}
            found = [Finding("multi_word", split, str(lex.path), f"{lex.pairs[i].source!r}->{lex.pairs[i].target!r}",
                             [lex.pairs[i].where]) for i in sorted(multi)]
            lex = _apply(lex, found, multi, policy["multi_word"], "multi_word")
            result.findings += found
        cleaned[split] = lex
    if control is not None:
        tr, co = cleaned["train"], cleaned["control"]
        train_pairs = {(_key(p.source), _key(p.target)) for p in tr.pairs}
        train_src, train_tgt = {_key(p.source) for p in tr.pairs}, {_key(p.target) for p in tr.pairs}
        leaked = {i for i, p in enumerate(co.pairs) if (_key(p.source), _key(p.target)) in train_pairs}
        found = [Finding("leaked_pair", "control", str(co.path), f"{co.pairs[i].source!r}->{co.pairs[i].target!r} "
                         f"is also in the training set {tr.path}", [co.pairs[i].where]) for i in sorted(leaked)]
        if policy["leaked_pair"] != "ignore":
            co = _apply(co, found, leaked, policy["leaked_pair"], "leaked_pair")
            result.findings += found
        words = {}
        for i, p in enumerate(co.pairs):
            shared = [w for w, pool in ((p.source, train_src), (p.target, train_tgt)) if _key(w) in pool]
            if shared and (_key(p.source), _key(p.target)) not in train_pairs:
                words[i] = shared
        found = [Finding("leaked_word", "control", str(co.path), f"{co.pairs[i].source!r}->{co.pairs[i].target!r} "
                         f"shares {words[i]} with the training set", [co.pairs[i].where]) for i in sorted(words)]
        if policy["leaked_word"] != "ignore":
            co = _apply(co, found, set(words), policy["leaked_word"], "leaked_word")
            result.findings += found
        cleaned["control"] = co
    result.train, result.control = cleaned["train"], cleaned.get("control")
    errors = [f for f in result.findings if f.action == "error"]
    shown: dict[str, int] = defaultdict(int)
    for f in result.findings:
        key = (f.split, f.kind, f.file, tuple(f.where), f.detail)
        if f.action not in ("warn", "drop") or key in _REPORTED:
            continue  # a lexicon audited twice in one process (train.py evaluate=true) is reported once
        _REPORTED.add(key)
        shown[f.kind] += 1
        if shown[f.kind] <= MAX_LOGGED:
            log.warning("lexicon audit: %s %s in %s (%s): %s [%s]", f.split, f.kind, f.file, ", ".join(f.where),
                        f.detail, f.action)
    for kind, n in shown.items():
        if n > MAX_LOGGED:
            log.warning("lexicon audit: %d more %s findings (all in the run's audit.json)", n - MAX_LOGGED, kind)
    if errors:
        lines = "\n".join(f"  {f.kind} in {f.file} ({', '.join(f.where)}): {f.detail}" for f in errors[:20])
        kinds = sorted({f.kind for f in errors})
        raise DataError(
            f"lexicon audit failed with {len(errors)} finding(s):\n{lines}\n"
            f"Fix the files, or set data.audit.<check>=warn|drop for {', '.join(kinds)}."
        )
    for split, lex in (("train", result.train), ("control", result.control)):
        if lex is not None and not lex.pairs:
            raise DataError(f"{lex.path}: no pairs left in the {split} set after the audit dropped entries")
    return result


def format_audit(result: AuditResult) -> str:
    """A short human-readable summary."""
    lines = []
    for split, lex in (("train", result.train), ("control", result.control)):
        if lex is not None:
            lines.append(f"{split}: {lex.path} ({len(lex)} pairs kept, {len(lex.dropped)} dropped)")
    counts = result.counts()
    lines += [f"  {k}: {v} [{result.policy[k.split('/')[1]]}]" for k, v in sorted(counts.items())]
    if not counts:
        lines.append("  no findings")
    return "\n".join(lines)


def write_audit(result: AuditResult, path: str | Path) -> Path:
    return atomic_write_json(path, result.to_dict())


def main(argv: list[str] | None = None) -> None:
    import argparse

    from tli.data.lexicon import read_lexicon

    parser = argparse.ArgumentParser(prog="python -m tli.data.audit",
                                     description="Audit a training (and control) lexicon.")
    parser.add_argument("train")
    parser.add_argument("control", nargs="?")
    parser.add_argument("--src-field", default="swahili")
    parser.add_argument("--tgt-field", default="english")
    parser.add_argument("--clean-glosses", action="store_true")
    parser.add_argument("--out", help="write the audit as JSON here")
    parser.add_argument("--policy", nargs="*", default=[], metavar="CHECK=ACTION",
                        help=f"checks: {', '.join(DEFAULT_POLICY)}; actions: {', '.join(POLICIES)}")
    args = parser.parse_args(argv)
    bad = [item for item in args.policy if "=" not in item]
    if bad:
        parser.error(f"--policy takes CHECK=ACTION items, got {bad}")
    policy = dict(item.split("=", 1) for item in args.policy)
    read = dict(src_field=args.src_field, tgt_field=args.tgt_field, clean_glosses=args.clean_glosses)
    try:
        control = read_lexicon(args.control, **read) if args.control else None
        result = audit(read_lexicon(args.train, **read), control, policy)
    except DataError as err:  # a bad file or a failed audit: the message, not a traceback
        raise SystemExit(f"error: {err}") from None
    print(format_audit(result))
    if args.out:
        print(f"wrote {write_audit(result, args.out)}")


if __name__ == "__main__":
    main()
