"""A run's pairs, split: training, validation (`data.val_fraction`, by source word) and, with `data.crossfit`, the
held-out fold; with `data.derange`, the training pairs deranged. Pure functions, no Lightning: the evaluation and the
intervention fit recover a run's exact split without importing the training stack."""

from __future__ import annotations

import random

from tli.data.config import DataConfig
from tli.data.crossfit import derange, fold_split
from tli.data.lexicon import Lexicon, Pair
from tli.errors import ConfigError, DataError

MIN_VAL_PAIRS = 5  # fewer validation pairs give degenerate retrieval figures (1 pair: MRR 1.0, no baseline)


def split_validation(lexicon: Lexicon | list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Carve a validation split from the training pairs by seed; all pairs of one source word stay together."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"data.val_fraction={fraction} must be in [0, 1)")
    pairs = lexicon.pairs if isinstance(lexicon, Lexicon) else list(lexicon)
    sources = sorted({p.source for p in pairs})
    random.Random(seed).shuffle(sources)
    val_sources = set(sources[: round(fraction * len(sources))])
    train = [p for p in pairs if p.source not in val_sources]
    val = [p for p in pairs if p.source in val_sources]
    return train, val


def split_pairs(lexicon: Lexicon, data: DataConfig, seed: int) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(training pairs, validation pairs, held-out pairs) of a run: with `data.crossfit` the held-out fold is cut
    first (tli.data.crossfit.fold_split) and validation is carved from the other folds; with `data.derange` the
    training pairs (never the validation pairs) then get deranged targets."""
    kept, heldout = (fold_split(lexicon, data.crossfit, data.fold, seed) if data.crossfit else (lexicon.pairs, []))
    train, val = split_validation(kept, data.val_fraction, seed)
    if data.derange:
        if len(train) < 2:
            raise DataError(f"{lexicon.path}: data.derange needs at least 2 training pairs, got {len(train)}")
        train = derange(train, seed)
    return train, val, heldout
