"""After a Hydra multirun: one table of every job's settings and metrics, best marked (CSV and Markdown)."""

from __future__ import annotations

import json
from pathlib import Path

from tli.eval.tables import markdown_table, write_csv
from tli.io import atomic_write_text


def _overrides(job: Path) -> list[str]:
    overrides_file = job / ".hydra" / "overrides.yaml"
    lines = overrides_file.read_text().splitlines() if overrides_file.exists() else []
    return [o for o in (line.strip("- ") for line in lines) if o]


def collect(sweep_dir: str | Path) -> list[dict]:
    """One row per job directory holding a metrics.json (its overrides and final metrics) or a failed.json (its
    overrides and error, `status` failed)."""
    rows = []
    jobs = {p.parent for pattern in ("*/metrics.json", "*/failed.json") for p in Path(sweep_dir).glob(pattern)}
    for job in sorted(jobs, key=lambda p: (len(p.name), p)):
        overrides = _overrides(job)
        row = {"job": job.name, "overrides": " ".join(overrides)}
        row.update({o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o})
        if (job / "metrics.json").is_file():
            metrics = json.loads((job / "metrics.json").read_text())
            row.update(status="finished", objective_name=metrics.get("objective_name"),
                       objective=metrics.get("objective"))
            row.update({k: v for k, v in sorted(metrics.get("metrics", {}).items()) if k.startswith("val/")})
        else:
            failure = json.loads((job / "failed.json").read_text())
            row.update(status="failed", error=failure.get("error", ""), objective_name=None, objective=None)
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path) -> list[dict]:
    rows = collect(sweep_dir)
    if not rows:
        return rows
    scored = [r for r in rows if isinstance(r["objective"], (int, float))]
    best = max(scored, key=lambda r: r["objective"]) if scored else None
    for r in rows:
        r["best"] = "*" if r is best else ""
    sweep_dir = Path(sweep_dir)
    write_csv(rows, sweep_dir / "sweep_summary.csv", ["best", "job", "status", "overrides", "objective_name",
                                                        "objective"])
    finished = [r for r in rows if r["status"] == "finished"]
    failed = [r for r in rows if r["status"] == "failed"]
    metric_columns = sorted({c for r in rows for c in r if c.startswith("val/")})  # jobs may differ in layer k
    columns = ["best", "job", "overrides", "objective"] + metric_columns
    name = finished[0]["objective_name"] if finished else None
    text = f"# Sweep summary: {sweep_dir}\n\nObjective: {name} (higher is better; * = best)\n\n"
    text += (markdown_table(finished, columns) if finished else "No job finished.") + "\n"
    if failed:
        text += (f"\n## Failed jobs ({len(failed)} of {len(rows)})\n\n"
                 + markdown_table(failed, ["job", "overrides", "error"]) + "\n")
    atomic_write_text(sweep_dir / "sweep_summary.md", text)
    return rows


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
