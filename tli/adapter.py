"""Adapters on disk: PEFT `save_pretrained` format plus a sidecar (`tli_adapter.json`) naming what they were
trained on (base model, revision, quantization, target layer, pooling, lexicon hashes), checked when loaded."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tli.io import atomic_write_json
from tli.modeling import ModelSpec

SIDECAR = "tli_adapter.json"


class AdapterError(ValueError):
    pass


def save_adapter(peft_model, out_dir: str | Path, sidecar: dict) -> Path:
    """Write adapter weights + sidecar into `out_dir` atomically (a crash leaves the previous adapter intact)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        peft_model.save_pretrained(tmp)
        atomic_write_json(tmp / SIDECAR, sidecar)
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


def read_sidecar(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir).expanduser()
    if not path.is_dir():
        raise AdapterError(f"adapter={str(adapter_dir)!r}: no such directory")
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"adapter={str(adapter_dir)!r} has no adapter_config.json: not a PEFT adapter directory")
    if not (path / SIDECAR).is_file():
        raise AdapterError(f"adapter={str(adapter_dir)!r} has no {SIDECAR}: was it written by tli's train.py?")
    return json.loads((path / SIDECAR).read_text(encoding="utf-8"))


def check_base_model(sidecar: dict, spec: ModelSpec, adapter_dir: str | Path) -> None:
    """An adapter only makes sense on the base model it was trained on."""
    trained = (sidecar.get("base_model"), sidecar.get("revision"))
    if trained != (spec.name_or_path, spec.revision):
        raise AdapterError(
            f"adapter {str(adapter_dir)!r} was trained on base model {trained[0]!r} (revision {trained[1]!r}), "
            f"but model.name_or_path={spec.name_or_path!r} (revision {spec.revision!r}) is loaded"
        )


def load_adapter(model, adapter_dir: str | Path, spec: ModelSpec):
    """Wrap `model` with the saved adapter (inference mode); returns (PeftModel, sidecar)."""
    from peft import PeftModel

    sidecar = read_sidecar(adapter_dir)
    check_base_model(sidecar, spec, adapter_dir)
    return PeftModel.from_pretrained(model, str(Path(adapter_dir).expanduser()), is_trainable=False), sidecar
