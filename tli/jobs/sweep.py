"""After a Hydra multirun: one table of every job's settings and metrics (CSV and Markdown), the best marked, the
jobs whose harm exceeds the budget disqualified, and the Pareto front of alignment against harm; and the value
train.py returns to a sweeper (`sweep_value`)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from tli.errors import ConfigError
from tli.eval.tables import markdown_table, write_csv
from tli.io import atomic_write_text
from tli.training.run_config import TRANSLATION_OBJECTIVES

log = logging.getLogger(__name__)

# Written by runs since issue 16 (metrics.json); a file without them summarises as before (no harm, no front).
HARM_KEYS = ("alignment", "harm", "max_harm", "admissible")


def _overrides(job: Path) -> list[str]:
    overrides_file = job / ".hydra" / "overrides.yaml"
    lines = overrides_file.read_text().splitlines() if overrides_file.exists() else []
    return [o for o in (line.strip("- ") for line in lines) if o]


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _harm_fields(metrics: dict) -> dict:
    """alignment, harm, max_harm and admissible of one metrics.json ({} for a file from before the harm budget)."""
    values = metrics.get("metrics", {})
    harm = metrics.get("harm", values.get("val/harm"))
    if harm is None and not any(k in metrics for k in HARM_KEYS):
        return {}
    alignment = metrics.get("alignment")
    if alignment is None:
        alignment = values.get(metrics.get("objective_name"), metrics.get("objective"))
    budget = metrics.get("max_harm")
    admissible = metrics.get("admissible")
    if admissible is None:  # the budget applied to the recorded harm
        admissible = budget is None or (harm is not None and harm <= budget)
    out = {"alignment": alignment, "harm": harm, "max_harm": budget, "admissible": bool(admissible)}
    if metrics.get("val_text"):  # what the harm was measured on, per language
        out["val_text"] = "; ".join(f"{lang}: {what}" for lang, what in metrics["val_text"].items())
    return out


def collect(sweep_dir: str | Path) -> list[dict]:
    """One row per job directory holding a metrics.json (its overrides and final metrics; with the harm budget also
    alignment, harm, max_harm and admissible) or a failed.json (its overrides and error, `status` failed)."""
    rows = []
    jobs = {p.parent for pattern in ("*/metrics.json", "*/failed.json") for p in Path(sweep_dir).glob(pattern)}
    for job in sorted(jobs, key=lambda p: (len(p.name), p)):
        overrides = _overrides(job)
        row = {"job": job.name, "overrides": " ".join(overrides)}
        row.update({o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o})
        if (job / "metrics.json").is_file():
            metrics = json.loads((job / "metrics.json").read_text())
            row.update(status="finished", objective_name=metrics.get("objective_name"),
                       objective=metrics.get("objective"), **_harm_fields(metrics))
            row.update({k: v for k, v in sorted(metrics.get("metrics", {}).items()) if k.startswith("val/")})
        else:
            failure = json.loads((job / "failed.json").read_text())
            row.update(status="failed", error=failure.get("error", ""), objective_name=None, objective=None)
        rows.append(row)
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (alignment, harm) that no other point dominates: none has alignment >= and harm <= with
    one of them strict. Equal points are all on the front. O(n log n): by harm ascending, then alignment
    descending, a point is on the front when its alignment beats every alignment of lower harm, or ties the best of
    its own harm."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front, best, i = [], -math.inf, 0
    while i < len(order):
        harm = points[order[i]][1]
        group = [j for j in order[i:] if points[j][1] == harm]  # one harm level, alignment descending
        top = points[group[0]][0]
        if top > best:
            front += [j for j in group if points[j][0] == top]
            best = top
        i += len(group)
    return sorted(front)


def _mark(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Sets `best` (the highest objective among admissible finished jobs) and, with harm recorded, `pareto`; returns
    (the front's rows, the disqualified rows)."""
    scored = [r for r in rows if _number(r.get("objective")) is not None and r.get("admissible", True)]
    best = max(scored, key=lambda r: r["objective"]) if scored else None
    placed = [r for r in rows if _number(r.get("alignment")) is not None and _number(r.get("harm")) is not None]
    front = [placed[i] for i in pareto_front([(r["alignment"], r["harm"]) for r in placed])]
    harmed = any("harm" in r for r in rows)
    for r in rows:
        r["best"] = "*" if r is best else ""
        if harmed:
            r["pareto"] = "*" if any(r is f for f in front) else ""
    return front, [r for r in rows if r.get("admissible") is False]


def _pct(x) -> str:
    return "" if _number(x) is None else f"{100 * x:+.2f}%"


