"""Cross-fitting and the matched null, as pure functions of the training lexicon's pairs.

- `assign_folds` / `fold_split` (`data.crossfit=K`, `data.fold=f`): the pairs are cut into K folds by seed, every
  connected component (pairs linked by a shared source OR a shared target string) in one fold, so a held-out word
  is unseen in training, also through another of its translations. The evaluation recovers exactly which pairs an
  adapter never saw with `fold_split(train lexicon, K, fold, seed)` (the values the adapter card records).
- `derange` (`data.derange=true`): the training pairs' targets permuted by a seeded derangement: same words, same
  number of pairs, but no source keeps its own target (nor, where avoidable, any of its true translations).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from tli.data.lexicon import Lexicon, Pair
from tli.errors import ConfigError, DataError


def _pairs(lexicon_or_pairs) -> list[Pair]:
    return list(lexicon_or_pairs.pairs if isinstance(lexicon_or_pairs, Lexicon) else lexicon_or_pairs)


def components(pairs: list[Pair]) -> list[list[int]]:
    """The pairs' connected components (pair indices, ascending) under "shares a source or a target string", in
    order of their first pair."""
    parent = list(range(len(pairs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[bool, str], int] = {}
    for i, p in enumerate(pairs):
        for key in ((True, p.source), (False, p.target)):
            j = first.setdefault(key, i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(pairs)):
        groups[find(i)].append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def assign_folds(pairs, k: int, seed: int) -> list[int]:
    """The fold (0..k-1) of each pair: components shuffled by `seed`, then assigned largest first (a stable sort,
    so equal sizes keep the seeded order) to the currently smallest fold (the lowest-numbered among equals). Fold
    sizes then differ by at most the largest component's size. Raises DataError when there are fewer components
    than folds (a fold would be empty)."""
    pairs = _pairs(pairs)
    if k < 2:
        raise ConfigError(f"data.crossfit={k}: cross-fitting needs at least 2 folds")
    comps = components(pairs)
    if len(comps) < k:
        raise DataError(f"{len(pairs)} pairs form {len(comps)} group(s) of pairs sharing a word: too few for "
                        f"data.crossfit={k} folds (a fold would be empty)")
    random.Random(seed).shuffle(comps)
    comps.sort(key=len, reverse=True)
    sizes = [0] * k
    fold_of = [0] * len(pairs)
    for comp in comps:
        f = min(range(k), key=lambda j: (sizes[j], j))
        sizes[f] += len(comp)
        for i in comp:
            fold_of[i] = f
    return fold_of


def fold_split(lexicon_or_pairs, k: int, fold: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(pairs of the k-1 other folds, pairs of fold `fold`), each in lexicon order: what an adapter trained with
    `data.crossfit=k data.fold=fold seed=seed` on this (audited) training lexicon could see, and what it never saw."""
    if not 0 <= fold < k:
        raise ConfigError(f"data.fold={fold} must be in [0, data.crossfit={k})")
    pairs = _pairs(lexicon_or_pairs)
    fold_of = assign_folds(pairs, k, seed)
    return ([p for p, f in zip(pairs, fold_of, strict=True) if f != fold],
            [p for p, f in zip(pairs, fold_of, strict=True) if f == fold])


def derange(pairs, seed: int) -> list[Pair]:
    """The pairs with their targets permuted by a seeded derangement: pair i keeps its source (and `where`) and gets
    another pair's target; no pair keeps its own, and none gets a target that is a true translation of its source
    (any pair's with that source) unless no permutation avoids it. Same sources, same multiset of targets, same
    order. Fewer than 2 pairs: DataError."""
    pairs = _pairs(pairs)
    n = len(pairs)
    if n < 2:
        raise DataError(f"a derangement needs at least 2 pairs, got {n}")
    true = defaultdict(set)
    for p in pairs:
        true[p.source].add(p.target)
    rng = random.Random(seed)
    perm = list(range(n))
    while any(perm[i] == i for i in range(n)):  # a uniform random derangement (about e tries)
        rng.shuffle(perm)

    def bad(i: int, j: int) -> bool:  # pair i may not take pair j's target
        return i == j or pairs[j].target in true[pairs[i].source]

    for _ in range(3):  # repair: swap targets with a pair for which both sides become (or stay) fine
        conflicts = [i for i in range(n) if bad(i, perm[i])]
        if not conflicts:
            break
        for i in conflicts:
            if not bad(i, perm[i]):
                continue
            others = list(range(n))
            rng.shuffle(others)
            for j in others:
                if j != i and not bad(i, perm[j]) and not bad(j, perm[i]):
                    perm[i], perm[j] = perm[j], perm[i]
                    break
    return [replace(p, target=pairs[perm[i]].target) for i, p in enumerate(pairs)]
