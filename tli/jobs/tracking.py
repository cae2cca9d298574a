"""Experiment tracking (`logger.*`): Lightning's CSV logger, or Weights & Biases, online when an API key is available
and otherwise offline run files for a later `wandb sync`. One W&B set-up for every job; `log_evaluation` is what an
evaluation sends."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path

from tli.config import LoggerConfig
from tli.eval.behaviour import behaviour_metrics
from tli.eval.translation import CSV_COLUMNS


def wandb_offline(setting) -> bool:
    """`logger.offline`: true, false, or auto (offline unless WANDB_API_KEY is set or `wandb login` was run)."""
    if isinstance(setting, bool):
        return setting
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def wandb_settings(logger: LoggerConfig, output_dir: str | Path, job_type: str, name: str | None = None) -> dict:
    """Arguments of `wandb.init` (and of Lightning's WandbLogger) for a job writing into `output_dir`.

    A job's run id is derived from its directory and job type, so a resumed run continues the same W&B run."""
    out = Path(output_dir)
    run_id = hashlib.sha1(f"{out.resolve()}:{job_type}".encode()).hexdigest()[:12]
    return {"project": logger.project, "entity": logger.entity, "group": logger.group,
            "name": name or logger.name or out.name, "tags": list(logger.tags), "dir": str(out), "id": run_id,
            "resume": "allow", "job_type": job_type,
            "mode": "offline" if wandb_offline(logger.offline) else "online"}


def init_wandb(logger: LoggerConfig, config: dict, output_dir: str | Path, job_type: str):
    """Start a W&B run for a non-training job (scan, evaluate); the caller must `finish()` it."""
    import wandb

    return wandb.init(**wandb_settings(logger, output_dir, job_type, name=f"{Path(output_dir).name}-{job_type}"),
                      config=config, reinit="finish_previous")


def _history_csv_logger(save_dir: str):
    """Lightning's CSVLogger, except that an existing metrics.csv is continued, not deleted: a resumed run keeps the
    history logged before the interruption (Lightning deletes the file when its directory exists)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class KeepingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                    self.metrics_keys = next(csv.reader(f), [])

    class HistoryCSVLogger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = KeepingWriter(log_dir=self.log_dir)
            return self._experiment

    return HistoryCSVLogger(save_dir=save_dir, name="csv", version="")


def lightning_logger(logger: LoggerConfig, config: dict, output_dir: Path):
    """The Lightning logger for training: CSV (<run dir>/csv/metrics.csv, kept across resumes), W&B, or False."""
    if logger.type == "csv":
        return _history_csv_logger(str(output_dir))
    if logger.type == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        settings = wandb_settings(logger, output_dir, "train")
        settings["save_dir"] = settings.pop("dir")
        offline = settings.pop("mode") == "offline"
        wandb_logger = WandbLogger(offline=offline, **settings)
        wandb_logger.log_hyperparams(config)
        return wandb_logger
    return False


def log_evaluation(cfg, summary: dict, out: Path, translation_rows: list[dict]) -> None:
    """An evaluation's W&B run (logger.type=wandb): the headline figures per run, split, layer and vectors as summary
    values, the behaviour metrics, the tables (figures, translation rows), the report and the plots."""
    import wandb

    run = init_wandb(cfg.logger, asdict(cfg), cfg.paths.output_dir, job_type="evaluate")
    try:
        rows = [{"run": name, "split": split, "layer": layer, "vectors": variant,
                 **{f"{k}_before": v for k, v in st["before"].items()},
                 **{f"{k}_after": v for k, v in st["after"].items()},
                 **{f"{s}_delta": p["delta"] for s, p in st["paired"].items()},
                 **{f"{s}_wilcoxon_p": p["wilcoxon_p"] for s, p in st["paired"].items()}}
                for name, r in summary["runs"].items() for split in ("train", "control")
                for layer, per_variant in r.get(split, {}).items() for variant, st in per_variant.items()]
        several = len(summary["runs"]) > 1  # then the run name follows eval/, as in behaviour_metrics
        run.summary.update({f"eval/{r['run'] + '/' if several else ''}{r['vectors']}/{r['split']}/{k}@{r['layer']}": v
                            for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "layer"})
        run.summary.update(behaviour_metrics(summary["runs"]))
        columns = list(rows[0])
        images = {f"eval/{p.stem}": wandb.Image(str(p)) for p in sorted(out.glob("*.png"))}
        tables = {"eval/table": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])}
        if translation_rows:
            columns = ["run", *CSV_COLUMNS]
            tables["eval/translation"] = wandb.Table(columns=columns,
                                                     data=[[r[c] for c in columns] for r in translation_rows])
        run.log({**tables, "eval/report": wandb.Html("<pre>" + (out / "report.md").read_text() + "</pre>"), **images})
    finally:
        run.finish()
