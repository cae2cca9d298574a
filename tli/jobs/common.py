"""What the jobs share: running a job from an entry point (a tli error is one line, not a traceback) and the
provenance every output records."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from tli import __version__
from tli.console import quiet_dependencies
from tli.data.audit import AuditResult
from tli.errors import RunDirError, TLIError
from tli.io import atomic_write_bytes, atomic_write_json
from tli.model.card import AdapterCard

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


def check_output_dir_args(argv: list[str] | None = None) -> None:
    """Before Hydra starts (it would end in a traceback): `hydra.run.dir=` / `hydra.sweep.dir=` naming an existing
    regular file is one line, `error: ...`, and exit status 2."""
    for arg in sys.argv[1:] if argv is None else argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in ("hydra.run.dir", "hydra.sweep.dir") and value:
            path = Path(value).expanduser()
            if path.exists() and not path.is_dir():
                print(f"error: {key}={value} is an existing file, not a directory: give a directory for the run's "
                      "outputs", file=sys.stderr)
                sys.exit(2)


class _Job:
    started = False  # set by job_started(): the job passed its checks and now writes the run directory
    failed: list[dict] = []  # the failed jobs of this process's multirun (exit status, final line)


def job_started() -> None:
    """Called by a job once every check passed (lock held, settings compared): from here on a TLIError is a run that
    failed, no longer a refused one, and the run directory keeps this run's record."""
    _Job.started = True


_RECORDS: dict[str, dict[str, bytes | int | None]] = {}  # run dir -> its record files before this run


def _record_files(run_dir: Path, subdir: str | None) -> list[Path]:
    files = list(run_dir.glob("*.log"))
    if subdir:
        files += [p for p in (run_dir / subdir).glob("*") if p.is_file()]
    return files


def _snapshot(run_dir: Path, subdir: str | None) -> None:
    if run_dir.is_dir():
        _RECORDS[str(run_dir.resolve())] = {
            "subdir": subdir,
            **{str(p): (p.stat().st_size if p.suffix == ".log" else p.read_bytes()) for p in _record_files(run_dir,
                                                                                                          subdir)}}


def restore_run_record(run_dir: str | Path) -> bool:
    """Put back the record Hydra rewrote when this run started (`.hydra/*.yaml` byte for byte, the job log cut back to
    its length): a refused run leaves an existing run directory as it was. False when there was nothing to restore
    (the directory did not exist before this run)."""
    run_dir = Path(run_dir)
    record = _RECORDS.get(str(run_dir.resolve()))
    if record is None:
        return False
    for path in _record_files(run_dir, record["subdir"]):
        before = record.get(str(path))
        if before is None:
            path.unlink(missing_ok=True)
        elif isinstance(before, int):
            os.truncate(path, min(before, path.stat().st_size))
        elif path.read_bytes() != before:
            atomic_write_bytes(path, before)
    subdir = run_dir / record["subdir"] if record["subdir"] else None
    if subdir is not None and subdir.is_dir() and not any(subdir.iterdir()):
        subdir.rmdir()
    return True


