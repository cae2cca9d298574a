"""Checkpoints: how they are written (atomically) and which are kept (what to keep: tli.training.run_config)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tli.errors import RunDirError
from tli.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file and rename: a crash or a full disk mid-write never corrupts or replaces the
    last good checkpoint, and leaves no temporary file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        try:
            atomic_write(path, lambda f: torch.save(checkpoint, f))
        except RuntimeError as err:  # torch.save reports a failed write (e.g. a full disk) as an iostream error
            raise RunDirError(f"could not write checkpoint {path} ({err}): is the disk full? Nothing was "
                              "half-written; free space and resume with ckpt_path=last") from err


def checkpoint_callbacks(ckpt_dir: Path, monitor: str, every_n_train_steps: int | None) -> list[ModelCheckpoint]:
    return [
        # The best checkpoint by the objective (needs a validation to have run) ...
        ModelCheckpoint(dirpath=str(ckpt_dir), filename="best-step{step:06d}", monitor=monitor, mode="max",
                        save_top_k=1, auto_insert_metric_name=False),
        # ... and last.ckpt, written at every validation and every N steps regardless of metrics (for resume); always
        # that name (no last-v1.ckpt: a run directory holds one run, see tli.jobs.train)
        ModelCheckpoint(dirpath=str(ckpt_dir), save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps,
                        enable_version_counter=False),
    ]
