"""Cross-fitted behaviour: each adapter scores only the training-lexicon words it never saw, and the evaluation pools
them so that every word of the lexicon is scored once per seed and direction, as unseen.

An adapter trained with `data.crossfit=K data.fold=f seed=s` (its card's `split`) held out fold f of the training
lexicon (`tli.data.crossfit.fold_split`, connected components of pairs sharing a word). Its unseen queries are the
training-split queries whose word (the source in the forward direction, the target in the backward one) lies in
that fold; their rows are labelled split "unseen", with `fold` and `seed`. The control pairs are scored by every
adapter as before.

Pooled tests (`pooled_translation`), per split and direction, over the rows of every adapter (`tli.eval.power`):
- exact correctness: `stratified_mcnemar` with one stratum per (fold, seed) (the pooled exact conditional test and
  the Mantel-Haenszel statistic, the pooled accuracy change and its minimum detectable effect) and, per seed, the
  same over that seed's folds (disjoint words: a valid test on its own) with the sign of each seed's effect. Seeds
  re-score the same words, so the pooled test's n counts each word once per seed; read it with the per-seed tests
  and their sign agreement;
- graded scores (gold log-probability, chrF, first-token rank where present): `stratified_paired` in the same
  strata (pooled paired statistics with CIs, Wilcoxon p, per-stratum signs, MDE);
- the word as the unit (`word_clustered`, "by_word"): each word's accuracy change averaged over its scorings (its
  seeds; for the control words, every adapter), tested over words. Where one word flips in every adapter, the
  pooled tests count it once per adapter and this one once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tli.data.crossfit import fold_split
from tli.data.lexicon import Lexicon
from tli.eval.power import natural_key, seed_signs, stratified_mcnemar, stratified_paired, word_clustered

GRADED = ("gold_logprob", "chrf", "gold_rank")


def heldout_words(train: Lexicon, split: dict, seed: int | None) -> dict[str, set[str]]:
    """{"forward": source words, "backward": target words} of the fold an adapter never saw (its card's `split` and
    `seed`), or {} for an adapter that was not cross-fitted."""
    k = int(split.get("crossfit") or 0)
    if k < 2:
        return {}
    _, held = fold_split(train, k, int(split.get("fold", 0)), int(seed or 0))
    return {"forward": {p.source for p in held}, "backward": {p.target for p in held}}


def is_unseen(query, words: dict[str, set[str]], forward_label: str) -> bool:
    """Whether a training-split query asks for a word of the held-out fold."""
    side = "forward" if query.direction == forward_label else "backward"
    return query.split == "train" and query.source in words[side]


def scored_by(queries, words: dict[str, set[str]], forward_label: str) -> list[int]:
    """Indices of the queries an adapter scores: all of them, or for a cross-fitted adapter (`words` of its held-out
    fold) the control queries and the training-split queries of its fold only."""
    return [j for j, q in enumerate(queries) if not words or q.split != "train" or is_unseen(q, words, forward_label)]


def mark_rows(rows: Sequence[dict], fold, seed, unseen: bool) -> list[dict]:
    """Translation rows with their fold and seed; a cross-fitted adapter's training-lexicon words are "unseen"."""
    return [{**r, "split": "unseen" if unseen and r["split"] == "train" else r["split"], "fold": fold, "seed": seed}
            for r in rows]


def pooled_translation(rows: Sequence[dict], n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """{split: {direction: {"correct": stratified_mcnemar over (fold, seed) strata, "per_seed": {seed:
    stratified_mcnemar over its folds}, "seed_signs": seed_signs of the per-seed accuracy changes, "by_word":
    word_clustered over the query words, "accuracy_before" / "accuracy_after" (over all rows), "<graded>":
    stratified_paired}}} over eval/translation.csv rows of several adapters (those with a fold)."""
    cells: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        if r.get("fold") is not None:
            cells.setdefault(r["split"], {}).setdefault(r["direction"], []).append(r)
    out: dict[str, Any] = {}
    for split, by in cells.items():
        for direction, rs in by.items():
            strata = _strata(rs, lambda r: f"fold {r['fold']} seed {r['seed']}")
            by_seed = {}
            for s in sorted({r["seed"] for r in rs}, key=lambda s: natural_key(str(s))):
                own = [r for r in rs if r["seed"] == s]
                by_seed[f"seed {s}"] = stratified_mcnemar(_bools(_strata(own, lambda r: f"fold {r['fold']}")))
            cell = {"correct": stratified_mcnemar(_bools(strata)), "per_seed": by_seed,
                    "seed_signs": seed_signs({k: v["effect"] for k, v in by_seed.items()}),
                    "by_word": word_clustered([r["source"] for r in rs], [bool(r["correct_before"]) for r in rs],
                                              [bool(r["correct_after"]) for r in rs], seed=seed),
                    "accuracy_before": sum(bool(r["correct_before"]) for r in rs) / len(rs),
                    "accuracy_after": sum(bool(r["correct_after"]) for r in rs) / len(rs)}
            for score in GRADED:
                if all(r.get(f"{score}_before") is not None for r in rs):
                    cell[score] = stratified_paired({k: ([float(r[f"{score}_before"]) for r in v],
                                                         [float(r[f"{score}_after"]) for r in v])
                                                     for k, v in strata.items()}, n_boot=n_boot, seed=seed)
            out.setdefault(split, {})[direction] = cell
    return out


def _strata(rows: Sequence[dict], name) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(name(r), []).append(r)
    return out


def _bools(strata: dict[str, list[dict]]) -> dict[str, tuple[list[bool], list[bool]]]:
    return {k: ([bool(r["correct_before"]) for r in v], [bool(r["correct_after"]) for r in v])
            for k, v in strata.items()}