class RunRecord:
    """Hydra callback (hydra.callbacks.run_record): remembers an existing run directory's record (`.hydra/`, the job
    log) before Hydra rewrites it, so that a refused run can put it back (run_entry)."""

    def on_run_start(self, config, **kwargs) -> None:
        _snapshot(Path(str(config.hydra.run.dir)), config.hydra.output_subdir)

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        for job_dir in (p for p in sweep.glob("*") if p.is_dir()) if sweep.is_dir() else ():
            _snapshot(job_dir, config.hydra.output_subdir)

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def _job_dir() -> Path | None:
    if not in_hydra():
        return None
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _record_failure(err: BaseException) -> None:
    """Inside a multirun: `<job dir>/failed.json` (what the sweep summary lists) and the process's list of failures."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    failure = {"job": str(hc.job.num), "overrides": list(hc.overrides.task),
               "error": str(err) if isinstance(err, TLIError) else f"{type(err).__name__}: {err}"}
    _Job.failed.append(failure)
    try:
        atomic_write_json(Path(hc.runtime.output_dir) / "failed.json", failure)
    except TLIError as write_err:
        log.error("%s", write_err)


def run_entry(job: Callable, cfg) -> dict:
    """Call `job` with the typed config composed by Hydra. A `TLIError` (a bad setting, file, model, adapter or
    checkpoint) ends a single run with one line, `error: ...`, and exit status 2 (143 after SIGTERM). A run refused
    before it started (a directory in use or holding another run, a refused resume, a bad setting) leaves an existing
    run directory's record as it was. Inside a multirun the failed job is one line naming its overrides and a
    `failed.json` in its directory; the sweep goes on, its summary lists the failure, and the process exits non-zero
    at the end (`exit_if_jobs_failed`). An interruption (Ctrl-C, SIGTERM) stops the whole sweep. Anything else is a
    bug and keeps its traceback."""
    from tli.config import to_typed

    quiet_dependencies()
    _Job.started = False
    job_dir = _job_dir()
    try:
        result = job(to_typed(cfg))
    except TLIError as err:
        if job_dir is not None and not _Job.started:
            restore_run_record(job_dir)
        status = getattr(err, "exit_status", 2)
        if in_multirun() and not getattr(err, "interrupted", False):
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            log.error("job %s (%s) failed: %s", hc.job.num, " ".join(hc.overrides.task) or "no overrides", err)
            _record_failure(err)
            return {"failed": str(err), "objective": None}
        print(f"error: {err}", file=sys.stderr)
        sys.exit(status)
    except Exception as err:
        if in_multirun():  # the sweep goes on to the next job: say loudly, in its log, that this one failed
            log.exception("job failed")
            _record_failure(err)
        raise
    if in_multirun() and job_dir is not None:
        (job_dir / "failed.json").unlink(missing_ok=True)  # an earlier failure of this job directory
    return result


def exit_if_jobs_failed() -> None:
    """After a multirun: one line naming the failed jobs and exit status 2 when any failed (the summary lists them)."""
    if _Job.failed:
        jobs = "; ".join(f"job {f['job']} ({' '.join(f['overrides'])})" for f in _Job.failed)
        print(f"error: {len(_Job.failed)} job(s) of the sweep failed: {jobs} (each job's error is above and in its "
              "failed.json)", file=sys.stderr)
        sys.exit(2)


def run_card(cfg, lexicons: AuditResult, **more) -> AdapterCard:
    """The adapter card of a run with these settings (`tli.model.card`): what defines the run, in one place. The
    training job adds the LoRA, loss and base-weight fingerprint; summaries take its `provenance()`."""
    spec, probe = cfg.model.loading(), cfg.model.probe()
    return AdapterCard(base_model=spec.name_or_path, revision=spec.revision, quantization=spec.quantization,
                       target_layer=probe.target_layer, pooling=probe.pooling, template=probe.template,
                       lexicons=lexicons.info(), src_field=cfg.data.src_field, tgt_field=cfg.data.tgt_field,
                       metrics=asdict(cfg.metrics), seed=cfg.seed, tli_version=__version__, **more)


def provenance(cfg, lexicons: AuditResult) -> dict:
    """The settings every summary records: model, probe, quantization, indexing, lexicons (the run card's)."""
    return run_card(cfg, lexicons).provenance()


def _holder_pid(fd: int, tries: int = 20) -> str:
    """The pid the lock's holder wrote into the lock file (retried briefly: it writes it just after locking)."""
    for _ in range(tries):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.05)
    return "unknown"


@contextmanager
def run_dir_lock(output_dir: str | Path):
    """Hold `<output_dir>/.tli.lock` while a job writes there: a second live job in the same directory is refused
    (its outputs and checkpoints would interleave), with the holder's pid, which the lock file holds while it is
    locked. Only global rank 0 locks (DDP's other processes share the directory); the lock (flock) dies with its
    process, so a killed run leaves nothing to clean up."""
    import fcntl

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        yield
        return
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / ".tli.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise RunDirError(f"could not create the run directory lock {out / '.tli.lock'} ({err.strerror or err}): "
                          "give a writable run directory (hydra.run.dir=...)") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"run directory {out} is in use by another live run (pid {_holder_pid(fd)}): wait for "
                              "it, or give this run its own directory (hydra.run.dir=...)") from None
        try:
            pid = f"{os.getpid()}\n".encode()
            os.pwrite(fd, pid, 0)  # one small write: a reader sees the old or the new pid, never a torn one
            os.ftruncate(fd, len(pid))
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
