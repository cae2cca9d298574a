"""`data.*`: which lexicon files a run uses, how to read them, the audit policy and how pairs are batched; and the
function that reads and audits them (bad files fail here, before any weights load)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tli.data.audit import MAX_WORD_CHARS, AuditConfig, AuditResult, audit
from tli.data.lexicon import read_lexicon
from tli.errors import ConfigError, DataError

MIN_PAIRS = 2  # a split needs a second pair for retrieval and the mismatched baseline


@dataclass
class DataConfig:
    """`data.*`; the files and fields come from a data preset (conf/data/) or the command line."""

    train_file: str
    src_field: str
    tgt_field: str
    control_file: str | None = None
    src_lang: str | None = None  # language names for reports and prompts (default: the field names)
    tgt_lang: str | None = None
    format: str = "auto"  # auto (by suffix) | json | jsonl | csv | tsv
    clean_glosses: bool = False  # "orange (fruit)" -> "orange", "soldier/police officer" -> "soldier"
    audit: AuditConfig = field(default_factory=AuditConfig)
    max_word_chars: int = MAX_WORD_CHARS  # longer words are a `long_word` audit finding (error by default)
    batch_size: int = 16  # pairs per training batch and per process (>= 2: in-batch negatives)
    val_fraction: float = 0.1  # validation pairs carved from the training lexicon by seed
    num_workers: int = 0
    crossfit: int = 0  # K folds of the training lexicon (tli.data.crossfit); 0: off. Trains on all folds but one
    fold: int = 0  # with crossfit: the held-out fold (never trained on nor validated on), 0..K-1
    derange: bool = False  # the matched null: training targets permuted by a seeded derangement (validation: true)

    def __post_init__(self):
        if self.src_field == self.tgt_field:
            raise ConfigError(f"data.src_field and data.tgt_field are both {self.src_field!r}: a word would be "
                              "paired with itself; name the two languages' fields")
        if self.batch_size < 2:
            raise ConfigError(f"data.batch_size={self.batch_size} must be >= 2: in-batch negatives need a second pair")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        if self.max_word_chars < 1:
            raise ConfigError(f"data.max_word_chars={self.max_word_chars} must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.crossfit == 1 or self.crossfit < 0:
            raise ConfigError(f"data.crossfit={self.crossfit} must be 0 (off) or a number of folds >= 2")
        if self.crossfit and not 0 <= self.fold < self.crossfit:
            raise ConfigError(f"data.fold={self.fold} must be in [0, data.crossfit={self.crossfit})")
        if not self.crossfit and self.fold != 0:
            raise ConfigError(f"data.fold={self.fold} needs cross-fitting: set data.crossfit (the number of folds)")


__all__ = ["MIN_PAIRS", "AuditConfig", "DataConfig", "load_lexicons"]  # AuditConfig: tli.data.audit's


def load_lexicons(data: DataConfig, with_control: bool = True, tokenizer=None,
                  reported: set | None = None) -> AuditResult:
    """Read the training (and control) lexicon named by `data` and audit them with its policy (`tokenizer` and
    `reported`: see tli.data.audit.audit)."""
    read = dict(src_field=data.src_field, tgt_field=data.tgt_field, fmt=data.format,
                clean_glosses=data.clean_glosses, src_lang=data.src_lang, tgt_lang=data.tgt_lang)
    train = read_lexicon(data.train_file, **read)
    control = read_lexicon(data.control_file, **read) if with_control and data.control_file else None
    result = audit(train, control, vars(data.audit), max_word_chars=data.max_word_chars, tokenizer=tokenizer,
                   reported=reported)
    for split, lex in (("train", result.train), ("control", result.control)):
        if lex is not None and len(lex) < MIN_PAIRS:
            raise DataError(f"{lex.path}: the {split} set has {len(lex)} pair(s) after the audit; retrieval and the "
                            f"mismatched baseline need at least {MIN_PAIRS}")
    return result
