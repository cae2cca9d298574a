"""Faults around a run, as real processes where the fault is one: SIGTERM stops with a checkpoint and exit status 143;
a refused run leaves an existing run directory byte for byte as it was and names the lock holder's pid; a bad model
cache is named before any weights load and a complete read-only one is used read-only; a failed sweep job is one line
and the summary still lists every job; an output directory that is a file is one line; dependency noise is quiet."""

import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

try:
    from helpers import FAST_CPU, ROOT
    FAST = [FAST_CPU]
except ImportError:  # before tests/helpers.py existed
    ROOT = Path(__file__).resolve().parents[1]
    FAST = ["trainer.num_sanity_val_steps=0", "callbacks.rich_progress_bar=false", "callbacks.progress_bar=false",
            "trainer.accelerator=cpu"]

from tli.errors import ConfigError, RunDirError
from tli.jobs.common import RunRecord, restore_run_record, run_dir_lock
from tli.jobs.sweep import write_summary
from tli.model.loading import TINY, ModelSpec, load_config, weights_fingerprint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cli(tiny_dir, small_lexicons, *overrides, multirun=False):
    return [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), "model=tiny", "data=sw_en",
            f"model.name_or_path={tiny_dir}", f"data.train_file={small_lexicons[0]}",
            f"data.control_file={small_lexicons[1]}", "data.batch_size=8", *FAST, "lora.r=4", "logger=none",
            *overrides]


def tree(directory: Path) -> dict:
    """Every file under `directory` and the SHA-256 of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ---- 1. SIGTERM ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_stops_at_a_step_with_a_checkpoint_exits_143_and_resumes(tmp_path, tiny_dir, small_lexicons):
    run = tmp_path / "run"
    cmd = cli(tiny_dir, small_lexicons, "trainer.max_steps=40", "trainer.max_epochs=-1",
              "callbacks.every_n_train_steps=5", f"hydra.run.dir={run}")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (run / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: stopped by SIGTERM at step"), stderr[-2000:]
    assert f"resume with: python train.py ckpt_path=last hydra.run.dir={run}" in errors[0]
    assert "Traceback" not in stderr
    stopped = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 5 <= stopped < 40
    # at the step boundary it saw the signal: last.ckpt at that step; a signal seen only after validation or a
    # periodic save (Lightning raises from there): the newest periodic checkpoint, named as such
    assert f"at step {stopped}: {run / 'checkpoints' / 'last.ckpt'} holds the run" in errors[0] or (
        "the newest checkpoint in" in errors[0])
    assert not (run / "adapter").exists() and not (run / "metrics.json").exists()
    resumed = subprocess.run(cmd + ["ckpt_path=last"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 40


def test_sigterm_under_slurm_auto_requeue_keeps_lightnings_exit(tmp_path):
    """Under SLURM with auto-requeue the SIGTERMException is re-raised (Lightning's requeue path), elsewhere the
    stop becomes the one-line error with status 143."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from tli.training.resume import GracefulStop

    stop = GracefulStop(tmp_path / "checkpoints")
    stop.requeue = True
    with pytest.raises(SIGTERMException):
        try:
            raise SIGTERMException
        except SIGTERMException:
            stop.sigterm_exit()
    stop = GracefulStop(tmp_path / "checkpoints")
    try:
        raise SIGTERMException
    except SIGTERMException:
        stop.sigterm_exit()
    err = stop.error(7, tmp_path)
    assert stop.stopped == "SIGTERM" and err.exit_status == 143 and err.interrupted
    assert str(err).startswith("stopped by SIGTERM at step 7") and f"hydra.run.dir={tmp_path}" in str(err)


# ---- 2. refused runs -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def held_lock(directory: Path):
    """Another live process holding the run directory's lock the way tli does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tli.jobs.common import run_dir_lock\n"
         "with run_dir_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(300)", str(directory)],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_message_names_the_holders_pid(tmp_path):
    with held_lock(tmp_path) as pid:
        with pytest.raises(RunDirError, match=rf"in use by another live run \(pid {pid}\)"):
            with run_dir_lock(tmp_path):
                pass
    with run_dir_lock(tmp_path):  # released when its holder died
        assert (tmp_path / ".tli.lock").read_text().strip() == str(os.getpid())


def an_earlier_run(run: Path) -> None:
    """A run directory as an earlier run left it: its record (seed 1), log, checkpoint, lock file."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  run:\n    dir: earlier\n")
    (run / "train.log").write_text("the earlier run's log\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"the earlier run's checkpoint")
    (run / ".tli.lock").write_bytes(b"")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["locked", "fresh run", "refused resume"])