def _harm_text(rows: list[dict], disqualified: list[dict], objective_name: str | None) -> str:
    budgets = sorted({r["max_harm"] for r in rows if _number(r.get("max_harm")) is not None})
    texts = sorted({r["val_text"] for r in rows if r.get("val_text")})
    on = f" ({' | '.join(texts)})" if texts else ""
    text = (f"Harm: val/harm, the relative rise of the NLL of validation text{on} over the base "
            "model, the larger of the two languages (lower is better); budget (objective.max_harm): "
            + (", ".join(f"{100 * b:g}%" for b in budgets) if budgets else "none") + ".")
    kind = (f"{objective_name}: validation translation, not an alignment metric"
            if objective_name in TRANSLATION_OBJECTIVES.values() else objective_name)
    text += (f" The alignment column is the objective's value ({kind}) whatever the harm; the objective column leaves "
             "it out where the job is over the budget.")
    if disqualified:
        text += (f" Disqualified (harm above the budget, admissible = no, never best): job(s) "
                 f"{', '.join(r['job'] for r in disqualified)}.")
    return text + "\n\n"


def _shown(r: dict) -> dict:
    """A row as the Markdown tables show it: harm in percent, admissible as yes / **no**."""
    return {**r, "harm": _pct(r.get("harm")), "admissible": {True: "yes", False: "**no**"}.get(r.get("admissible"), "")}


def _front_section(front: list[dict]) -> str:
    rows = [_shown(r) for r in sorted(front, key=lambda r: (r["harm"], -r["alignment"]))]
    return (f"\n## Pareto front: alignment against harm ({len(front)} job(s))\n\nJobs no other job beats on both "
            "(alignment as high or higher and harm as low or lower, one of them strictly), by harm.\n\n"
            + markdown_table(rows, ["job", "overrides", "alignment", "harm", "admissible"]) + "\n")


def write_summary(sweep_dir: str | Path) -> list[dict]:
    """sweep_summary.csv and .md in the sweep directory (every job; best marked; with harm recorded, the harm
    column, the disqualified jobs and the Pareto front). Returns the rows."""
    rows = collect(sweep_dir)
    if not rows:
        return rows
    front, disqualified = _mark(rows)
    harmed = any("harm" in r for r in rows)
    sweep_dir = Path(sweep_dir)
    write_csv(rows, sweep_dir / "sweep_summary.csv",
              ["best", *(["pareto"] if harmed else []), "job", "status", "overrides", "objective_name", "objective",
               *(HARM_KEYS if harmed else [])])
    finished = [r for r in rows if r["status"] == "finished"]
    failed = [r for r in rows if r["status"] == "failed"]
    metric_columns = sorted({c for r in rows for c in r if c.startswith("val/")})  # jobs may differ in layer k
    columns = ["best", "job", "overrides", "objective"] + metric_columns
    shown = finished
    if harmed:
        columns[4:4] = ["alignment", "harm", "admissible", "pareto"]
        shown = [_shown(r) for r in finished]
    name = finished[0]["objective_name"] if finished else None
    text = f"# Sweep summary: {sweep_dir}\n\nObjective: {name} (higher is better; * = best)\n\n"
    if harmed:
        text += _harm_text(finished, disqualified, name)
    text += (markdown_table(shown, columns) if finished else "No job finished.") + "\n"
    if front:
        text += _front_section(front)
    if failed:
        text += (f"\n## Failed jobs ({len(failed)} of {len(rows)})\n\n"
                 + markdown_table(failed, ["job", "overrides", "error"]) + "\n")
    atomic_write_text(sweep_dir / "sweep_summary.md", text)
    return rows


def sweeper_directions(sweeper=None) -> list[str]:
    """What the sweeper optimises (`hydra.sweeper.direction`, read from the running Hydra job when `sweeper` is None):
    ["maximize"] (the objective; also a sweeper without directions, such as the basic grid, and a single run) or
    ["maximize", "minimize"] (alignment and harm: hparams_search=optuna_harm). Anything else is a ConfigError."""
    if sweeper is None:
        from tli.jobs.common import in_hydra

        if not in_hydra():
            return ["maximize"]
        from hydra.core.hydra_config import HydraConfig

        sweeper = HydraConfig.get().sweeper
    direction = sweeper.get("direction", "maximize") if sweeper is not None else "maximize"
    direction = [direction] if isinstance(direction, str) or not hasattr(direction, "__iter__") else list(direction)
    names = [str(getattr(d, "name", d)) for d in direction]  # Optuna's Direction enum or its name
    if names not in (["maximize"], ["maximize", "minimize"]):
        raise ConfigError(f"hydra.sweeper.direction={names}: train.py returns the objective (direction: maximize) or "
                          "alignment and harm (direction: [maximize, minimize], hparams_search=optuna_harm)")
    return names


