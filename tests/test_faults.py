"""Faults during training end in one line naming the culprit and lose nothing: damaged checkpoints, a full disk, a
run directory in use, a resume with changed settings, Ctrl-C; resumed runs keep their metric history; outputs are
written with the user's umask."""

import csv
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from helpers import FAST_CPU, ROOT, CrashAt, SimulatedCrash, compose, job_overrides
from safetensors.torch import load_file

import tli.training.checkpoints
from tli.errors import CheckpointError, ConfigError, RunDirError
from tli.jobs.train import train_job

STEPS = ["trainer.max_steps=6", "trainer.max_epochs=-1", "callbacks.every_n_train_steps=1"]


@pytest.fixture
def no_weights(monkeypatch):
    import tli.training.module

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded before the bad input was reported")

    monkeypatch.setattr(tli.training.module, "load_model", refuse)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_dir, small_lexicons):
    """A short finished run with a checkpoint every step (read-only use)."""
    out = tmp_path_factory.mktemp("finished")
    cfg = compose("train", [FAST_CPU, *job_overrides(out, tiny_dir, small_lexicons), "data.batch_size=8",
                            "data.val_fraction=0.25", "lora.r=4", *STEPS])
    train_job(cfg)
    return out


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_a_damaged_checkpoint_is_named_before_weights_load(train_cfg, finished_run, tmp_path, no_weights, damage):
    bad = tmp_path / "bad.ckpt"
    data = (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint\n")
    with pytest.raises(CheckpointError, match=f"checkpoint {bad} is damaged or not a checkpoint"):
        train_job(train_cfg(f"ckpt_path={bad}", out=tmp_path / "run"))


def test_ckpt_path_last_takes_the_newest_intact_checkpoint(train_cfg, finished_run, tmp_path, caplog):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    best = next((finished_run / "checkpoints").glob("best-step*.ckpt"))
    (run / "checkpoints" / best.name).write_bytes(best.read_bytes())
    last = (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    (run / "checkpoints" / "last.ckpt").write_bytes(last[:1000])  # a write cut short
    (run / "checkpoints" / ".last.ckpt.abc.tmp").write_bytes(b"stale")  # left by a killed process
    from tli.training.resume import resolve_ckpt_path

    path, ckpt = resolve_ckpt_path("last", run / "checkpoints")
    assert path == str(run / "checkpoints" / best.name) and ckpt["global_step"] >= 1
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert "skipping checkpoint" in caplog.text and "newest intact checkpoint" in caplog.text


def test_a_full_disk_loses_nothing(train_cfg, tmp_path, monkeypatch):
    """The fourth checkpoint write fails as on a full disk: one tli error naming the file, no temp file, the last
    good checkpoint intact, and ckpt_path=last finishes the run."""
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(tli.training.checkpoints.torch, "save", failing_save)
    with pytest.raises(RunDirError, match=r"could not write .*\.ckpt \(No space left on device\): is the disk full"):
        train_job(train_cfg(*STEPS))
    ckpts = tmp_path / "checkpoints"
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]
    good = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert 1 <= good["global_step"] < 6
    monkeypatch.setattr(tli.training.checkpoints.torch, "save", real_save)
    assert train_job(train_cfg(*STEPS, "ckpt_path=last"))["global_step"] == 6


def test_a_run_directory_in_use_is_refused(train_cfg, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
         "l.acquire(); print('locked', flush=True); time.sleep(120)", str(tmp_path / ".tli.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"run directory {tmp_path} is in use by another live run"):
            train_job(train_cfg(*STEPS))
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "checkpoints").exists()


def test_a_fresh_run_does_not_mix_with_an_earlier_one(train_cfg, finished_run, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes((finished_run / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(RunDirError, match="already holds the checkpoints of an earlier run: resume it"):
        train_job(train_cfg(*STEPS))


def test_resume_refuses_changed_settings_unless_allowed(train_cfg, tmp_path):
    with pytest.raises(SimulatedCrash):
        train_job(train_cfg(*STEPS), extra_callbacks=[CrashAt(3)])
    changes = r"lora.alpha: 32.0 -> 16.0; loss.temperature: 0.05 -> 0.1; optim.lr: 0.0002 -> 0.001"
    with pytest.raises(ConfigError, match=changes):
        train_job(train_cfg(*STEPS, "ckpt_path=last", "lora.alpha=16", "loss.temperature=0.1", "optim.lr=1e-3"))
    result = train_job(train_cfg(*STEPS, "ckpt_path=last", "loss.temperature=0.1", "train.allow_changes=true"))
    assert result["global_step"] == 6
    sidecar = json.loads((tmp_path / "adapter" / "tli_adapter.json").read_text())
    assert sidecar["resumed_with_changes"] == {"loss.temperature": [0.05, 0.1]}


def test_a_resumed_run_keeps_its_metric_history(train_cfg, tmp_path):
    with pytest.raises(SimulatedCrash):
        train_job(train_cfg(*STEPS, "logger=csv"), extra_callbacks=[CrashAt(4)])
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    before = {int(r["step"]) for r in rows if r.get("train/loss")}
    assert before == {0, 1, 2, 3}
    train_job(train_cfg(*STEPS, "logger=csv", "ckpt_path=last"))
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert {int(r["step"]) for r in rows if r.get("train/loss")} == set(range(6))
    assert any(r.get("val/mrr@32") for r in rows)  # columns added after the resume are kept with the old rows


def test_outputs_follow_the_umask(train_cfg, tmp_path):
    old = os.umask(0o022)
    try:
        train_job(train_cfg("trainer.max_steps=2", "trainer.max_epochs=-1"))
    finally:
        os.umask(old)
    for path in [tmp_path / "metrics.json", tmp_path / "audit.json", tmp_path / "checkpoints" / "last.ckpt",
                 *(tmp_path / "adapter").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_with_a_checkpoint_and_resumes(tmp_path, tiny_dir, small_lexicons):
    def cli(run_dir, *extra):
        return [sys.executable, str(ROOT / "train.py"), "model=tiny", "data=sw_en", f"model.name_or_path={tiny_dir}",
                f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}", "data.batch_size=8",
                FAST_CPU, "lora.r=4", "lora.dropout=0.1", "trainer.max_steps=30", "trainer.max_epochs=-1",
                "callbacks.every_n_train_steps=5",
                f"hydra.run.dir={run_dir}", *extra]

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    straight = subprocess.run(cli(tmp_path / "straight"), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "run"
    proc = subprocess.Popen(cli(run), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 2, stderr[-2000:]
    assert "error: stopped by SIGINT at step" in stderr and "Traceback" not in stderr
    stopped = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 5 <= stopped < 30 and not (run / "adapter").exists()
    resumed = subprocess.run(cli(run, "ckpt_path=last"), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
