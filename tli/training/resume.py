"""Stopping and resuming: which checkpoint `ckpt_path` means, checked before any weights load; the settings a run
was started with, refused when a resume changes them; and Ctrl-C or SIGTERM that stop at a step boundary with a
checkpoint."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from tli.errors import CheckpointError, ConfigError, TrainingError
from tli.io import remove_stale_temp_files

log = logging.getLogger(__name__)
FREE_TO_CHANGE = ("data.num_workers",)  # settings a resumed run may change without changing what it computes


def read_checkpoint(path: Path) -> dict:
    """A tli training checkpoint, loaded safely (weights_only); a CheckpointError naming the file otherwise."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, a pickle weights_only refuses, ...
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); resume from another one (ckpt_path=last picks "
                              "the newest intact checkpoint of a run directory)") from err
    missing = [k for k in ("state_dict", "global_step", "loops", "hyper_parameters") if k not in ckpt]
    if not isinstance(ckpt, dict) or missing:
        raise CheckpointError(f"checkpoint {path} is not a tli training checkpoint (missing {missing})")
    return ckpt


def newest_intact(ckpt_dir: Path) -> tuple[Path, dict] | None:
    """The checkpoint of `ckpt_dir` with the highest global step that loads: last.ckpt normally, another one when
    last.ckpt is missing or damaged (a write that failed, a disk that filled up)."""
    found = []
    for path in sorted(ckpt_dir.glob("*.ckpt")):
        try:
            found.append((read_checkpoint(path)["global_step"], path.name == "last.ckpt", path))
        except CheckpointError as err:
            log.warning("ckpt_path=last: skipping %s", err)
    if not found:
        return None
    step, _, path = max(found)
    return path, read_checkpoint(path)


def resolve_ckpt_path(ckpt_path: str | None, ckpt_dir: Path) -> tuple[str | None, dict | None]:
    """(checkpoint file, its content) for `ckpt_path`: a file, `last` (the newest intact checkpoint of the run
    directory; none yet: start fresh, as a requeued cluster job's first launch does), or null."""
    if ckpt_path in (None, ""):
        return None, None
    if ckpt_path == "last":
        remove_stale_temp_files(ckpt_dir)
        newest = newest_intact(ckpt_dir)
        if newest is None and list(ckpt_dir.glob("*.ckpt")):
            raise CheckpointError(f"ckpt_path=last: no checkpoint in {ckpt_dir} can be read (all damaged, see the "
                                  "warnings above): give a run directory with an intact checkpoint, or a new one")
        if newest is None:
            log.warning("ckpt_path=last: no checkpoint in %s yet, starting from scratch (resume a run with "
                        "hydra.run.dir=<its dir>)", ckpt_dir)
            return None, None
        path, ckpt = newest
        if path.name != "last.ckpt":
            log.warning("ckpt_path=last: resuming from %s (step %d), the newest intact checkpoint", path,
                        ckpt["global_step"])
        return str(path), ckpt
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r}: no such checkpoint file")
    return str(path), read_checkpoint(path)


