"""Representation alignment on the words a cross-fitted adapter never saw: its "unseen" split, and the pool of every
adapter's unseen pairs.

An adapter trained with `data.crossfit=K data.fold=f` held out fold f of the training lexicon (`tli.eval.pooled`).
Its "unseen" split is that fold's training pairs, scored like the control split: every metric before and after, raw
and centred (each language's mean over all the training words of that model state, as for every split), and the
per-pair scores (`tli.eval.metrics.PAIR_SCORES`). Pool-matched retrieval draws its pools inside the fold.

`pooled_alignment` pools a recipe's adapters: per reported layer, vector variant and per-pair score, `stratified_paired`
over (fold, seed) strata of eval/pairs.csv's "unseen" rows, so every training pair is scored once per seed by the
adapter that never saw it (the representation counterpart of `tli.eval.pooled.pooled_translation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tli.data.lexicon import Pair
from tli.eval.evaluation import layer_scores
from tli.eval.metrics import PAIR_SCORES, MetricsConfig
from tli.eval.power import stratified_paired
from tli.eval.recipes import recipe_of
from tli.eval.vectors import SplitVectors

VARIANT_PREFIX = {"raw": "", "centred": "centred_"}  # eval/pairs.csv's column prefix of each vector variant


def fold_pairs(pairs: Sequence[Pair], words: dict[str, set[str]]) -> list[int]:
    """Indices of the training pairs in an adapter's held-out fold (`tli.eval.pooled.heldout_words`: its source
    words); [] for an adapter that was not cross-fitted."""
    return [i for i, p in enumerate(pairs) if words and p.source in words["forward"]]


def unseen_split(train: SplitVectors, pairs: list[int]) -> SplitVectors:
    """The training split's vectors restricted to the pairs `pairs` (indices into the training lexicon's pairs, the
    order `embed_split` gave them), over their own unique words."""
    gold, src_rows, tgt_rows = train.gold.subset(torch.tensor(pairs, dtype=torch.long))
    return SplitVectors(gold, train.src[src_rows], train.tgt[tgt_rows], train.layers, train.bos_norm_ratio)


def pooled_alignment(rows: Sequence[dict], by_recipe: bool, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """summary["unseen_alignment"]: {pool: {layer: {variant: {score: stratified_paired over (fold, seed)}}}} from
    eval/pairs.csv rows of split "unseen" (with `fold` and `seed`). The pool is the recipe (`recipe_of` the run) when
    `by_recipe`, else "crossfit" (every adapter of the evaluation)."""
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        if r["split"] == "unseen":
            pool = recipe_of(r["run"]) if by_recipe else "crossfit"
            cells.setdefault((pool, int(r["layer"])), {}).setdefault(f"fold {r['fold']} seed {r['seed']}", []).append(r)
    out: dict[str, Any] = {}
    for (pool, layer), strata in cells.items():
        for variant, prefix in VARIANT_PREFIX.items():
            for score in PAIR_SCORES:
                column = f"{prefix}{'cos' if score == 'cosine' else score}"
                if f"{column}_before" not in next(iter(strata.values()))[0]:
                    continue  # no centred columns without metrics.centre
                out.setdefault(pool, {}).setdefault(layer, {}).setdefault(variant, {})[score] = stratified_paired(
                    {k: ([float(r[f"{column}_before"]) for r in v], [float(r[f"{column}_after"]) for r in v])
                     for k, v in strata.items()}, n_boot=n_boot, seed=seed)
    return out


def with_unseen(scores: dict, vectors: dict[str, SplitVectors], held: list[int], layers: list[int],
                options: MetricsConfig) -> dict:
    """`scores` (`layer_scores` of one model state) plus the "unseen" split of the held-out fold's pairs `held`."""
    extra = layer_scores({"train": vectors["train"], "unseen": unseen_split(vectors["train"], held)}, layers, options,
                         only={"unseen"})
    return {variant: {**by, **extra.get(variant, {})} for variant, by in scores.items()}