def sweep_value(result: dict, directions: list[str]) -> float | tuple[float, float] | None:
    """What train.py returns to the sweeper for a job's `result` (metrics.json's content): the objective (None for a
    failed or disqualified job: Optuna records the trial as failed), or with two directions the pair (alignment,
    harm), recorded for disqualified jobs too (the search maps the front beyond the budget; the summary never
    picks them as best); None when either is missing or not finite."""
    if len(directions) == 1:
        return result.get("objective")
    if result.get("failed"):
        return None
    fields = _harm_fields(result)
    alignment, harm = _number(fields.get("alignment")), _number(fields.get("harm"))
    if alignment is None or harm is None:
        log.error("the job records no finite alignment and harm (alignment %s, harm %s): the multi-objective search "
                  "needs both (val/harm is scored on validation text at every validation)",
                  fields.get("alignment"), fields.get("harm"))
        return None
    return alignment, harm


class _HydraCallback:
    """Hydra calls every hook (on_run_start, on_job_end, ...) on each callback: the ones not defined do nothing."""

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


class SweepSummary(_HydraCallback):
    """Hydra callback (hydra.callbacks.sweep_summary): writes the table after each job of a multirun (so that a sweep
    ended by a crash or a scheduler still has one) and when the multirun ends; failed jobs are listed with their
    errors."""

    def on_job_end(self, config, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:
            write_summary(config.hydra.sweep.dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        rows = write_summary(config.hydra.sweep.dir)
        if rows:
            failed = sum(r["status"] == "failed" for r in rows)
            print(f"sweep summary: {Path(config.hydra.sweep.dir) / 'sweep_summary.md'} ({len(rows)} jobs"
                  + (f", {failed} failed)" if failed else ")"))


def _adapter_jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p.parent.parent for p in sweep_dir.glob("*/adapter/tli_adapter.json")),
                  key=lambda p: (len(p.name), p.name))


def _evaluate_sweep(config, jobs: list[Path], layers, n_boot: int, seed: int | None = None) -> None:
    """One evaluation job, on the sweep's settings, of all the jobs' adapters into <sweep dir>/eval/."""
    from omegaconf import OmegaConf

    from tli.config import TLIConfig, to_typed
    from tli.jobs.evaluate import evaluate_job

    data = OmegaConf.to_container(config, resolve=False)
    data.pop("hydra", None)
    data.update(adapter=[str(j / "adapter") for j in jobs])
    if seed is not None:
        data["seed"] = seed
    data["paths"]["output_dir"] = str(config.hydra.sweep.dir)
    data["logger"]["type"] = "none"
    data["eval"].update(layers=layers, n_boot=n_boot)
    evaluate_job(to_typed(OmegaConf.merge(OmegaConf.structured(TLIConfig), data)))


class SeedReport(_HydraCallback):
    """Hydra callback (multiseed=...): after the seeds' jobs, evaluate all their adapters on one base model and write
    the report across seeds into <sweep dir>/eval/ (mean and standard deviation, trained vs control). With
    cross-fitting (crossfit=..., whose CrossfitReport evaluates every adapter) it does nothing."""

    def __init__(self, layers=None, n_boot: int = 10000):
        self.layers, self.n_boot = layers, n_boot

    def on_multirun_end(self, config, **kwargs) -> None:
        if config.data.get("crossfit") and "crossfit_report" in config.hydra.callbacks:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = _adapter_jobs(sweep_dir)
        if not jobs:
            print(f"seed report: no adapters under {sweep_dir}")
            return
        _evaluate_sweep(config, jobs, self.layers, self.n_boot, seed=0)
        print(f"seed report: {sweep_dir / 'eval' / 'report.md'} ({len(jobs)} runs)")


class CrossfitReport(_HydraCallback):
    """Hydra callback (crossfit=...): after the folds' jobs (K folds, times any seeds), evaluate all their adapters
    in one job into <sweep dir>/eval/; the evaluation scores each held-out pair by the adapter(s) that never saw it
    (the fold each adapter held out is on its card: tli.data.crossfit.fold_split recovers the pairs)."""

    def __init__(self, layers=None, n_boot: int = 10000):
        self.layers, self.n_boot = layers, n_boot

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = _adapter_jobs(sweep_dir)
        if not jobs:
            print(f"cross-fitting report: no adapters under {sweep_dir}")
            return
        _evaluate_sweep(config, jobs, self.layers, self.n_boot)
        print(f"cross-fitting report: {sweep_dir / 'eval' / 'report.md'} ({len(jobs)} runs)")
