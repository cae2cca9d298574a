"""What the jobs share: running a job from an entry point (a tli error is one line, not a traceback) and the
provenance every output records."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from tli import __version__
from tli.console import quiet_dependencies
from tli.data.audit import AuditResult
from tli.errors import RunDirError, TLIError
from tli.model.embed import INDEXING

log = logging.getLogger("tli")


def in_hydra() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return False
    return HydraConfig.initialized()


def in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return False
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_entry(job: Callable, cfg) -> dict:
    """Call `job` with the typed config composed by Hydra. A `TLIError` (a bad setting, file, model, adapter or
    checkpoint) ends a single run with one line, `error: ...`, and exit status 2; inside a multirun it is re-raised
    so that the sweeper records the job as failed and goes on. Anything else is a bug and keeps its traceback."""
    from tli.config import to_typed

    quiet_dependencies()
    try:
        return job(to_typed(cfg))
    except TLIError as err:
        if in_multirun():
            log.error("error: %s", err)
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        if in_multirun():  # the sweep goes on to the next job: say loudly, in its log, that this one failed
            log.exception("job failed")
        raise


def provenance(cfg, lexicons: AuditResult) -> dict:
    """The settings every summary and adapter sidecar records: model, probe, quantization, indexing, lexicons."""
    spec, probe = cfg.model.loading(), cfg.model.probe()
    return {"model": spec.name_or_path, "revision": spec.revision, "quantization": spec.quantization,
            "pooling": probe.pooling, "template": probe.template, "indexing": INDEXING,
            "lexicons": lexicons.info(), "metrics": asdict(cfg.metrics), "seed": cfg.seed, "tli_version": __version__}


@contextmanager
def run_dir_lock(output_dir: str | Path):
    """Hold `<output_dir>/.tli.lock` while a job writes there: a second live job in the same directory is refused
    (its outputs and checkpoints would interleave). Only global rank 0 locks (DDP's other processes share the
    directory); the lock dies with its process, so a killed run leaves nothing to clean up."""
    from filelock import FileLock, Timeout
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        yield
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    owner = out / ".tli.lock.pid"
    lock = FileLock(out / ".tli.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        pid = owner.read_text().strip() if owner.is_file() else "?"
        raise RunDirError(f"run directory {out} is in use by another live run (pid {pid}): wait for it, or give "
                          "this run its own directory (hydra.run.dir=...)") from None
    try:
        owner.write_text(f"{os.getpid()}\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
