"""The evaluation job's intervention steps: which runs it scores (`open_runs`: a map to fit, or saved maps among
adapters), fit-and-save, and the "after" state with an intervention instead of an adapter.

The intervention acts on source-language input only, so everything in English is the base model's, unchanged:
- vectors: each split's source words embedded with the update on the word's own tokens (both `position` modes); the
  English words' vectors are the base model's (`before`);
- translation: the forward queries (source word -> English) with the update at the query word's tokens or the
  prompt's last token (`intervention.position`); the evaluation scores an intervention on those only (the backward
  prompts' rows would be the base model's by construction, and would only dilute the recipe comparisons);
- held-out loss: the source language's sentences with the update on every token but BOS; the English sentences'
  losses are the base model's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tli.errors import AdapterError, ConfigError
from tli.eval.behaviour import behaviour
from tli.eval.vectors import SplitVectors
from tli.intervention.artifact import (
    CARD_FILE,
    InterventionCard,
    read_card,
    read_intervention_card,
    save_intervention,
)
from tli.intervention.fit import FitPlan, choose_alpha, fit_map, harm_text, plan_fit
from tli.intervention.hooks import intervened
from tli.intervention.maps import Intervention
from tli.intervention.positions import for_queries, for_sentences, for_words
from tli.model.embed import Probe, embed_words

log = logging.getLogger(__name__)


def intervened_vectors(model, tokenizer, before: dict[str, SplitVectors], probe: Probe, iv: Intervention,
                       batch_size: int) -> dict[str, SplitVectors]:
    """Each split's vectors with the source words embedded under the intervention (target words: `before`'s)."""
    out = {}
    for split, v in before.items():
        words = v.gold.src_keys
        with intervened(model, iv, for_words(tokenizer, words, probe.template)):
            emb = embed_words(model, tokenizer, words, probe, layers=v.layers, batch_size=batch_size,
                              progress=f"embedding {split} source words with the intervention")
        out[split] = SplitVectors(v.gold, emb.vectors, v.tgt, v.layers, emb.bos_norm_ratio)
    return out


def intervened_behaviour(model, tokenizer, queries, heldout: dict, opts, iv: Intervention, before: dict,
                         forward: str, src_lang: str) -> dict:
    """`tli.eval.behaviour.behaviour` of the intervened model on `queries` (rows in their order; `before`: the base
    model's rows of the same queries and its held-out losses, reused where the intervention does not act)."""
    fwd = [j for j, q in enumerate(queries) if q.direction == forward]
    rows = list(before["translation"])
    if fwd:
        shown = [queries[j] for j in fwd]
        with intervened(model, iv, for_queries(tokenizer, shown, iv.position)):
            got = behaviour(model, tokenizer, shown, {}, opts)["translation"]
        for j, row in zip(fwd, got, strict=True):
            rows[j] = row
    losses = dict(before["lm_loss"])
    if src_lang in heldout:
        with intervened(model, iv, for_sentences(tokenizer, heldout[src_lang]["sentences"])):
            losses[src_lang] = behaviour(model, tokenizer, [], {src_lang: heldout[src_lang]}, opts)["lm_loss"][src_lang]
    return {"translation": rows, "lm_loss": losses}


def fit_and_save(base, speaker, tokenizer, plan: FitPlan, cfg, lexicons, spec, out_dir: str | Path,
                 ) -> tuple[InterventionCard, Intervention]:
    """Fit the map on `base`, choose alpha on `speaker` (the behaviour precision), write `out_dir` (map + card)."""
    intervention, timing = fit_map(base, tokenizer, plan, cfg)
    start = time.perf_counter()
    text = harm_text(speaker, tokenizer, cfg, lexicons, spec, plan.harm_written)
    table = choose_alpha(speaker, tokenizer, intervention, plan, text, cfg)
    chosen = next(r for r in table if r["chosen"])
    intervention = intervention.with_alpha(chosen["alpha"])
    hidden = next(iter(intervention.tensors.values())).shape[0]
    card = plan.card.with_updates(intervention={
        **plan.card.intervention, "alpha": chosen["alpha"], "validation": table, "max_harm": cfg.objective.max_harm,
        "n_val_pairs": plan.n_val_pairs, "n_val_queries": len(plan.val_queries), "n_val_text": len(text),
        "hidden_size": hidden, **timing, "select_seconds": time.perf_counter() - start})
    save_intervention(intervention, card, out_dir)
    log.info("intervention %s at indices %s: alpha %+g chosen on %d validation pairs (saved in %s)",
             intervention.kind, intervention.layers, chosen["alpha"], plan.n_val_pairs, out_dir)
    return card, intervention


def open_runs(cfg, lexicons, spec, paths, n_layers: int, config, run_card):
    """(OpenedAdapters, FitPlan | None) of an evaluation: with `intervention=...` the one map to fit (saved to
    <eval dir>/intervention; `run_card`: the run's AdapterCard, tli.jobs.common.run_card) or `intervention.load`;
    otherwise the adapters and saved maps in `paths`. Checked before any weights load."""
    from tli.model.adapter import OpenedAdapters, open_adapters
    from tli.model.loading import weights_fingerprint

    fit, iv = None, cfg.intervention
    if iv.active and paths:
        raise ConfigError("intervention=... fits (intervention.load: reads) one map for the bare base model: give no "
                          "adapter; to compare saved maps with adapters, list their directories as recipes "
                          "(+adapters.<recipe>=[<eval dir>/intervention,...])")
    if iv.active and not iv.load:
        skeleton = InterventionCard(**vars(run_card))
        fit = plan_fit(cfg, lexicons, skeleton.with_updates(base_fingerprint=weights_fingerprint(spec)), n_layers)
        opened = OpenedAdapters([str(Path(cfg.paths.output_dir) / "eval" / "intervention")], [fit.card],
                                cfg.model.probe())
    else:
        if iv.load:  # its own messages first (a directory that is not a saved map)
            read_intervention_card(iv.load)
        opened = open_adapters(iv.load or paths, spec, cfg.model.probe(), lexicons.info(), read=read_card)
    if iv.load and iv.type != "none" and opened.cards[0].kind != iv.type:
        raise ConfigError(f"intervention.load={iv.load!r} holds a {opened.cards[0].kind}, not the "
                          f"intervention={iv.type} asked for")
    for path, card in zip(opened.paths, opened.cards, strict=True):
        if isinstance(card, InterventionCard):
            check_map(path, card, n_layers, getattr(config, "hidden_size", None))
    return opened, fit


def check_map(path: str, card: InterventionCard, n_layers: int, hidden: int | None) -> None:
    """A saved map fits this model: its indices exist (0..L), its width is the hidden size."""
    where = Path(path) / CARD_FILE
    bad = [i for i in card.intervention["layers"] if not 0 <= int(i) <= n_layers]
    if bad:
        raise AdapterError(f"{where}: index {bad[0]} is outside this model's hidden states 0..{n_layers}")
    width = card.intervention.get("hidden_size")
    if width is not None and hidden is not None and width != hidden:
        raise AdapterError(f"{where}: fitted on hidden states of width {width}, this model's are {hidden}")
