"""What a run shows on the terminal: each log line once, no adverts or dependency warnings that say nothing to the
user, rich progress on an interactive terminal and plain, short output otherwise (CI=true, or no TTY)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable

# Lightning INFO lines that say nothing about this run (an advert, hardware it does not have, its own internals).
_NOISE = ("💡 Tip:", "TPU available", "HPU available", "IPU available", "`Trainer(val_check_interval",
          "Loading `train_dataloader` to estimate", "Checkpoint directory", "Experiment logs directory")
# Warnings from dependencies about their own deprecations (nothing a tli user can act on).
_WARNINGS = (r".*is_gradient_checkpointing.*", r".*isinstance\(treespec, LeafSpec\).*",
             r".*torch\.jit\.script_method.*", r".*`torch_dtype` is deprecated.*",
             r".*The '.*_dataloader' does not have many workers.*", r".*does not have many workers.*",
             r".*Found \d+ module\(s\) in eval mode.*",
             r"`past_key_values` is deprecated.*")  # transformers' own generate() passes it (translation eval)
# Log lines of dependencies that say nothing a tli user can act on: logger -> message prefixes dropped.
_DEPENDENCY_NOISE = {"kernels._internals.hf_hub": ("Skipping publisher trust check",)}  # bitsandbytes, offline


def interactive() -> bool:
    """True on a terminal a person watches; False under CI=true or when output goes to a file or pipe."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true", "yes")


def track(iterable: Iterable, total: int, description: str, min_total: int = 8) -> Iterable:
    """A rich progress bar over `iterable` on an interactive terminal when the loop is long; plain otherwise."""
    if total < min_total or not interactive():
        return iterable
    from rich.progress import track as rich_track

    return rich_track(iterable, total=total, description=description, transient=True)


class _DropNoise(logging.Filter):
    def __init__(self, noise=_NOISE):
        super().__init__()
        self.noise = noise

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.noise)


class ConsoleFormatter(logging.Formatter):
    """Console lines: the bare message for INFO, `warning: ...` / `error: ...` above it (the log file keeps the
    full format with time and logger name)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {message}"


def quiet_dependencies() -> None:
    """Each log line once, through the root logger's handlers (Hydra's console and <run dir>/<job>.log); Lightning's
    noise dropped; dependency deprecation warnings ignored.

    Lightning, imported before Hydra set up logging (the entry points import the config schema), gave its loggers
    console handlers of their own and stopped them propagating: their lines showed twice, or missed the log file."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for name, noise in _DEPENDENCY_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise(noise))
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # offline kernel-hub noise
