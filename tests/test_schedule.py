"""Resuming with settings that change the optimisation: trainer.max_steps and the other optimisation arguments of the
Trainer are compared like optim.* (refused unless train.allow_changes=true, then recorded), and a run made longer
keeps its learning-rate schedule without a jump."""

import json

import pytest
from helpers import CrashAt, SimulatedCrash
from lightning.pytorch.callbacks import Callback

from tli.errors import ConfigError
from tli.jobs.train import train_job
from tli.training.optim import Schedule

STEPS = ["trainer.max_steps=6", "trainer.max_epochs=-1", "callbacks.every_n_train_steps=1"]


class RecordLR(Callback):
    def __init__(self):
        self.lr = {}

    def on_train_batch_start(self, trainer, *args):
        self.lr[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


@pytest.mark.parametrize("change", ["trainer.max_steps=10", "trainer.gradient_clip_val=0.5",
                                    "trainer.accumulate_grad_batches=2"])
def test_changed_optimisation_settings_are_refused_on_resume(train_cfg, tmp_path, change):
    with pytest.raises(SimulatedCrash):
        train_job(train_cfg(*STEPS), extra_callbacks=[CrashAt(3)])
    key = change.split("=")[0]
    with pytest.raises(ConfigError, match=rf"changed settings \({key}: "):
        train_job(train_cfg(*STEPS, "ckpt_path=last", change))


def test_a_longer_run_continues_its_schedule_without_a_jump(train_cfg, tmp_path):
    first = RecordLR()
    with pytest.raises(SimulatedCrash):
        train_job(train_cfg(*STEPS, "optim.lr=1e-3"), extra_callbacks=[first, CrashAt(3)])
    resumed = RecordLR()
    result = train_job(train_cfg(*STEPS[1:], "trainer.max_steps=10", "optim.lr=1e-3", "ckpt_path=last",
                                 "train.allow_changes=true"), extra_callbacks=[resumed])
    assert result["global_step"] == 10
    original = Schedule("linear", 2, 6)  # warmup 2 (train_cfg), 6 steps planned
    assert first.lr[2] == pytest.approx(1e-3 * original(2))
    lrs = [resumed.lr[s] for s in range(3, 10)]
    assert lrs[0] == pytest.approx(1e-3 * original(3))  # where the run stopped: no jump
    expected = [lrs[0] * (10 - s) / (10 - 3) for s in range(3, 10)]  # then linearly to 0 at the new end
    assert lrs == pytest.approx(expected)
    card = json.loads((tmp_path / "adapter" / "tli_adapter.json").read_text())
    assert card["resumed_with_changes"] == {"trainer.max_steps": [6, 10]}


def test_the_schedule_equals_transformers_and_extends_continuously():
    import torch
    from transformers import get_scheduler

    for name in ("linear", "cosine", "constant_with_warmup"):
        reference = get_scheduler(name, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                                  num_warmup_steps=3, num_training_steps=20).lr_lambdas[0]
        schedule = Schedule(name, 3, 20)
        assert [schedule(s) for s in range(25)] == [reference(s) for s in range(25)]
        at = schedule(8)
        schedule.extend(40, 8)
        assert schedule(8) == at and schedule(7) == reference(7)
        assert schedule(40) == (at if name == "constant_with_warmup" else 0.0)


def _drop_saved_setting(ckpt_file, section: str, key: str) -> None:
    """Make the checkpoint look as if written before `section.key` existed."""
    import torch

    ckpt = torch.load(ckpt_file, weights_only=True)
    settings = next(s["settings"] for name, s in ckpt["callbacks"].items() if name.endswith("RunSettings"))
    del settings[section][key]
    torch.save(ckpt, ckpt_file)


def test_a_checkpoint_older_than_a_setting_resumes_when_the_setting_is_at_its_default(train_cfg, tmp_path):
    with pytest.raises(SimulatedCrash):
        train_job(train_cfg(*STEPS), extra_callbacks=[CrashAt(3)])
    for ckpt_file in (tmp_path / "checkpoints").glob("*.ckpt"):
        _drop_saved_setting(ckpt_file, "objective", "translation_shots")
    # a value other than the default is a change, named with the checkpoint's side absent
    with pytest.raises(ConfigError, match=r"changed settings \(objective.translation_shots: None -> 2\)"):
        train_job(train_cfg(*STEPS, "ckpt_path=last", "objective.translation_shots=2"))
    result = train_job(train_cfg(*STEPS, "ckpt_path=last"))  # at the default: resumes, nothing recorded as changed
    assert result["global_step"] == 6
    card = json.loads((tmp_path / "adapter" / "tli_adapter.json").read_text())
    assert card["resumed_with_changes"] == {}
