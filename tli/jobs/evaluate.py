"""The evaluation job behind `evaluate.py`: one base model, every adapter attached in turn, paired statistics.
An inference-time map (`intervention=...`, fitted here, or a saved one) is a run like an adapter: applied to the bare
base model through hooks instead of attached (tli.intervention).

Four named steps: `plan(cfg)` checks everything before weights load (lexicons, adapters, queries, held-out text,
layers) -> `measure(plan)` loads the base once, measures it, attaches each adapter in turn -> `write_outputs`
(summary, CSVs, report, plots, W&B) -> `show` (the console).

Everything "before" (embeddings, few-shot translation, held-out LM loss) is computed on the bare base model before
the first adapter is attached; each adapter is then attached to that same model for its "after". eval/summary.json:

    settings                      model, lexicons, layers, ...; "translation": shots, shot_seed, max_new_tokens,
                                  generation_batch_size, directions, words per split and direction (null when
                                  eval.translation=false); "lm_loss": {language: file, sha256, sentences} (or null)
    runs.<run>                    one adapter ("run", or "run0", "run1", ... for several):
      train | control | targeted  embedding statistics per layer (tli.eval.evaluation.evaluate_run); a cross-fitted
      | unseen                    adapter also has "unseen", its held-out fold's pairs (tli.eval.unseen)
      translation                 {split: {direction: accuracy before/after with CIs, change, McNemar b/c/p, flipped
                                  words}, "targeted": {direction: trained vs control}} (summarize_translation)
      lm_loss                     {language: NLL before/after, change, Wilcoxon p, "rise"} (compare_lm_loss)
      intervention                a saved map's run (tli.intervention): kind, indices, alpha and every alpha tried
    unseen_alignment              cross-fitted adapters: {recipe or "crossfit": {layer: {variant: {score: pooled
                                  stratified paired test}}}} over every adapter's held-out fold (tli.eval.unseen)
    recipe_alignment              +adapters.<recipe>: every two recipes' per-pair scores matched by (fold, seed)
                                  (tli.eval.recipe_alignment); "recipes", "comparisons": tli.eval.recipes
    aggregate                     several runs only: mean, std and n across runs of the embedding figures, and of
                                  "translation" (accuracies, change) and "lm_loss" (NLL, change, runs flagged)
    translation                   with eval.translation=true: the run's translation section (several runs: {"runs",
                                  "aggregate"}), the design contract's top-level copy

Directions are labelled "<src_lang>-><tgt_lang>" and back. eval/translation.csv has one row per word, direction and
split (`tli.eval.translation.CSV_COLUMNS`), with a leading `run` column when several adapters are evaluated.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from tli.data.audit import AuditResult
from tli.data.config import load_lexicons
from tli.errors import AdapterError, ConfigError
from tli.eval.behaviour import (
    behaviour,
    behaviour_lines,
    compare_behaviour,
    heldout_samples,
    translation_queries,
    translation_settings,
)
from tli.eval.evaluation import aggregate_all, curves, evaluate_run, layer_scores, pair_rows
from tli.eval.nn_shots import nn_shots_rows, word_vectors
from tli.eval.plots import gold_logprob_points, plot_before_after, plot_scatter
from tli.eval.pooled import heldout_words, mark_rows, scored_by
from tli.eval.recipe_alignment import compare_alignment
from tli.eval.recipes import behaviour_summary
from tli.eval.report import write_report
from tli.eval.tables import print_table, write_csv
from tli.eval.translation import CSV_COLUMNS, Query, direction_label
from tli.eval.unseen import fold_pairs, pooled_alignment, with_unseen
from tli.eval.vectors import embed_split
from tli.intervention.artifact import InterventionCard, read_intervention
from tli.intervention.fit import FitPlan
from tli.intervention.measure import fit_and_save, intervened_behaviour, intervened_vectors, open_runs
from tli.io import atomic_write_json
from tli.jobs.common import provenance, run_card, run_dir_lock
from tli.jobs.tracking import log_evaluation
from tli.model.adapter import OpenedAdapters, attach, bare
from tli.model.embed import Probe
from tli.model.loading import ModelSpec, check_layers, load_config, load_model, num_layers

log = logging.getLogger(__name__)


@dataclass
class EvalPlan:
    """Everything an evaluation needs, checked before any weights load (`plan`)."""

    cfg: Any
    out: Path  # <run dir>/eval
    spec: ModelSpec  # the base model as the adapters were trained on it (representations)
    behaviour_spec: ModelSpec  # the same weights in eval.behaviour_quantization (translation, LM loss)
    lexicons: AuditResult
    adapters: OpenedAdapters  # read and checked against the base model
    names: list[str]  # run names: "run" / "run0", ...; "<recipe>/<i>" with several recipes
    probe: Probe  # the adapters' probe
    splits: dict  # split -> Lexicon
    queries: list[Query]  # few-shot translation prompts ([] unless eval.translation)
    heldout: dict  # language -> held-out sentences ({} unless eval.lm_loss)
    n_layers: int
    layers: list[int]  # reported hidden-state indices
    unseen: list[dict]  # per adapter: the held-out fold's words by direction ({} unless cross-fitted)
    forward: str  # the forward direction's label, e.g. "Korean->English"
    fit: FitPlan | None = None  # intervention=...: the map to fit (then the one run, saved in <eval dir>/intervention)


@dataclass
class Measured:
    """What `measure` found: the summary's runs, the per-pair and per-query rows, the figures' data."""

    runs: dict
    pair_rows: list[dict]
    translation_rows: list[dict]
    figure: dict
    points: dict


def evaluate_job(cfg, reported: set | None = None) -> dict:
    """Evaluate adapters from a typed config (`tli.config.TLIConfig`); returns eval/summary.json's content.
    `reported`: lexicon audit findings already logged (train.py evaluate=true)."""
    with run_dir_lock(cfg.paths.output_dir):
        plan_ = plan(cfg, reported)
        if cfg.intervention.fit_only:
            return fit_only(plan_)
        summary = write_outputs(plan_, measure(plan_))
        show(plan_, summary)
        return summary


def plan(cfg, reported: set | None = None) -> EvalPlan:
    """Check everything before weights load: lexicons, adapters (files, base weights, quantization, probes), the
    translation queries, the held-out text and the reported layers."""
    spec = cfg.model.loading()
    lexicons = load_lexicons(cfg.data, reported=reported)
    if cfg.adapter and cfg.adapters:
        raise ConfigError("give adapter=... or +adapters.<recipe>=[...] (several recipes), not both")
    recipes = {name: [str(d) for d in (dirs if isinstance(dirs, (list, tuple)) else [dirs])]
               for name, dirs in cfg.adapters.items()}
    paths = [d for dirs in recipes.values() for d in dirs] or cfg.adapter
    _, config = load_config(spec)
    n_layers = num_layers(config)
    adapters, fit = open_runs(cfg, lexicons, spec, paths, n_layers, config, run_card(cfg, lexicons))
    names = [f"{name}/{i}" for name, dirs in recipes.items() for i in range(len(dirs))] or adapters.names()
    splits = {"train": lexicons.train, **({"control": lexicons.control} if lexicons.control is not None else {})}
    queries = translation_queries(cfg.eval, splits, cfg.seed) if cfg.eval.translation else []
    heldout = heldout_samples(cfg.eval, lexicons.train.src_lang, lexicons.train.tgt_lang) if cfg.eval.lm_loss else {}
    layers = check_layers(cfg.eval.layers or [adapters.probe.target_layer, n_layers], n_layers, "eval.layers")
    unseen = [heldout_words(lexicons.train, card.split, card.seed) for card in adapters.cards]
    if any(unseen) and not all(unseen):
        raise AdapterError("cross-fitted adapters (data.crossfit) and others in one evaluation: evaluate them "
                           "separately (the cross-fitted ones score only the words they never saw)")
    train_sha = lexicons.info()["train"]["sha256"]
    for path, card, words in zip(adapters.paths, adapters.cards, unseen, strict=True):
        if words and card.lexicons.get("train", {}).get("sha256") != train_sha:
            raise AdapterError(f"adapter {path!r} was cross-fitted on another training lexicon: its held-out fold "
                               f"cannot be recovered from {lexicons.train.path}")
    behaviour_spec = replace(spec, quantization=cfg.eval.behaviour_quantization)
    return EvalPlan(cfg, Path(cfg.paths.output_dir) / "eval", spec, behaviour_spec, lexicons, adapters, names,
                    adapters.probe, splits, queries, heldout, n_layers, layers, unseen,
                    direction_label(lexicons.train, "forward"), fit)


def fit_only(plan: EvalPlan) -> dict:
    """intervention.fit_only=true: load the base, fit, choose alpha and save the map; returns its card."""
    base, tokenizer = load_model(plan.spec)
    speaker = base if plan.behaviour_spec == plan.spec else load_model(plan.behaviour_spec)[0]
    card, _ = fit_and_save(base, speaker, tokenizer, plan.fit, plan.cfg, plan.lexicons, plan.spec,
                           plan.adapters.paths[0])
    print(f"wrote {plan.adapters.paths[0]} (alpha {card.intervention['alpha']:+g})")
    return card.to_dict()


def measure(plan: EvalPlan) -> Measured:
    """Load the base model once; measure it ("before"), then attach each adapter in turn to the same model."""
    cfg, probe, splits, layers, n_layers = plan.cfg, plan.probe, plan.splits, plan.layers, plan.n_layers
    base, tokenizer = load_model(plan.spec)
    # Behaviour in the precision a user generates in (eval.behaviour_quantization): a second copy of the base where
    # that differs from the precision the adapters were trained in, each adapter attached to both.
    behaves = bool(plan.queries or plan.heldout or plan.fit)
    speaker = base if not behaves or plan.behaviour_spec == plan.spec else load_model(plan.behaviour_spec)[0]
    bs = cfg.eval.batch_size
    before = {s: embed_split(base, tokenizer, lex, probe, None, bs) for s, lex in splits.items()}
    before_scores = layer_scores(before, layers, cfg.metrics)
    behaviour_before = behaviour(speaker, tokenizer, plan.queries, plan.heldout, cfg.eval)
    found, model, shared = Measured({}, [], [], {}, {}), base, speaker is base
    if plan.queries and cfg.eval.nn_shots:  # the prompt-only null, on the bare base: before any adapter
        found.translation_rows += nn_shots_rows(
            speaker, tokenizer, plan.queries, behaviour_before["translation"], plan.lexicons.train, plan.adapters.cards,
            plan.unseen, word_vectors(before, probe.target_layer), plan.forward, cfg.eval)
    fitted = {}
    if plan.fit:  # intervention=...: the one run is the map fitted now
        card, fitted[plan.adapters.paths[0]] = fit_and_save(base, speaker, tokenizer, plan.fit, cfg, plan.lexicons,
                                                            plan.spec, plan.adapters.paths[0])
        plan.adapters.cards[0] = card
    for i, (name, adapter) in enumerate(zip(plan.names, plan.adapters.paths, strict=True)):
        card, words = plan.adapters.cards[i], plan.unseen[i]
        held = fold_pairs(splits["train"].pairs, words)  # a cross-fitted adapter's held-out fold: its "unseen" split
        keep = scored_by(plan.queries, words, plan.forward)  # a cross-fitted adapter: only the words it never saw
        if isinstance(card, InterventionCard):  # it acts on source-language input: the backward rows would be base's
            keep = [j for j in keep if plan.queries[j].direction == plan.forward]
        base_rows = [behaviour_before["translation"][j] for j in keep]
        if isinstance(card, InterventionCard):  # on the bare base model (adapters of earlier runs off)
            iv = fitted.get(adapter) or read_intervention(adapter)[1]
            with bare(model), bare(speaker) if not shared else nullcontext():
                after = intervened_vectors(model, tokenizer, before, probe, iv, bs)
                after_i = intervened_behaviour(speaker, tokenizer, [plan.queries[j] for j in keep], plan.heldout,
                                               cfg.eval, iv, {"translation": base_rows,
                                                              "lm_loss": behaviour_before["lm_loss"]},
                                               plan.forward, plan.lexicons.train.src_lang)
        else:
            model = attach(model, adapter, name)
            speaker = model if shared else attach(speaker, adapter, name)
            after = {s: embed_split(model, tokenizer, lex, probe, None, bs) for s, lex in splits.items()}
            after_i = behaviour(speaker, tokenizer, [plan.queries[j] for j in keep], plan.heldout, cfg.eval)
        after_scores, run_before = layer_scores(after, layers, cfg.metrics), before_scores
        if held:
            run_before = with_unseen(before_scores, before, held, layers, cfg.metrics)
            after_scores = with_unseen(after_scores, after, held, layers, cfg.metrics)
        run = {"adapter": adapter, **evaluate_run(run_before, after_scores, layers, cfg.eval.n_boot, cfg.seed)}
        if isinstance(card, InterventionCard):
            run["intervention"] = card.intervention
        fold_seed = {"fold": card.split.get("fold") if words else None, "seed": card.seed}
        pairs = {**{s: lex.pairs for s, lex in splits.items()},
                 **({"unseen": [splits["train"].pairs[j] for j in held]} if held else {})}
        found.pair_rows += [{**r, **fold_seed} for r in pair_rows(name, pairs, run_before, after_scores, layers)]
        mark = partial(mark_rows, **fold_seed, unseen=bool(words))
        before_i = {"translation": mark(base_rows), "lm_loss": behaviour_before["lm_loss"]}
        after_i["translation"] = mark(after_i["translation"])
        compared, csv_rows = compare_behaviour(before_i, after_i, cfg.eval.n_boot, cfg.seed)
        found.runs[name] = {**run, **compared}
        found.translation_rows += [{"run": name, **r} for r in csv_rows]
        if not found.figure:  # the figures show the first adapter
            found.figure = curves(before, after)
            found.points = {s: (before_scores["raw"][s][n_layers]["pairs"]["cosine"].tolist(),
                                after_scores["raw"][s][n_layers]["pairs"]["cosine"].tolist())
                            for s in splits} if n_layers in layers else {}
    return found


def write_outputs(plan: EvalPlan, found: Measured) -> dict:
    """eval/summary.json, pairs.csv, translation.csv, report.md and the plots (each written atomically); returns
    the summary."""
    cfg, probe, out, runs = plan.cfg, plan.probe, plan.out, found.runs
    summary = {
        "settings": {**provenance(cfg, plan.lexicons), "pooling": probe.pooling, "template": probe.template,
                     "adapters": plan.adapters.paths, "target_layer": probe.target_layer, "layers": plan.layers,
                     "n_boot": cfg.eval.n_boot, "behaviour_quantization": plan.behaviour_spec.quantization,
                     "translation": translation_settings(cfg.eval, plan.queries, plan.lexicons.train, cfg.seed),
                     "lm_loss": {lang: {"file": h["file"], "sha256": h["sha256"], "sentences": len(h["sentences"])}
                                 for lang, h in plan.heldout.items()} or None},
        "runs": runs,
        "aggregate": aggregate_all(list(runs.values()), plan.layers) if len(runs) > 1 else {},
    }
    summary.update(behaviour_summary(found.translation_rows, bool(cfg.adapters), any(plan.unseen), cfg.eval.n_boot,
                                     cfg.seed, runs=list(runs)))
    if any(plan.unseen):  # representations on the words each adapter never saw, pooled over folds and seeds
        summary["unseen_alignment"] = pooled_alignment(found.pair_rows, bool(cfg.adapters), cfg.eval.n_boot, cfg.seed)
    if cfg.adapters:  # every two recipes on the same pairs: a recipe against its null without translation too
        summary["recipe_alignment"] = compare_alignment(found.pair_rows, cfg.eval.n_boot, cfg.seed)
    nn_rows = (summary.get("nulls") or {}).get("nn_shots")
    if plan.queries:  # the design contract's top-level section: the run's, or the runs' and their aggregate
        summary["translation"] = next(iter(runs.values()))["translation"] if len(runs) == 1 else {
            "runs": {n: r["translation"] for n, r in runs.items()}, "aggregate": summary["aggregate"]["translation"]}
    write_csv(found.pair_rows, out / "pairs.csv", ["run", "split", "source", "target", "layer", "cos_before",
                                                   "cos_after"])
    if plan.queries:  # the contract's columns; a leading `run` column only when several adapters are evaluated
        columns = ["run", *CSV_COLUMNS] if len(runs) > 1 or nn_rows else CSV_COLUMNS
        write_csv([{c: r[c] for c in columns} for r in found.translation_rows], out / "translation.csv", columns)
    else:  # a table from an earlier evaluation into the same directory would contradict this summary
        (out / "translation.csv").unlink(missing_ok=True)
    atomic_write_json(out / "summary.json", summary)
    write_report(summary, out / "report.md")
    title = _title(plan)
    plot_before_after(found.figure, out / "layers.png", title)
    if found.points:
        plot_scatter(found.points, out / "scatter.png", f"per-pair cosine at index {plan.n_layers}: {title}")
    gold = gold_logprob_points(found.translation_rows)
    if gold:  # per query, every adapter's rows: did the gold translation become more likely?
        plot_scatter(gold, out / "gold_logprob.png", f"gold translation log-prob per query: {title}",
                     label="gold log-prob")
    else:
        (out / "gold_logprob.png").unlink(missing_ok=True)
    if cfg.logger.type == "wandb":
        log_evaluation(cfg, summary, out, found.translation_rows)
    return summary


def show(plan: EvalPlan, summary: dict) -> None:
    """The console: per run, a table of the headline figures, the reading and the behaviour lines."""
    for name, run in summary["runs"].items():
        table = [{"split": s, "layer": layer, "vectors": v, "n": st["paired"]["cosine"]["n"],
                  "cos_before": st["paired"]["cosine"]["mean_before"],
                  "cos_after": st["paired"]["cosine"]["mean_after"],
                  "margin_before": st["before"]["margin"], "margin_after": st["after"]["margin"],
                  "pool_p1_before": st["before"]["pool_p_at_1"], "pool_p1_after": st["after"]["pool_p_at_1"]}
                 for s in plan.splits for layer, per_variant in run[s].items() for v, st in per_variant.items()]
        print_table(table, list(table[0]), title=f"{name}: {run['adapter']}")
        for line in (line for per_layer in run["reading"].values() for line in per_layer):
            print(f"[{name}] {line}")
        for line in behaviour_lines(run):
            print(f"[{name}] {line}")
    print(f"wrote {plan.out}")


def _title(plan: EvalPlan) -> str:
    return f"{plan.spec.name_or_path} ({plan.spec.quantization}), pooling={plan.probe.pooling}"
