"""The adapter card (`tli_adapter.json` beside a PEFT adapter): what an adapter was trained on and how it reads words.

One class writes and reads it, like peft's `LoraConfig`: `AdapterCard.save(dir)` / `AdapterCard.load(dir)`. The card
is also the one statement of "what defines a run": the training job builds it, checkpoints compare it on resume
(`defining()`), summaries record its provenance (`provenance()`). Cards written by earlier tli versions (version 1: a
plain dict with a duplicate `model` key, no `card_version`) keep loading; keys a card does not know are kept in
`extra` and written back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tli.errors import AdapterError
from tli.io import atomic_write_json
from tli.model.embed import INDEXING, Probe

CARD_FILE = "tli_adapter.json"
CARD_VERSION = 2


@dataclass(frozen=True)
class AdapterCard:
    base_model: str  # model.name_or_path the adapter was trained on
    target_layer: int  # the probe: hidden-state index k, pooling, template
    revision: str | None = None
    base_fingerprint: str | None = None  # hash of the base weight files (tli.model.loading.weights_fingerprint)
    quantization: str | None = None  # None (old cards): not checked
    pooling: str = "mean"
    template: str = "{word}"
    indexing: str = INDEXING
    lora: dict = field(default_factory=dict)  # lora.* (r, alpha, dropout, target_modules, blocks)
    loss: dict = field(default_factory=dict)  # the loss's settings (name and options)
    preserve: dict = field(default_factory=dict)  # behaviour-preserving terms and their weights (none yet)
    lexicons: dict = field(default_factory=dict)  # split -> {file, sha256, pairs, ...} (AuditResult.info())
    split: dict = field(default_factory=dict)  # which training pairs it saw: crossfit K, fold, derange, val_fraction
    src_field: str = "source"
    tgt_field: str = "target"
    metrics: dict = field(default_factory=dict)  # metrics.* the run was scored with
    seed: int | None = None
    checkpoint: str | None = None  # which of the run's adapters this is: "last" or "best"
    resumed_with_changes: dict = field(default_factory=dict)  # setting -> [old, new] (train.allow_changes=true)
    tli_version: str | None = None
    card_version: int = CARD_VERSION
    extra: dict = field(default_factory=dict)  # keys of other versions, kept as they were

    @property
    def probe(self) -> Probe:
        return Probe(target_layer=self.target_layer, pooling=self.pooling, template=self.template)

    def provenance(self) -> dict:
        """What every summary records about the model and data (the keys summaries have always used)."""
        return {"model": self.base_model, "revision": self.revision, "quantization": self.quantization,
                "pooling": self.pooling, "template": self.template, "indexing": self.indexing,
                "lexicons": self.lexicons, "metrics": self.metrics, "seed": self.seed,
                "tli_version": self.tli_version}

    def defining(self) -> dict:
        """The settings that define what the adapter computes (compared on resume): paths, hashes of files that may
        move, the version and the record of past changes excluded; lexicons compared by content."""
        return {"base_model": self.base_model, "revision": self.revision, "quantization": self.quantization,
                "probe": self.probe.settings(), "lora": self.lora, "loss": self.loss, "preserve": self.preserve,
                "lexicons": {s: info.get("sha256") for s, info in self.lexicons.items()}, "split": self.split,
                "fields": [self.src_field, self.tgt_field], "metrics": self.metrics, "seed": self.seed}

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d.pop("extra"), **d}

    def save(self, directory: str | Path) -> Path:
        return atomic_write_json(Path(directory) / CARD_FILE, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, where: str = "adapter card") -> AdapterCard:
        names = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("base_model", "target_layer") if k not in data]
        if missing:
            raise AdapterError(f"{where} lacks {', '.join(missing)}: was it written by tli's train.py?")
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "model"}  # v1 repeated base_model as model
        known.setdefault("card_version", 1 if "card_version" not in data else data["card_version"])
        try:
            return cls(**known, extra=extra)
        except TypeError as err:
            raise AdapterError(f"{where} is not an adapter card ({err})") from err

    @classmethod
    def load(cls, directory: str | Path) -> AdapterCard:
        path = Path(directory).expanduser() / CARD_FILE
        if not path.is_file():
            raise AdapterError(f"adapter={str(directory)!r} has no {CARD_FILE}: was it written by tli's train.py?")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise AdapterError(f"{path} is not valid JSON ({err}): the adapter is damaged") from err
        if not isinstance(data, dict):
            raise AdapterError(f"{path} is not an adapter card (a JSON object was expected)")
        return cls.from_dict(data, where=str(path))

    def with_updates(self, **changes: Any) -> AdapterCard:
        from dataclasses import replace

        return replace(self, **changes)
