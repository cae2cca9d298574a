"""Weights & Biases: online when an API key is available, otherwise offline run files for a later `wandb sync`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


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


def init_wandb(logger_cfg: Mapping, config: dict, output_dir: str | Path, name: str, job_type: str):
    """Start a W&B run for a non-training job (scan, evaluate); the caller must `finish()` it."""
    import wandb

    offline = wandb_offline(logger_cfg.get("offline", "auto"))
    return wandb.init(
        project=logger_cfg.get("project", "tli"),
        entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group"),
        tags=list(logger_cfg.get("tags") or []),
        name=name,
        job_type=job_type,
        dir=str(output_dir),
        mode="offline" if offline else "online",
        config=config,
        reinit="finish_previous",
    )