def test_a_refused_run_leaves_the_directory_as_it_was(tmp_path, tiny_dir, small_lexicons, case):
    run = tmp_path / "run"
    an_earlier_run(run)
    before = tree(run)
    extra = {"locked": [], "fresh run": [], "refused resume": ["ckpt_path=last"]}[case]
    cmd = cli(tiny_dir, small_lexicons, "seed=0", f"hydra.run.dir={run}", *extra)
    with held_lock(run) if case == "locked" else contextlib.nullcontext() as pid:
        before = tree(run)
        res = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    message = {"locked": f"in use by another live run (pid {pid})", "fresh run": "already holds the checkpoints",
               "refused resume": "can be read"}[case]
    assert message in res.stderr
    after = tree(run)
    if case == "locked":  # the holder's pid was in the lock file while it lived
        before.pop(".tli.lock"), after.pop(".tli.lock")
    assert after == before


def test_run_record_restores_what_hydra_rewrote(tmp_path):
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    an_earlier_run(run)
    before = tree(run)
    RunRecord().on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(run)}, "output_subdir": ".hydra"}}))
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")  # what Hydra writes before the job runs
    (run / ".hydra" / "new.yaml").write_text("x\n")
    with open(run / "train.log", "a") as f:
        f.write("the refused run's lines\n")
    assert restore_run_record(run)
    assert tree(run) == before
    assert not restore_run_record(tmp_path / "never-seen")


