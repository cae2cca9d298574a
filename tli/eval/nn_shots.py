"""Nearest-neighbour shots: the strongest prompt-only baseline, free (no training).

For each translation query, the k shots are the pairs of a pool whose query-side word is most similar to the query
word in the base model's own representation: the pooled word vectors at the probe's target index, centred by the
mean vector of that language's words in the evaluation, cosine similarity. The pool is the pairs the scoring adapter
was trained on: the training lexicon, minus the held-out fold for a cross-fitted adapter (so never the query's fold),
and never a pair sharing a (normalised) string with the query's word or its translations, nor a string with an
earlier shot. Shots are ordered by ascending similarity: the most similar sits right before the query. The base
model with these prompts, against the base model with the seeded random shots, is the null "nn_shots": the same
queries, scored like an adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import torch

from tli.data.lexicon import Pair
from tli.eval.translation import Query, answer_key, format_prompt
from tli.eval.vectors import SplitVectors


def word_vectors(vectors: dict[str, SplitVectors], layer: int) -> dict[str, dict[str, torch.Tensor]]:
    """{"src": {word: (D,)}, "tgt": {word: (D,)}} at hidden-state index `layer`, each language centred by the mean of
    its words over the evaluated splits, then L2-normalised."""
    out: dict[str, dict[str, torch.Tensor]] = {"src": {}, "tgt": {}}
    for v in vectors.values():
        slot = v.layers.index(layer)
        for side, keys, mat in (("src", v.gold.src_keys, v.src), ("tgt", v.gold.tgt_keys, v.tgt)):
            out[side].update(zip(keys, mat[:, slot], strict=True))
    for side, words in out.items():
        if words:
            stack = torch.stack(list(words.values())).float()  # (N, D)
            centred = torch.nn.functional.normalize(stack - stack.mean(0, keepdim=True), dim=-1)
            out[side] = dict(zip(words, centred, strict=True))
    return out


def nn_queries(queries: Sequence[Query], pool: Sequence[Pair], vecs: dict[str, dict[str, torch.Tensor]],
               forward: str, langs: tuple[str, str], k: int) -> list[Query]:
    """The same queries with their shots replaced by the k nearest pairs of `pool` (rule in the module docstring).
    `forward`: the forward direction's label; `langs`: (source language, target language) names."""
    out = []
    for q in queries:
        fwd = q.direction == forward
        q_side, a_side = ("src", "tgt") if fwd else ("tgt", "src")
        q_lang, a_lang = langs if fwd else langs[::-1]
        fold_q, fold_a = partial(answer_key, lang=q_lang), partial(answer_key, lang=a_lang)
        cands = [(p.source, p.target) if fwd else (p.target, p.source) for p in pool]
        cands = [c for c in cands if c[0] in vecs[q_side]]
        query_vec = vecs[q_side].get(q.source)
        if query_vec is None or not cands:
            out.append(q)
            continue
        sims = torch.stack([vecs[q_side][c[0]] for c in cands]) @ query_vec  # (n_cands,)
        used_q, used_a = {fold_q(q.source)}, {fold_a(t) for t in q.targets}
        shots: list[tuple[str, str]] = []
        for i in torch.argsort(sims, descending=True).tolist():
            cq, ca = cands[i]
            if fold_q(cq) in used_q or fold_a(ca) in used_a:
                continue
            shots.append((cq, ca))
            used_q.add(fold_q(cq))
            used_a.add(fold_a(ca))
            if len(shots) == k:
                break
        shots = shots[::-1]  # ascending similarity: the nearest right before the query
        out.append(replace(q, shots=tuple(shots), prompt=format_prompt(shots, q.source, q_lang, a_lang)))
    return out


def nn_shots_rows(base, tokenizer, queries: Sequence[Query], before_rows: Sequence[dict], train, cards, unseen,
                  vecs, forward: str, opts) -> list[dict]:
    """translation.csv rows of the null "nn_shots": the bare base model with nearest-neighbour shots against the same
    model with the random shots (`before_rows`, one per query), on the queries each adapter scores (per fold and
    seed for cross-fitted adapters, whose shot pool excludes the held-out fold; once otherwise)."""
    from tli.data.crossfit import fold_split
    from tli.eval.behaviour import behaviour
    from tli.eval.pooled import mark_rows, scored_by
    from tli.eval.translation import before_after_rows

    rows, done = [], set()
    for card, words in zip(cards, unseen, strict=True):
        stratum = {"fold": card.split.get("fold") if words else None, "seed": card.seed if words else None}
        if tuple(stratum.values()) in done:
            continue
        done.add(tuple(stratum.values()))
        pool = fold_split(train, card.split["crossfit"], stratum["fold"], card.seed)[0] if words else train.pairs
        keep = scored_by(queries, words, forward)
        shot = nn_queries([queries[j] for j in keep], pool, vecs, forward, (train.src_lang, train.tgt_lang),
                          opts.shots)
        after = behaviour(base, tokenizer, shot, {}, opts)["translation"]
        mark = partial(mark_rows, **stratum, unseen=bool(words))
        rows += [{"run": "nn_shots", **r} for r in before_after_rows(mark([before_rows[j] for j in keep]), mark(after))]
    return rows
