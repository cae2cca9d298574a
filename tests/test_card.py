"""The adapter card: one class writes and reads tli_adapter.json (old sidecars keep loading), and every adapter is
opened and checked once, before any weights load: safetensors only, finite weights, shapes that fit its rank. A full
disk while exporting an adapter is one line and leaves nothing half-written."""

import json
import shutil
import subprocess
import uuid

import pytest
import torch
from helpers import FAST_CPU, compose, job_overrides
from safetensors.torch import load_file, save_file

import tli.jobs.evaluate
import tli.jobs.scan
from tli.errors import AdapterError, RunDirError
from tli.model.adapter import open_adapters, save_adapter
from tli.model.card import CARD_FILE, CARD_VERSION, AdapterCard
from tli.model.embed import Probe
from tli.model.loading import ModelSpec

# A sidecar as tli 0.1 wrote it (a plain dict; `model` repeated `base_model`; no card_version).
V1_SIDECAR = {"model": "tli-tiny", "revision": None, "quantization": "nf4", "pooling": "mean", "template": "{word}",
              "indexing": "hidden-state index ...", "lexicons": {"train": {"file": "t.json", "sha256": "ab" * 32}},
              "metrics": {"centre": True}, "seed": 1, "tli_version": "0.1.0", "base_model": "tli-tiny",
              "base_fingerprint": "f" * 32, "target_layer": 2, "lora": {"r": 4}, "loss": {"name": "infonce"},
              "src_field": "source", "tgt_field": "target", "resumed_with_changes": {}, "checkpoint": "last",
              "a_key_from_the_future": [1, 2]}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_dir, small_lexicons):
    from tli.jobs.train import train_job

    out = tmp_path_factory.mktemp("run")
    train_job(compose("train", [FAST_CPU, *job_overrides(out, tiny_dir, small_lexicons), "data.batch_size=8",
                                "data.val_fraction=0.25", "debug=fdr", "lora.r=4"]))
    return out / "adapter"


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the adapter was checked")

    for job in (tli.jobs.scan, tli.jobs.evaluate):
        monkeypatch.setattr(job, "load_model", refuse)


def test_an_old_sidecar_loads_and_round_trips(tmp_path):
    (tmp_path / CARD_FILE).write_text(json.dumps(V1_SIDECAR))
    card = AdapterCard.load(tmp_path)
    assert card.card_version == 1 and card.base_model == "tli-tiny" and card.target_layer == 2
    assert card.probe == Probe(target_layer=2, pooling="mean", template="{word}")
    assert card.lora == {"r": 4} and card.preserve == {} and card.extra == {"a_key_from_the_future": [1, 2]}
    assert card.provenance()["model"] == "tli-tiny" and card.provenance()["lexicons"] == V1_SIDECAR["lexicons"]
    card.save(tmp_path / "again")
    again = json.loads((tmp_path / "again" / CARD_FILE).read_text())
    assert again["a_key_from_the_future"] == [1, 2] and again["card_version"] == 1
    assert AdapterCard.load(tmp_path / "again") == card


def test_a_card_without_its_required_keys_is_refused(tmp_path):
    (tmp_path / CARD_FILE).write_text(json.dumps({"pooling": "mean"}))
    with pytest.raises(AdapterError, match="lacks base_model, target_layer"):
        AdapterCard.load(tmp_path)


def test_training_writes_the_current_card(adapter, tiny_dir):
    card = AdapterCard.load(adapter)
    assert card.card_version == CARD_VERSION and card.checkpoint == "last" and card.extra == {}
    assert card.lora["r"] == 4 and card.loss["name"] == "infonce" and card.quantization == "nf4"
    assert len(card.lexicons["train"]["sha256"]) == 64 and len(card.base_fingerprint) == 32
    assert "model" not in json.loads((adapter / CARD_FILE).read_text())  # no duplicate of base_model


def _poisoned(adapter, tmp_path, how):
    bad = shutil.copytree(adapter, tmp_path / f"bad-{how}")
    weights = load_file(bad / "adapter_model.safetensors")
    key = next(k for k in weights if ".lora_A." in k)
    if how == "nan":
        weights[key] = torch.full_like(weights[key], float("nan"))
        save_file(weights, bad / "adapter_model.safetensors", metadata={"format": "pt"})
    elif how == "shape":
        weights[key] = torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])
        save_file(weights, bad / "adapter_model.safetensors", metadata={"format": "pt"})
    elif how == "pickle":
        torch.save(weights, bad / "adapter_model.bin")
        (bad / "adapter_model.safetensors").unlink()
    elif how == "rank":
        config = json.loads((bad / "adapter_config.json").read_text())
        (bad / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    return bad


@pytest.mark.parametrize("how,message", [
    ("nan", "holds non-finite values"),
    ("shape", "not rank 4"),
    ("pickle", "has only adapter_model.bin, a pickle"),
    ("rank", "adapter_config.json has r=8 but tli_adapter.json records lora.r=4"),
])
def test_poisoned_adapters_are_refused_before_weights_load(adapter, tiny_dir, small_lexicons, tmp_path, no_weights,
                                                           how, message):
    bad = _poisoned(adapter, tmp_path, how)
    cfg = compose("evaluate", [*job_overrides(tmp_path / "out", tiny_dir, small_lexicons), f"adapter={bad}"])
    with pytest.raises(AdapterError, match=message) as err:
        tli.jobs.evaluate.evaluate_job(cfg)
    assert str(bad) in str(err.value)


def test_open_adapters_fingerprints_the_base_once(adapter, tiny_dir, monkeypatch):
    import tli.model.adapter

    calls = []
    real = tli.model.adapter.weights_fingerprint
    monkeypatch.setattr(tli.model.adapter, "weights_fingerprint", lambda spec: calls.append(1) or real(spec))
    opened = open_adapters([str(adapter), str(adapter)], ModelSpec(name_or_path=str(tiny_dir)), Probe())
    assert len(calls) == 1 and opened.names() == ["run0", "run1"] and opened.probe.target_layer == 2


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB filesystem (tmpfs), or skip where mounting is not allowed."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_exporting_the_adapter_is_one_line_and_nothing_half_written(adapter, tiny_dir, tiny_disk):
    from peft import PeftModel

    from tli.model.loading import load_model

    base, _ = load_model(ModelSpec(name_or_path=str(tiny_dir), quantization="none"), device="cpu")
    model = PeftModel.from_pretrained(base, str(adapter))
    (tiny_disk / "filler").write_bytes(b"\0" * (60 * 1024))  # leave a few KiB: less than the adapter needs
    with pytest.raises(RunDirError, match=r"could not write the adapter to .*adapter.*is the disk full\? Nothing was "
                                          "half-written"):
        save_adapter(model, tiny_disk / "adapter", AdapterCard.load(adapter))
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]