# ---- 3. caches -----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def read_only_view(source: Path, where: Path):
    """`source` seen read-only at `where` (a read-only bind mount: mode bits do not stop root); skips the test where
    mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "--bind", str(source), str(where)], capture_output=True).returncode:
        if os.geteuid() == 0 or os.access(source, os.W_OK):
            pytest.skip("cannot mount a read-only view here, and mode bits do not make a directory read-only for "
                        "this user")
        yield source
        return
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(where)], capture_output=True).returncode:
            pytest.skip("cannot remount the view read-only")
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_a_cache_that_is_a_file_is_named_before_anything_loads(tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    with pytest.raises(ConfigError, match=rf"model cache {cache} .*TLI_CACHE_DIR.* is not a directory"):
        load_config(ModelSpec(name_or_path=TINY, cache_dir=str(cache)))


@pytest.mark.slow
def test_scan_with_a_cache_that_is_a_file_is_one_line(tmp_path, small_lexicons):
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    res = subprocess.run([sys.executable, str(ROOT / "scan.py"), "model=tiny", "data=sw_en",
                          f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}",
                          f"hydra.run.dir={tmp_path / 'scan'}"], cwd=tmp_path, env={**ENV, "TLI_CACHE_DIR": str(cache)},
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: the model cache {cache}")
    assert "TLI_CACHE_DIR" in res.stderr


def test_a_complete_read_only_cache_is_used_read_only(tmp_path, tiny_dir):
    cache = tmp_path / "cache"
    spec = ModelSpec(name_or_path=TINY, cache_dir=str(cache))
    load_config(spec)  # builds the tiny model into the cache
    expected = weights_fingerprint(spec)
    (cache / "fingerprints.json").unlink()
    with read_only_view(cache, tmp_path / "ro") as ro:
        spec_ro = ModelSpec(name_or_path=TINY, cache_dir=str(ro))
        load_config(spec_ro)
        assert weights_fingerprint(spec_ro) == expected  # computed in memory
        assert weights_fingerprint(ModelSpec(name_or_path=str(tiny_dir), cache_dir=str(ro))) is not None
        assert not (ro / "fingerprints.json").exists()


def test_an_empty_read_only_cache_is_named_before_anything_loads(tmp_path):
    (tmp_path / "empty").mkdir()
    with read_only_view(tmp_path / "empty", tmp_path / "ro") as ro:
        with pytest.raises(ConfigError, match=rf"model cache {ro} .*is read-only and does not hold this model yet"):
            load_config(ModelSpec(name_or_path=TINY, cache_dir=str(ro)))


def test_a_read_only_cache_for_the_fingerprints_does_not_lose_a_finished_run(train_cfg, tmp_path):
    from tli.jobs.train import train_job

    (tmp_path / "cache").mkdir()
    with read_only_view(tmp_path / "cache", tmp_path / "ro") as ro:
        result = train_job(train_cfg("trainer.max_steps=2", "trainer.max_epochs=-1", f"paths.cache_dir={ro}",
                                     out=tmp_path / "run"))
    assert result["global_step"] == 2 and (tmp_path / "run" / "metrics.json").is_file()
    card = json.loads((tmp_path / "run" / "adapter" / "tli_adapter.json").read_text())
    assert card["base_fingerprint"]


def test_cache_indexes_follow_the_umask(tmp_path):
    from tli.io import file_sha256

    data = tmp_path / "weights.bin"
    data.write_bytes(b"weights")
    old = os.umask(0o022)
    try:
        file_sha256(data, tmp_path / "cache" / "fingerprints.json")
        file_sha256(data, tmp_path / "cache" / "gguf" / "sha256.json")
    finally:
        os.umask(old)
    for index in (tmp_path / "cache" / "fingerprints.json", tmp_path / "cache" / "gguf" / "sha256.json"):
        assert stat.S_IMODE(index.stat().st_mode) == 0o644, index


# ---- 4. sweeps -----------------------------------------------------------------------------------------------------

def test_the_sweep_summary_lists_failed_jobs(tmp_path):
    for job, overrides, content in [("0", ["model.target_layer=2"], {"objective_name": "val/mrr@2", "objective": 0.5,
                                                                      "metrics": {"val/mrr@2": 0.5}}),
                                    ("1", ["model.target_layer=99"], None)]:
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if content:
            (tmp_path / job / "metrics.json").write_text(json.dumps(content))
        else:
            (tmp_path / job / "failed.json").write_text(json.dumps({"job": job, "overrides": overrides,
                                                                    "error": "model.target_layer=99 is outside"}))
    rows = write_summary(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "finished"), ("1", "failed")]
    text = (tmp_path / "sweep_summary.md").read_text()
    assert "## Failed jobs (1 of 2)" in text and "model.target_layer=99 is outside" in text
    assert "| * | 0 |" in text


@pytest.mark.slow
def test_a_failed_sweep_job_is_one_line_and_the_summary_keeps_the_good_ones(tmp_path, tiny_dir, small_lexicons):
    sweep = tmp_path / "sweep"
    res = subprocess.run(cli(tiny_dir, small_lexicons, "model.target_layer=2,99", "trainer.limit_train_batches=2",
                             "trainer.limit_val_batches=1", f"hydra.sweep.dir={sweep}", multirun=True),
                         cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "error: error:" not in res.stderr, res.stderr[-3000:]
    output = res.stdout + res.stderr  # Hydra's console handler logs to stdout
    failed = [line for line in output.splitlines() if line.startswith("error: job 1 (")]
    assert len(failed) == 1 and "model.target_layer=99" in failed[0] and "outside" in failed[0]
    assert res.stderr.strip().splitlines()[-1].startswith("error: 1 job(s) of the sweep failed: job 1 (")
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "1" / "failed.json").is_file()
    text = (sweep / "sweep_summary.md").read_text()
    assert "| * | 0 |" in text and "## Failed jobs (1 of 2)" in text


# ---- 5. output directory, dependency noise -------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["train.py", "scan.py", "evaluate.py"])
def test_an_output_directory_that_is_a_file_is_one_line(tmp_path, script):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = subprocess.run([sys.executable, str(ROOT / script), f"hydra.run.dir={blocker}"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip() == (f"error: hydra.run.dir={blocker} is an existing file, not a directory: give a "
                                  "directory for the run's outputs")
    assert blocker.read_text() == "x"


def test_dependency_noise_is_quiet(tmp_path):
    code = ("import logging, warnings\nlogging.basicConfig()\nwarnings.simplefilter('default')\n"
            "from tli.console import quiet_dependencies\nquiet_dependencies()\nimport bitsandbytes\n"
            "warnings.warn('`past_key_values` is deprecated and will be removed in version 5.40.0 for `f`. Use "
            "`cache` instead.', FutureWarning)\nprint('done')")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "done", res.stderr[-2000:]
    assert "publisher trust" not in res.stderr and "past_key_values" not in res.stderr, res.stderr
