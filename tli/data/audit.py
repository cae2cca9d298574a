"""Lexicon audit: duplicates inside a split, leakage between training and control sets, multi-word, overlong and
special-token entries.

Each check has a policy (`AuditConfig`, the one definition of the checks and their defaults): `error` (stop), `warn`
(report, keep), `drop` (report, remove) or `ignore`. Strings are compared case-folded after NFC normalisation. Drops
keep the first occurrence inside a split and remove leaked pairs from the control set (the training set is what the
model sees; the control set must stay unseen). A check is a function `(lexicon(s), ...) -> (findings, indices)`;
`audit` runs them in order, each on what the previous ones kept, and logs the warnings the caller has not seen yet.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

from tli.data import checks
from tli.data.checks import MAX_WORD_CHARS, Finding
from tli.data.lexicon import Lexicon
from tli.errors import ConfigError, DataError, TLIError
from tli.io import atomic_write_json

log = logging.getLogger(__name__)

POLICIES = ("error", "warn", "drop", "ignore")
MAX_LOGGED = 5  # findings of one kind logged one by one; audit.json has them all


@dataclass
class AuditConfig:
    """`data.audit.<check>`: one of POLICIES per check. The one list of the checks (each a function of that name in
    tli.data.checks), in the order they run, with their defaults; the presets, the CLI and the summary derive theirs."""

    duplicate_pair: str = "drop"  # the same pair twice: pure redundancy
    duplicate_source: str = "warn"  # one source word, several targets: false negatives for in-batch training
    duplicate_target: str = "warn"
    long_word: str = "error"  # longer than data.max_word_chars: a broken entry (a gloss, a sentence), costly to embed
    multi_word: str = "warn"
    special_token: str = "warn"  # special-token text (`<bos>`, `<pad>`): the tokenizer reads it as a control token
    leaked_pair: str = "error"  # a control pair that is also trained on: the control set is no longer unseen
    leaked_word: str = "warn"  # a source or target word in both sets (the paper's control set has 6 such words)

    def __post_init__(self):
        check_policy(vars(self))


CHECKS = tuple(f.name for f in fields(AuditConfig))
DEFAULT_POLICY = {f.name: f.default for f in fields(AuditConfig)}


def check_policy(policy: dict[str, str] | None) -> dict[str, str]:
    """The defaults overridden by `policy`; a ConfigError names an unknown check or action and lists the valid ones."""
    merged = dict(DEFAULT_POLICY)
    for kind, action in (policy or {}).items():
        if kind not in DEFAULT_POLICY:
            raise ConfigError(f"data.audit.{kind}: unknown audit check; valid: {', '.join(CHECKS)}")
        if action not in POLICIES:
            raise ConfigError(f"data.audit.{kind}={action!r} is not one of {', '.join(POLICIES)}")
        merged[kind] = action
    return merged


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


# ---------------------------------------------------------------- running the checks


def _apply(lex: Lexicon, findings: list[Finding], drop: set[int], action: str, reason: str) -> Lexicon:
    for f in findings:
        f.action = action
    if action != "drop" or not drop:
        return lex
    kept = [p for i, p in enumerate(lex.pairs) if i not in drop]
    dropped = lex.dropped + [(lex.pairs[i], reason) for i in sorted(drop)]
    return replace(lex, pairs=kept, dropped=dropped)


def log_findings(findings: list[Finding], reported: set | None = None) -> None:
    """Log the `warn` and `drop` findings (MAX_LOGGED of each kind, then a count). A caller that audits the same
    lexicon twice (train.py evaluate=true) passes the same `reported` set to both audits to log each finding once."""
    reported = set() if reported is None else reported
    shown: dict[str, int] = defaultdict(int)
    for f in findings:
        key = (f.split, f.kind, f.file, tuple(f.where), f.detail)
        if f.action not in ("warn", "drop") or key in reported:
            continue
        reported.add(key)
        shown[f.kind] += 1
        if shown[f.kind] <= MAX_LOGGED:
            log.warning("lexicon audit: %s %s in %s (%s): %s [%s]", f.split, f.kind, f.file, ", ".join(f.where),
                        f.detail, f.action)
    for kind, n in shown.items():
        if n > MAX_LOGGED:
            log.warning("lexicon audit: %d more %s findings (all in the run's audit.json)", n - MAX_LOGGED, kind)


def _raise_errors(result: AuditResult) -> None:
    errors = [f for f in result.findings if f.action == "error"]
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


def audit(train: Lexicon, control: Lexicon | None = None, policy: dict[str, str] | None = None,
          max_word_chars: int = MAX_WORD_CHARS, tokenizer=None, reported: set | None = None) -> AuditResult:
    """Run every check, apply the policies, log the warnings (see log_findings for `reported`); raises DataError
    listing all `error` findings. With a `tokenizer`, special_token looks for its special tokens."""
    policy = check_policy(policy)
    options = {"long_word": {"max_word_chars": max_word_chars},
               "special_token": {"pattern": checks.special_pattern(tokenizer)}}
    run = {kind: partial(getattr(checks, kind), **options.get(kind, {})) for kind in CHECKS if policy[kind] != "ignore"}
    findings: list[Finding] = []
    cleaned: dict[str, Lexicon] = {}
    for split, lex in [("train", train)] + ([("control", control)] if control is not None else []):
        for kind, check in run.items():
            if kind not in checks.LEAKAGE:
                found, drop = check(lex, split)
                lex = _apply(lex, found, drop, policy[kind], kind)
                findings += found
        cleaned[split] = lex
    for kind, check in run.items():
        if kind in checks.LEAKAGE and control is not None:
            found, drop = check(cleaned["train"], cleaned["control"])
            cleaned["control"] = _apply(cleaned["control"], found, drop, policy[kind], kind)
            findings += found
    result = AuditResult(cleaned["train"], cleaned.get("control"), findings, policy)
    log_findings(findings, reported)
    _raise_errors(result)
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
                        help=f"checks (default action): {', '.join(f'{k}={v}' for k, v in DEFAULT_POLICY.items())}; "
                        f"actions: {', '.join(POLICIES)}")
    args = parser.parse_args(argv)
    bad = [item for item in args.policy if "=" not in item]
    if bad:
        parser.error(f"--policy takes CHECK=ACTION items, got {bad}")
    policy = dict(item.split("=", 1) for item in args.policy)
    read = dict(src_field=args.src_field, tgt_field=args.tgt_field, clean_glosses=args.clean_glosses)
    try:
        control = read_lexicon(args.control, **read) if args.control else None
        result = audit(read_lexicon(args.train, **read), control, policy)
    except TLIError as err:  # a bad file, policy or failed audit: the message, not a traceback
        raise SystemExit(f"error: {err}") from None
    print(format_audit(result))
    if args.out:
        print(f"wrote {write_audit(result, args.out)}")


if __name__ == "__main__":
    main()
