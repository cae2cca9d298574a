"""Scaling out: the submitit launchers (hydra/launcher=slurm|local) and the Optuna search (hparams_search=optuna)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import FAST_CPU, ROOT
from omegaconf import OmegaConf

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='needs pip install -e ".[cluster]"')
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='needs pip install -e ".[cluster]"')

# optuna 2.10 uses SQLAlchemy 1.x APIs (the extra pins SQLAlchemy < 2); its import warns about them.
pytestmark = pytest.mark.filterwarnings("ignore:Deprecated API features detected:DeprecationWarning")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SEARCH_SPACE = {"model.target_layer": [1, 2, 3, 4], "lora.r": [4, 8, 16, 32], "loss.temperature": (0.02, 0.2),
                "optim.lr": (5e-5, 1e-3)}


def _hydra_cfg(*overrides: str):
    """conf/train.yaml composed with the hydra node (launcher, sweeper), as `python train.py -m` would."""
    from hydra import compose, initialize_config_dir

    from tli.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides], return_hydra_config=True)


def _train_cmd(tiny_dir, small_lexicons, *overrides: str) -> list[str]:
    """A fast CPU multirun on the tiny model (validation runs once, at the end of the one epoch)."""
    return [sys.executable, str(ROOT / "train.py"), "-m", "model=tiny", "data=sw_en", f"model.name_or_path={tiny_dir}",
            f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}", "data.batch_size=8",
            FAST_CPU, *overrides]


def _sbatch_script(launcher: dict, tmp_path, monkeypatch) -> str:
    """The sbatch script submitit writes for this launcher config (the parameter mapping of the plugin's launch())."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"  # submitit only checks that `srun` exists; nothing is submitted
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")


def test_slurm_launcher_fits_the_8b_model_on_one_gpu(tmp_path, monkeypatch):
    cfg = _hydra_cfg("hydra/launcher=slurm", "experiment=paper", "hydra.launcher.partition=gpu",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert cfg.model.name_or_path == "Lugha-Llama/Lugha-Llama-8B-wura" and cfg.model.quantization == "nf4"
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["nodes"] == launcher["tasks_per_node"] == launcher["gpus_per_node"] == 1
    assert cfg.trainer.devices == 1 and cfg.trainer.num_nodes == 1  # one process per GPU, as SLURM starts them
    assert launcher["cpus_per_task"] == 8 and launcher["mem_gb"] == 64 and launcher["timeout_min"] == 240
    assert launcher["max_num_timeout"] >= 1 and launcher["setup"] == []  # timed-out jobs are requeued
    script = _sbatch_script(launcher, tmp_path, monkeypatch)
    for line in ["--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=8", "--mem=64GB", "--time=240",
                 "--partition=gpu", "--signal=USR2@120", "--open-mode=append"]:
        assert f"#SBATCH {line}\n" in script, line
    assert f"--output={tmp_path / 'sweep'}/.submitit/%j/" in script


def test_local_launcher_composes():
    launcher = _hydra_cfg("hydra/launcher=local").hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert launcher.tasks_per_node == 1 and launcher.cpus_per_task == 2 and launcher.gpus_per_node == 0
    assert launcher.timeout_min > 0


@pytest.mark.parametrize("search,experiment,loss_key", [
    ("optuna", None, "loss.temperature"), ("optuna", "tli", "loss.temperature"),
    ("optuna_triplet", "paper", "loss.margin")])
def test_search_spaces_parse_and_name_existing_settings(search, experiment, loss_key):
    from hydra.utils import instantiate
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution
    from optuna.samplers import TPESampler

    cfg = _hydra_cfg(f"hparams_search={search}", *([f"experiment={experiment}"] if experiment else []))
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.storage is None and 0 <= sweeper.max_failure_rate <= 1
    assert isinstance(instantiate(sweeper.sampler), TPESampler)  # its seed resolves (${seed})
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed and set(space) == {"model.target_layer", "lora.r", loss_key, "optim.lr"}
    for key in space:  # every searched setting exists in this composition (a trial override cannot fail on it)
        assert OmegaConf.select(cfg, key) is not None, key
    assert space["model.target_layer"] == CategoricalDistribution([1, 2, 3, 4])
    assert space["lora.r"] == CategoricalDistribution([4, 8, 16, 32])
    assert space["optim.lr"] == LogUniformDistribution(5e-5, 1e-3)
    if loss_key == "loss.temperature":
        assert space[loss_key] == LogUniformDistribution(0.02, 0.2)


def test_optuna_database_storage_works(tmp_path):
    """The SQLAlchemy < 2 pin of the cluster extra: optuna 2.10's sqlite storage keeps a study between commands."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    for n in (2, 4):
        study = optuna.create_study(storage=url, study_name="s", direction="maximize", load_if_exists=True)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(study.trials) == n


def _overrides(job: Path) -> dict:
    lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
    return dict(line.lstrip("- ").split("=", 1) for line in lines if "=" in line)


@pytest.mark.slow
def test_two_trial_optuna_search_on_the_tiny_model(tmp_path, tiny_dir, small_lexicons):
    sweep = tmp_path / "search"
    cmd = _train_cmd(tiny_dir, small_lexicons, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                     "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                     f"hydra.sweep.dir={sweep}")
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [j.name for j in jobs] == ["0", "1"]
    objectives = [json.loads((j / "metrics.json").read_text())["objective"] for j in jobs]
    assert all(isinstance(o, float) and math.isfinite(o) for o in objectives), objectives
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.name == "optuna" and math.isclose(results.best_value, max(objectives), rel_tol=1e-6)
    best = dict(results.best_params)
    assert set(best) == set(SEARCH_SPACE)
    for key, space in SEARCH_SPACE.items():
        if isinstance(space, list):
            assert best[key] in space, key
        else:
            assert space[0] <= best[key] <= space[1], key
    # The best params are those of a job that reached the best value (its run directory holds the adapter).
    assert any(math.isclose(o, results.best_value, rel_tol=1e-6)
               and all(math.isclose(float(_overrides(j)[k]), float(v), rel_tol=1e-9) for k, v in best.items())
               for j, o in zip(jobs, objectives, strict=True))
    assert (sweep / "sweep_summary.csv").exists()


def _children(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(proc.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's process through /proc")
def test_local_launcher_job_is_requeued_after_preemption_and_resumes(tmp_path, tiny_dir, small_lexicons):
    """hydra/launcher=local runs the job in its own process; a preemption signal (SIGUSR2, what SLURM sends) makes
    submitit requeue it with the same overrides into the same job directory, and ckpt_path=last resumes it there."""
    sweep = tmp_path / "sweep"
    cmd = _train_cmd(tiny_dir, small_lexicons, "hydra/launcher=local", "lora.r=4", "trainer.max_steps=30",
                     "trainer.max_epochs=-1", "callbacks.every_n_train_steps=1", "ckpt_path=last",
                     f"hydra.sweep.dir={sweep}")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline, task = time.time() + 300, None  # generous: the suite's other worker and other jobs share the cores
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.exists() and torch.load(last, weights_only=True)["global_step"] >= 3:
                controllers = [int(p.name) for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
                task = _children(controllers[0])[0]  # the job's process, started by submitit's local controller
                os.kill(task, signal.SIGUSR2)
                break
            time.sleep(0.3)
        assert task is not None, "the job ended or never checkpointed before it could be preempted"
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    log = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_0_log.out"))
    assert "this job is preempted" in log and "Requeued job" in log and "Job completed successfully" in log
    train_log = (sweep / "0" / "train.log").read_text()
    assert f"Restored all states from the checkpoint at {last}" in train_log
    assert json.loads((sweep / "0" / "metrics.json").read_text())["global_step"] == 30
