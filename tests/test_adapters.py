"""Adapters are checked (or their settings applied) before any weights load: base weights by fingerprint,
quantization, probe (target layer, pooling, template), and every file an adapter needs."""

import json
import logging
import shutil

import pytest
from helpers import compose, fast_cpu, job_overrides
from safetensors.torch import load_file, save_file

import tli.jobs.evaluate
import tli.jobs.scan
from tli.errors import AdapterError
from tli.jobs.evaluate import evaluate_job
from tli.jobs.scan import scan_job
from tli.jobs.train import train_job
from tli.model.loading import ModelSpec, weights_fingerprint


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_dir, small_lexicons):
    out = tmp_path_factory.mktemp("run")
    train_job(compose("train", fast_cpu([*job_overrides(out, tiny_dir, small_lexicons), "data.batch_size=8",
                                         "data.val_fraction=0.25", "debug=fdr", "lora.r=4", "model.pooling=mean_all"])))
    return out / "adapter"


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the adapter was checked")

    for job in (tli.jobs.scan, tli.jobs.evaluate):
        monkeypatch.setattr(job, "load_model", refuse)


def _scan(scan_cfg, out, model_dir, adapter, *extra):
    return scan_job(scan_cfg(f"model.name_or_path={model_dir}", f"adapter={adapter}", "scan.layers=[2]", *extra,
                             out=out))


def _copy(adapter, tmp_path, name="copy"):
    return shutil.copytree(adapter, tmp_path / name)


def test_the_sidecar_records_the_base_weights_fingerprint(adapter, tiny_dir):
    sidecar = json.loads((adapter / "tli_adapter.json").read_text())
    assert sidecar["base_fingerprint"] == weights_fingerprint(ModelSpec(name_or_path=str(tiny_dir)))
    assert len(sidecar["base_fingerprint"]) == 32 and sidecar["pooling"] == "mean_all"


def test_same_weights_at_another_path_pass_other_weights_at_the_same_path_fail(adapter, tiny_dir, tmp_path,
                                                                                 scan_cfg, caplog):
    moved = shutil.copytree(tiny_dir, tmp_path / "moved-model")
    with caplog.at_level(logging.WARNING, logger="tli.model.adapter"):
        summary = _scan(scan_cfg, tmp_path / "a", moved, adapter)
    assert summary["settings"]["pooling"] == "mean_all"  # the adapter's pooling, not the command line's "mean"
    assert "trained with pooling=mean_all" in caplog.text
    weights = load_file(moved / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * 2  # other weights, same path
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AdapterError, match="was trained on other base weights"):
        _scan(scan_cfg, tmp_path / "b", moved, adapter)


def test_a_quantization_mismatch_is_refused(adapter, tiny_dir, tmp_path, scan_cfg, no_weights):
    with pytest.raises(AdapterError, match="trained on the base model in nf4, but model.quantization=none: set "
                                           "model.quantization=nf4"):
        _scan(scan_cfg, tmp_path, tiny_dir, adapter, "model.quantization=none")


def test_adapters_with_different_probes_are_refused(adapter, tmp_path, eval_cfg, no_weights):
    other = _copy(adapter, tmp_path)
    sidecar = json.loads((other / "tli_adapter.json").read_text())
    sidecar["target_layer"] = 3
    (other / "tli_adapter.json").write_text(json.dumps(sidecar))
    with pytest.raises(AdapterError, match="were trained with different probes"):
        evaluate_job(eval_cfg(f"adapter=[{adapter},{other}]"))


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "adapter_model.safetensors").unlink(), "has no adapter_model.safetensors"),
    (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10), "adapter_model.safetensors is "
                                                                                     "damaged"),
    (lambda d: (d / "tli_adapter.json").write_text("{not json"), "tli_adapter.json is not valid JSON"),
    (lambda d: (d / "adapter_config.json").unlink(), "has no adapter_config.json"),
])
def test_broken_adapter_files_are_named_before_weights_load(adapter, tiny_dir, tmp_path, scan_cfg, no_weights,
                                                            damage, message):
    broken = _copy(adapter, tmp_path)
    damage(broken)
    with pytest.raises(AdapterError, match=message) as err:
        _scan(scan_cfg, tmp_path / "out", tiny_dir, broken)
    assert str(broken) in str(err.value)
