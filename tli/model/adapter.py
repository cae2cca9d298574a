"""Adapters on disk: PEFT `save_pretrained` format plus a sidecar (`tli_adapter.json`) naming what they were
trained on (base model, revision, quantization, target layer, pooling, lexicon hashes), checked when loaded."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tli.errors import AdapterError
from tli.io import atomic_write_json, share_like_files
from tli.model.embed import Probe
from tli.model.loading import ModelSpec, weights_fingerprint

SIDECAR = "tli_adapter.json"
log = logging.getLogger(__name__)



def save_adapter(peft_model, out_dir: str | Path, sidecar: dict) -> Path:
    """Write adapter weights + sidecar into `out_dir` atomically (a crash leaves the previous adapter intact)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = share_like_files(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        peft_model.save_pretrained(tmp)
        atomic_write_json(tmp / SIDECAR, sidecar)
        share_like_files(tmp, tree=True)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def read_sidecar(adapter_dir: str | Path) -> dict:
    """The adapter's sidecar, after checking every file an adapter needs (before any model weights load)."""
    path = Path(adapter_dir).expanduser()
    if not path.is_dir():
        raise AdapterError(f"adapter={str(adapter_dir)!r}: no such directory")
    for name, what in (("adapter_config.json", "not a PEFT adapter directory"),
                       (SIDECAR, "was it written by tli's train.py?")):
        if not (path / name).is_file():
            raise AdapterError(f"adapter={str(adapter_dir)!r} has no {name}: {what}")
        try:
            content = json.loads((path / name).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise AdapterError(f"{path / name} is not valid JSON ({err}): the adapter is damaged") from err
    weights = next((path / w for w in WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        raise AdapterError(f"adapter={str(adapter_dir)!r} has no {WEIGHTS[0]}: the adapter's weights are missing")
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as err:  # a header safetensors cannot parse: truncated or not safetensors at all
            raise AdapterError(f"{weights} is damaged ({err}): train the adapter again or restore it") from err
    return content


def check_base_model(sidecar: dict, spec: ModelSpec, adapter_dir: str | Path) -> None:
    """An adapter only makes sense on the base weights it was trained on: compared by their fingerprint (a hash of
    the weight files) where the sidecar has one, so the same weights at another path pass and other weights at the
    same path do not; by name and revision otherwise."""
    trained = (sidecar.get("base_model"), sidecar.get("revision"))
    recorded = sidecar.get("base_fingerprint")
    current = weights_fingerprint(spec) if recorded else None
    if recorded and current:
        if recorded != current:
            raise AdapterError(
                f"adapter {str(adapter_dir)!r} was trained on other base weights (fingerprint {recorded}, model "
                f"{trained[0]!r}) than model.name_or_path={spec.name_or_path!r} holds (fingerprint {current})"
            )
        if trained != (spec.name_or_path, spec.revision):
            log.info("adapter %s: base model %s has the weights it was trained on (at %s)", adapter_dir,
                     spec.name_or_path, trained[0])
        return
    if trained != (spec.name_or_path, spec.revision):
        raise AdapterError(
            f"adapter {str(adapter_dir)!r} was trained on base model {trained[0]!r} (revision {trained[1]!r}), "
            f"but model.name_or_path={spec.name_or_path!r} (revision {spec.revision!r}) is loaded"
        )


def adapter_probe(sidecars: list[dict], adapters: list[str], probe: Probe) -> Probe:
    """The probe the adapters were trained with (target layer, pooling, template): they must agree with each other,
    and they replace the command line's pooling and template (an adapter is scored the way it was trained)."""
    trained = [Probe(target_layer=s["target_layer"], pooling=s.get("pooling", "mean"),
                     template=s.get("template", "{word}")) for s in sidecars]
    for other, path in zip(trained[1:], adapters[1:], strict=True):
        if other != trained[0]:
            raise AdapterError(f"adapters {adapters[0]!r} and {path!r} were trained with different probes "
                               f"({trained[0].settings()} vs {other.settings()}): evaluate them separately")
    if (probe.pooling, probe.template) != (trained[0].pooling, trained[0].template):
        log.warning("adapter %s was trained with pooling=%s, template=%r: using those (not model.pooling=%s, "
                    "model.template=%r)", adapters[0], trained[0].pooling, trained[0].template, probe.pooling,
                    probe.template)
    return trained[0]


def check_quantization(sidecar: dict, spec: ModelSpec, adapter_dir: str | Path) -> None:
    trained = sidecar.get("quantization")
    if trained is not None and trained != spec.quantization:
        raise AdapterError(f"adapter {str(adapter_dir)!r} was trained on the base model in {trained}, but "
                           f"model.quantization={spec.quantization}: set model.quantization={trained}")


def load_adapter(model, adapter_dir: str | Path, spec: ModelSpec):
    """Wrap `model` with the saved adapter (inference mode); returns (PeftModel, sidecar)."""
    from peft import PeftModel

    sidecar = read_sidecar(adapter_dir)
    check_base_model(sidecar, spec, adapter_dir)
    return PeftModel.from_pretrained(model, str(Path(adapter_dir).expanduser()), is_trainable=False), sidecar
