"""The real thing on a CUDA GPU (skipped without one): NF4 training in bf16-mixed precision, then its evaluation."""

import json

import pytest
from helpers import RunIf

from tli.jobs.evaluate import evaluate_job
from tli.jobs.train import train_job


@RunIf(min_gpus=1)
@pytest.mark.gpu
def test_nf4_trains_two_steps_on_cuda_and_evaluates(train_cfg, eval_cfg, tmp_path):
    train_job(train_cfg("model.quantization=nf4", "trainer.accelerator=gpu", "trainer.devices=1",
                        "trainer.precision=bf16-mixed", "trainer.max_steps=2", "trainer.max_epochs=-1",
                        out=tmp_path / "run"))
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "tli_adapter.json").exists()
    evaluate_job(eval_cfg(f"adapter={adapter}", "eval.layers=[32]", out=tmp_path / "eval_run"))
    summary = json.loads((tmp_path / "eval_run" / "eval" / "summary.json").read_text())
    assert summary["settings"]["quantization"] == "nf4"
