"""Fit an intervention on a run's training pairs and choose its alpha on the validation pairs, within the harm budget.

The pairs are cut as a training run with the same `data.*` and `seed` would cut them (`tli.data.datamodule.
split_pairs`): with `data.crossfit` the held-out fold is never touched; the validation pairs (`data.val_fraction`)
choose alpha; the map is fitted on the rest, with their targets deranged for the matched null (`intervention.fit_on=
deranged` or `data.derange=true`, `tli.data.crossfit.derange`). Word vectors: `embed_words` at the map's indices with
the probe's pooling (`model.pooling`, `model.template`), L2-normalised, on the base model in `model.quantization`.

Alpha (`intervention.alphas`, 0 always included and both signs tried) is chosen on the validation pairs' forward
translation prompts (shots from the fitted pairs' true translations, never control pairs): `select_on=gold_logprob`
(default) the mean gold log-probability of their translations (`tli.eval.graded.score_gold`), `accuracy` exact-match
accuracy then the gold log-probability. An alpha qualifies only if the NLL of validation text, the base model's own
samples in the source language (`tli.eval.base_text`, never the evaluation's held-out sentences), with the
intervention on every source-language token, rose by at most `objective.max_harm` (relative) over alpha = 0. Ties go
to the smaller |alpha|; alpha = 0 (the base model) always qualifies. Every alpha's row is kept on the card.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

from tli.data.crossfit import derange
from tli.data.lexicon import Lexicon, Pair
from tli.data.splits import MIN_VAL_PAIRS, split_pairs
from tli.errors import ConfigError, DataError
from tli.eval.translation import Query, ShotsError, build_queries
from tli.intervention.artifact import InterventionCard
from tli.intervention.hooks import intervened
from tli.intervention.maps import Intervention, fit_tensors
from tli.intervention.positions import for_queries, for_sentences
from tli.model.embed import Probe, embed_words

log = logging.getLogger(__name__)


@dataclass
class FitPlan:
    """What fitting needs, checked before any weights load (`plan_fit`)."""

    fit_pairs: list[Pair]  # the pairs the map is fitted on (deranged targets for the null)
    val_queries: list[Query]  # the validation pairs' forward prompts (alpha is chosen on them)
    layers: list[int]
    probe: Probe
    card: InterventionCard  # the card without the fitted values (alpha, table), for the plan's checks
    n_val_pairs: int
    harm_written: list[str] = field(default_factory=list)  # written source-language harm text, read and checked


def plan_fit(cfg, lexicons, base_card: InterventionCard, n_layers: int) -> FitPlan:
    """Cut the pairs, build the validation prompts and the card skeleton; every impossible setting fails here."""
    iv, data, lexicon = cfg.intervention, cfg.data, lexicons.train
    probe = cfg.model.probe()
    layers = iv.resolve_layers(probe.target_layer, n_layers)
    if n_layers in layers and iv.position == "query":
        log.warning("intervention at index %d (the final norm's output, read only by the LM head) on the query word: "
                    "no later position sees it, so translation answers cannot change there; the held-out loss and "
                    "the vectors still do", n_layers)
    deranged = bool(data.derange or iv.fit_on == "deranged")
    train, val, _ = split_pairs(lexicon, replace(data, derange=False), cfg.seed)
    where = f"{lexicon.path} with data.val_fraction={data.val_fraction}" + (
        f", fold {data.fold} of data.crossfit={data.crossfit} held out" if data.crossfit else "")
    if len(train) < 2:
        raise DataError(f"{where} leaves {len(train)} pair(s) to fit the intervention on: at least 2 are needed")
    if len(val) < MIN_VAL_PAIRS:
        raise DataError(f"{where} leaves {len(val)} validation pair(s): intervention alpha is chosen on them and "
                        f"needs at least {MIN_VAL_PAIRS}; raise data.val_fraction")
    fit_pairs = derange(train, cfg.seed) if deranged else train  # exactly split_pairs' derangement
    splits = {"val": Lexicon(lexicon.path, val, lexicon.src_lang, lexicon.tgt_lang),
              "shots": Lexicon(lexicon.path, train, lexicon.src_lang, lexicon.tgt_lang)}
    try:
        queries = build_queries(splits, k=cfg.eval.shots, seed=cfg.seed, directions=("forward",))
    except ShotsError as err:
        raise ConfigError(f"eval.shots={cfg.eval.shots} (intervention validation prompts): {err}") from err
    split = {"crossfit": data.crossfit, "fold": data.fold, "derange": deranged, "val_fraction": data.val_fraction}
    card = base_card.with_updates(split=split, intervention={**iv.settings(), "layers": layers, "alpha": 0.0})
    return FitPlan(fit_pairs, [q for q in queries if q.split == "val"], layers, probe, card, len(val),
                   written_harm_text(cfg, lexicon.src_lang))


def fit_map(base, tokenizer, plan: FitPlan, cfg) -> tuple[Intervention, dict]:
    """The fitted tensors (alpha 0) and the fit's timings: embedding the pairs' words, then the closed-form solve."""
    iv = cfg.intervention
    start = time.perf_counter()
    words = sorted({p.source for p in plan.fit_pairs} | {p.target for p in plan.fit_pairs})
    srcs = sorted({p.source for p in plan.fit_pairs})
    src_emb = embed_words(base, tokenizer, srcs, plan.probe, layers=plan.layers, batch_size=cfg.eval.batch_size)
    tgts = sorted({p.target for p in plan.fit_pairs})
    tgt_emb = embed_words(base, tokenizer, tgts, plan.probe, layers=plan.layers, batch_size=cfg.eval.batch_size)
    s_idx, t_idx = {w: i for i, w in enumerate(srcs)}, {w: i for i, w in enumerate(tgts)}
    X = src_emb.vectors[[s_idx[p.source] for p in plan.fit_pairs]]  # (N, n_layers, D)
    Y = tgt_emb.vectors[[t_idx[p.target] for p in plan.fit_pairs]]  # (N, n_layers, D)
    embedded = time.perf_counter()
    tensors = fit_tensors(iv.type, iv.solver, float(iv.ridge), X, Y, plan.layers)
    solved = time.perf_counter()
    for layer, t in tensors.items():
        if not t.isfinite().all() or (iv.type == "mean_shift" and float(t.norm()) == 0.0):
            raise DataError(f"the {iv.type} fitted at index {layer} is degenerate (non-finite or zero): the "
                            f"{len(plan.fit_pairs)} training pairs' vectors cannot define it")
    timing = {"n_fit_pairs": len(plan.fit_pairs), "n_words": len(words), "embed_seconds": embedded - start,
              "solve_seconds": solved - embedded}
    return Intervention(iv.type, tensors, 0.0, iv.update, iv.position), timing


def choose_alpha(speaker, tokenizer, intervention: Intervention, plan: FitPlan, text: list[str], cfg) -> list[dict]:
    """One row per alpha tried (0 first): the validation score(s), the validation-text NLL and its relative rise,
    whether it is within the budget, and `chosen` on the row picked (rule in the module docstring)."""
    from tli.eval.graded import score_gold
    from tli.eval.lm_loss import lm_loss
    from tli.eval.translation import evaluate_translation

    iv, opts, max_harm = cfg.intervention, cfg.eval, cfg.objective.max_harm
    prompts = for_queries(tokenizer, plan.val_queries, intervention.position)
    sentences = for_sentences(tokenizer, text) if text else None
    rows = []
    for alpha in iv.grid():
        trial = intervention.with_alpha(alpha)
        row: dict = {"alpha": alpha}
        with intervened(speaker, trial, prompts):
            if iv.select_on == "accuracy":
                got = evaluate_translation(speaker, tokenizer, plan.val_queries, batch_size=opts.generation_batch_size,
                                           max_new_tokens=opts.max_new_tokens)
                row["accuracy"] = sum(bool(r["correct"]) for r in got) / len(got)
            else:
                got = score_gold(speaker, tokenizer, plan.val_queries, batch_size=opts.generation_batch_size)
        scores = [r["gold_logprob"] for r in got if r["gold_logprob"] is not None]
        row["gold_logprob"] = sum(scores) / len(scores) if scores else None
        if sentences is not None:
            with intervened(speaker, trial, sentences):
                row["nll"] = lm_loss(speaker, tokenizer, text)["nll"]
            row["rise"] = row["nll"] / rows[0]["nll"] - 1 if rows else 0.0
        else:
            row["nll"] = row["rise"] = None
        row["within_budget"] = alpha == 0 or max_harm is None or row["rise"] is None or (
            math.isfinite(row["rise"]) and row["rise"] <= max_harm)
        rows.append(row)
        log.info("intervention alpha %+g: validation %s, text NLL %s", alpha,
                 "; ".join(f"{k} {row[k]:.4f}" for k in ("accuracy", "gold_logprob") if row.get(k) is not None),
                 "n/a" if row["nll"] is None else f"{row['nll']:.4f} ({row['rise']:+.2%})")

    def score(r: dict) -> tuple:
        gold = r["gold_logprob"] if r["gold_logprob"] is not None and math.isfinite(r["gold_logprob"]) else -math.inf
        return (r.get("accuracy", 0.0), gold)

    candidates = sorted((r for r in rows if r["within_budget"]), key=lambda r: (abs(r["alpha"]), r["alpha"]))
    best = max(candidates, key=score)  # the first of equals: the smallest |alpha|
    for r in rows:
        r["chosen"] = r is best
    return rows


def written_harm_text(cfg, lang: str) -> list[str]:
    """The written sentences the harm budget scores (`intervention.harm_text`, as `preserve.val_text`:
    `wants_written`); [] without a budget or without written text."""
    from tli.eval.base_text import wants_written, written_validation

    iv = cfg.intervention
    if cfg.objective.max_harm is None or not wants_written(iv.harm_text, lang, iv.harm_file):
        return []
    return written_validation(lang, iv.harm_file, "intervention.harm_file", "intervention.harm_text")


def harm_text(speaker, tokenizer, cfg, lexicons, spec, written: list[str]) -> list[str]:
    """Validation text in the source language for the harm budget: `written` (`written_harm_text`) and/or
    `intervention.val_text` base-model samples (`tli.eval.base_text`, shared with training runs of this seed; with
    harm_text samples or both, or without written text); [] when there is no budget (`objective.max_harm=null`)."""
    iv = cfg.intervention
    if cfg.objective.max_harm is None:
        return []
    n = iv.val_text if iv.harm_text in ("samples", "both") or not written else 0
    if not n:
        return list(written)
    from tli.eval.base_text import preservation_text
    from tli.model.loading import weights_fingerprint

    lang = lexicons.train.src_lang
    text = preservation_text(speaker, tokenizer, [lang], seed=cfg.seed, n_train=0, n_val=n,
                             max_new_tokens=iv.max_new_tokens, fingerprint=weights_fingerprint(spec),
                             cache_dir=spec.cache_dir, written={lang: written},
                             fallback={lang: sorted({p.source for p in lexicons.train.pairs})[:32]})
    return text[lang].val
