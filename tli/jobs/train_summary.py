"""What a finished training run prints: where everything went, its validation figures before and after, the harm on
validation text, and (train.py evaluate=true) the evaluation in a few lines."""

from __future__ import annotations

from pathlib import Path

from tli.eval.metrics import metric_key


def print_summary(result: dict, cfg, out: Path, seconds: float) -> None:
    """Where everything went, what the run achieved on its validation pairs (before -> after), what to run next."""
    metrics, before = result["metrics"], result.get("validation_before") or {}
    k, n_layers = result["settings"]["target_layer"], result["n_layers"]
    lines = [f"finished: {out} ({result['global_step']} steps, {seconds / 60:.1f} min)",
             f"  adapter      {out / 'adapter'} ({result['kept']} adapter)",
             f"  checkpoints  {out / 'checkpoints'}" + (f" (best by {result['objective_name']}: "
                                                        f"{Path(result['best']['path']).name})" if result.get("best")
                                                        else ""),
             f"  metrics      {out / 'metrics.json'}"]
    shown = [(name, layer, centred) for layer in sorted({k, n_layers}) for name, centred in
             (("mrr", False), ("pool_p_at_1", True), ("margin_z", False))]
    rows = []
    for name, layer, centred in shown:
        key = metric_key("val", name, layer, centred)
        if key in metrics:
            was = f"{before[key]:.3f} -> " if key in before else ""
            rows.append(f"{'centred ' if centred else ''}{name}@{layer} {was}{metrics[key]:.3f}")
    if rows:
        where = f"index {k} = target = last" if k == n_layers else f"index {k} = target, {n_layers} = last"
        lines.append(f"  validation   ({result['n_val_pairs']} held-out pairs; {where}) " + "; ".join(rows))
    if "val/translation/accuracy" in metrics:
        o, shown = cfg.objective, []
        for name, label in (("accuracy", "accuracy"), ("gold_logprob", "gold log-prob")):
            key = f"val/translation/{name}"
            shown.append(f"{label} {f'{before[key]:.3f} -> ' if key in before else ''}{metrics[key]:.3f}")
        lines.append(f"  translation  ({o.translation_direction}, {o.translation_shots} shots, validation pairs) "
                     + "; ".join(shown))
    changes = {k.split("/", 2)[2]: v for k, v in metrics.items() if k.startswith("val/nll_change/") and v is not None}
    if changes:
        budget = result.get("max_harm")
        verdict = "no budget" if budget is None else \
            f"budget {budget:.0%}: {'within' if result.get('admissible') else 'OVER, no objective'}"
        text = result.get("val_text") or {}
        lines.append("  harm         validation text NLL change: "
                     + ", ".join(f"{lang} {v:+.2%}" + (f" ({text[lang]})" if lang in text else "")
                                 for lang, v in changes.items()) + f" ({verdict})")
    if not cfg.evaluate:
        lines.append(f"  evaluate it  python evaluate.py {' '.join(evaluate_overrides(cfg))} adapter={out / 'adapter'}")
    print("\n".join(lines))



def in_short(summary: dict, k: int) -> list[str]:
    """The run's evaluation in a few lines: alignment gain on the control pairs (never seen) at the trained index
    against the centred base model, translation change per direction, held-out NLL change per language, with tests."""
    from tli.eval.tables import fmt_p

    run = next(iter(summary.get("runs", {}).values()), {})
    lines = ["in short (control pairs, never trained on; held-out sentences, never seen):"]
    rr = run.get("control", {}).get(k, run.get("control", {}).get(str(k), {})).get("centred", {}).get("paired", {})
    rr = rr.get("pool_mrr")
    if rr:
        p = rr.get("holm_p", rr.get("wilcoxon_p"))
        lines.append(f"  alignment    centred pool-matched MRR at index {k}: {rr['mean_before']:.3f} -> "
                     f"{rr['mean_after']:.3f} (n = {rr['n']}, Wilcoxon {fmt_p(p)}; null: the centred base model)")
    for direction, st in run.get("translation", {}).get("control", {}).items():
        lines.append(f"  translation  {direction}: {st['correct_before']}/{st['n']} -> {st['correct_after']}/{st['n']} "
                     f"(McNemar {fmt_p(st['mcnemar_p'])})")
    for lang, c in run.get("lm_loss", {}).items():
        change = "n/a" if c.get("relative_change") is None else f"{c['relative_change']:+.1%}"
        lines.append(f"  held-out NLL {lang}: {c['nll_before']:.3f} -> {c['nll_after']:.3f} nats/token ({change}, "
                     f"Wilcoxon {fmt_p(c.get('wilcoxon_p'))})")
    return lines if len(lines) > 1 else []


def evaluate_overrides(cfg) -> list[str]:
    """The command-line overrides that make evaluate.py see this run's model and data: the run's own overrides of
    the keys evaluate.py reads (`tli.config.overrides_for`); outside Hydra, the model and data keys."""
    from tli.config import overrides_for
    from tli.jobs.common import in_hydra

    if in_hydra():
        from hydra.core.hydra_config import HydraConfig

        return overrides_for("evaluate", list(HydraConfig.get().overrides.task))
    d = cfg.data
    return [f"model.name_or_path={cfg.model.name_or_path}", f"model.quantization={cfg.model.quantization}",
            f"data.train_file={d.train_file}", f"data.control_file={d.control_file}", f"data.src_field={d.src_field}",
            f"data.tgt_field={d.tgt_field}", f"data.src_lang={d.src_lang}", f"data.tgt_lang={d.tgt_lang}"]