def flat_settings(tree, prefix: str = "") -> dict:
    """A nested settings dict as {'section.key': value}."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat_settings(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


class RunSettings(Callback):
    """Keeps the settings that define a run (model, probe, LoRA, loss, optimiser, data, seed) in its checkpoints."""

    def __init__(self, settings: dict):
        self.settings = settings

    def state_dict(self) -> dict:
        return {"settings": self.settings}

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # compared before the run starts (check_resume_settings), where a mismatch can still be refused

    @staticmethod
    def saved(ckpt: dict) -> dict | None:
        for key, state in (ckpt.get("callbacks") or {}).items():
            if key.endswith("RunSettings") or key == "RunSettings":
                return state.get("settings")
        return None


def check_resume_settings(ckpt: dict, path: str, settings: dict, allow: bool, defaults: dict | None = None) -> dict:
    """Refuse to resume with settings that differ from the checkpoint's (they would apply from the middle of the run
    while the outputs would record them as the run's); with `allow`, return them for the record.

    `defaults` (flat, `section.key` -> value): a setting that the checkpoint does not record (it was written before
    the key existed) is unchanged if the run leaves it at this default: new keys default to what older runs did
    (README, Training: the one exception, preserve.val_text)."""
    saved = RunSettings.saved(ckpt)
    if saved is None:
        raise CheckpointError(f"checkpoint {path} records no run settings (written by another tli version?): "
                              "resume is refused, as the settings could not be compared")
    old, new, defaults = flat_settings(saved), flat_settings(settings), defaults or {}
    added = {k for k in set(new) - set(old) if k in defaults and new[k] == defaults[k]}
    if added:
        log.info("resuming %s: settings it predates, at their defaults: %s", path, ", ".join(sorted(added)))
    changed = {k: [old.get(k), new.get(k)] for k in sorted((set(old) | set(new)) - added)
               if old.get(k) != new.get(k) and k not in FREE_TO_CHANGE}
    if changed and not allow:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:6])
        raise ConfigError(f"resuming {path} with changed settings ({shown}{'; ...' if len(changed) > 6 else ''}): "
                          "use the run's settings, or set train.allow_changes=true to resume anyway (the outputs "
                          "then record the changes)")
    return changed


class GracefulStop(Callback):
    """Ctrl-C (SIGINT) or SIGTERM (`kill`, a scheduler's stop): finish the current training step, write last.ckpt and
    stop; the job then ends with one line saying how to resume (`error()`: exit status 2 after Ctrl-C, 143 = 128 +
    SIGTERM after SIGTERM). A second Ctrl-C aborts at once. `stopped` tells the job that the run did not finish.

    SIGTERM is caught by Lightning's own handler (trainer.received_sigterm), which then ends `fit` with a
    SIGTERMException (a SystemExit with status 0). Under SLURM with Lightning's auto-requeue (SLURMEnvironment) that
    path is kept as it is: Lightning's requeue signal handler has saved an hpc checkpoint and requeued the job, and the
    process exits as Lightning makes it; this callback only adds last.ckpt at the step boundary, so that the requeued
    job (`ckpt_path=last`) resumes from the step where it stopped."""

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir, self.stopped, self.saved_step, self.requeue, self._previous = ckpt_dir, None, None, False, {}

    def _request(self, signum, frame):
        if self.stopped is not None:  # the second time: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.stopped = signal.Signals(signum).name
        log.warning("%s: stopping after the current step and writing a checkpoint (press Ctrl-C again to abort "
                    "without one)", self.stopped)

    def on_train_start(self, trainer, pl_module) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = getattr(trainer.strategy, "cluster_environment", None)
        self.requeue = isinstance(env, SLURMEnvironment) and env.auto_requeue
        if threading.current_thread() is threading.main_thread():
            self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._request)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stopped is None and trainer.received_sigterm:
            self.stopped = "SIGTERM"
            log.warning("SIGTERM: stopping after the current step and writing a checkpoint")
        if self.stopped is not None and self.saved_step is None:
            trainer.save_checkpoint(self.ckpt_dir / "last.ckpt")
            self.saved_step = trainer.global_step
            trainer.should_stop = True

    def sigterm_exit(self) -> None:
        """`fit` ended with Lightning's SIGTERMException: re-raised under SLURM auto-requeue (Lightning's behaviour),
        otherwise recorded so that the job ends like after Ctrl-C."""
        self.stopped = self.stopped or "SIGTERM"
        if self.requeue:
            log.warning("SIGTERM under SLURM: %s; the requeued job resumes with ckpt_path=last",
                        f"checkpoint written at step {self.saved_step}" if self.saved_step is not None else
                        "the newest checkpoint holds the run")
            raise

    def error(self, step: int, out: Path) -> TrainingError:
        """The one-line error that ends a stopped run: where the run is kept and the command that resumes it."""
        held = (f"{self.ckpt_dir / 'last.ckpt'} holds the run" if self.saved_step is not None else
                f"the newest checkpoint in {self.ckpt_dir} holds the run (if any)")
        err = TrainingError(f"stopped by {self.stopped} at step {step}: {held}; resume with: python train.py "
                            f"ckpt_path=last hydra.run.dir={out} (and the same settings)")
        err.exit_status = 143 if self.stopped == "SIGTERM" else 2  # 128 + SIGTERM, as a process killed by it
        err.interrupted = True  # a sweep stops too
        return err

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
