"""Adapters on disk: PEFT `save_pretrained` format plus the adapter card (`tli_adapter.json`, `tli.model.card`).

`save_adapter` writes both atomically. `open_adapters` reads and checks every adapter of a job once, before any
model weights load: the files (safetensors only: a pickle `adapter_model.bin` is never unpickled), finite weights
whose shapes match the card's LoRA rank, the base weights by fingerprint (computed once for all adapters), the
quantization, agreement of the probes, and the lexicons they were trained on. `attach` then puts an opened adapter
on the loaded base model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tli.errors import AdapterError
from tli.io import atomic_write_dir
from tli.model.card import CARD_FILE, AdapterCard
from tli.model.embed import Probe
from tli.model.loading import ModelSpec, weights_fingerprint

SIDECAR = CARD_FILE  # the name earlier versions used
WEIGHTS = "adapter_model.safetensors"
log = logging.getLogger(__name__)


def save_adapter(peft_model, out_dir: str | Path, card: AdapterCard) -> Path:
    """Write adapter weights + card into `out_dir` atomically: a crash or a full disk leaves the previous adapter
    intact and no partial directory behind."""

    def write(tmp: Path) -> None:
        peft_model.save_pretrained(tmp)
        card.save(tmp)

    return atomic_write_dir(out_dir, write, "the adapter", "; the checkpoints hold the run")


def read_sidecar(adapter_dir: str | Path) -> AdapterCard:
    """The adapter's card, after checking every file an adapter needs without running any of it (before any model
    weights load): adapter_config.json, the card, safetensors weights (pickles refused), finite values, LoRA shapes
    agreeing with the rank in adapter_config.json and the card."""
    path = Path(adapter_dir).expanduser()
    name = str(adapter_dir)
    if not path.is_dir():
        raise AdapterError(f"adapter={name!r}: no such directory")
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"adapter={name!r} has no adapter_config.json: not a PEFT adapter directory")
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise AdapterError(f"{path / 'adapter_config.json'} is not valid JSON ({err}): the adapter is damaged") from err
    card = AdapterCard.load(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise AdapterError(f"adapter={name!r} has only adapter_model.bin, a pickle: tli loads adapter weights from "
                               f"{WEIGHTS} only (a pickle can run code); re-save it with safe_serialization=True")
        raise AdapterError(f"adapter={name!r} has no {WEIGHTS}: the adapter's weights are missing")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # a header or body safetensors cannot parse: truncated or not safetensors at all
        raise AdapterError(f"{weights} is damaged ({str(err).splitlines()[0][:200]}): train the adapter again or "
                           "restore it") from err
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise AdapterError(f"{weights} holds non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. {bad[0]}: "
                           "the training diverged or the file is corrupt; train again or use another checkpoint")
    ranks = {config.get("r"), card.lora.get("r")} - {None}
    if len(ranks) > 1:
        raise AdapterError(f"adapter={name!r}: adapter_config.json has r={config.get('r')} but {CARD_FILE} records "
                           f"lora.r={card.lora.get('r')}: the files belong to different adapters")
    for key, t in tensors.items():
        dim = 0 if ".lora_A." in key else 1 if ".lora_B." in key else None
        if dim is not None and ranks and (t.dim() != 2 or t.shape[dim] not in ranks):
            raise AdapterError(f"{weights}: {key} has shape {tuple(t.shape)}, not rank {min(ranks)} as "
                               "adapter_config.json says: the files belong to different adapters")
    return card


@dataclass
class OpenedAdapters:
    """Adapters read and checked against the base model, before its weights load."""

    paths: list[str]
    cards: list[AdapterCard]
    probe: Probe  # the probe they were trained with (they agree)

    def names(self) -> list[str]:
        return ["run"] if len(self.paths) == 1 else [f"run{i}" for i in range(len(self.paths))]


def open_adapters(paths, spec: ModelSpec, probe: Probe, lexicons: dict | None = None,
                  read: Callable[[str], AdapterCard] = read_sidecar) -> OpenedAdapters:
    """Read and check `paths` (one adapter or a list) for `spec`: files, base weights (one fingerprint for all),
    quantization, probe agreement (the adapters' probe replaces `probe`), and, with `lexicons`
    (AuditResult.info()), a warning for each split that differs from the one an adapter was trained on. `read`: the
    card reader (tli.intervention.artifact.read_card also reads saved interventions, which are checked alike)."""
    if not paths:
        raise AdapterError("adapter is required: evaluate.py adapter=PATH (or adapter=[RUN1,RUN2] for several seeds)")
    paths = [str(a) for a in (paths if isinstance(paths, (list, tuple)) else [paths])]
    cards = [read(a) for a in paths]
    current = weights_fingerprint(spec) if any(c.base_fingerprint for c in cards) else None
    for path, card in zip(paths, cards, strict=True):
        check_base_model(card, spec, path, current)
        check_quantization(card, spec, path)
        if lexicons:
            check_lexicon_hashes(card, lexicons, path)
    return OpenedAdapters(paths, cards, adapter_probe(cards, paths, probe))


def check_base_model(card: AdapterCard, spec: ModelSpec, adapter_dir: str | Path, current: str | None) -> None:
    """An adapter only makes sense on the base weights it was trained on: compared by their fingerprint (`current`,
    of `spec`'s weights) where the card has one, so the same weights at another path pass and other weights at the
    same path do not; by name and revision otherwise."""
    trained = (card.base_model, card.revision)
    if card.base_fingerprint and current:
        if card.base_fingerprint != current:
            raise AdapterError(
                f"adapter {str(adapter_dir)!r} was trained on other base weights (fingerprint {card.base_fingerprint}, "
                f"model {trained[0]!r}) than model.name_or_path={spec.name_or_path!r} holds (fingerprint {current})"
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


def check_quantization(card: AdapterCard, spec: ModelSpec, adapter_dir: str | Path) -> None:
    if card.quantization is not None and card.quantization != spec.quantization:
        raise AdapterError(f"adapter {str(adapter_dir)!r} was trained on the base model in {card.quantization}, but "
                           f"model.quantization={spec.quantization}: set model.quantization={card.quantization}")


def check_lexicon_hashes(card: AdapterCard, info: dict, adapter: str) -> None:
    """Warn when the lexicons differ from those the adapter was trained on (naming both hashes)."""
    for split in ("train", "control"):
        trained, now = card.lexicons.get(split), info.get(split)
        if trained and now and trained["sha256"] != now["sha256"]:
            log.warning("%s lexicon %s (sha256 %s) differs from the one adapter %s was trained with: %s (sha256 %s)",
                        split, now["file"], now["sha256"][:12], adapter, trained["file"], trained["sha256"][:12])


def adapter_probe(cards: list[AdapterCard], adapters: list[str], probe: Probe) -> Probe:
    """The probe the adapters were trained with (target layer, pooling, template): they must agree with each other,
    and they replace the command line's pooling and template (an adapter is scored the way it was trained)."""
    trained = [c.probe for c in cards]
    for other, path in zip(trained[1:], adapters[1:], strict=True):
        if other != trained[0]:
            raise AdapterError(f"adapters {adapters[0]!r} and {path!r} were trained with different probes "
                               f"({trained[0].settings()} vs {other.settings()}): evaluate them separately")
    if (probe.pooling, probe.template) != (trained[0].pooling, trained[0].template):
        log.warning("adapter %s was trained with pooling=%s, template=%r: using those (not model.pooling=%s, "
                    "model.template=%r)", adapters[0], trained[0].pooling, trained[0].template, probe.pooling,
                    probe.template)
    return trained[0]


def bare(model):
    """A context in which `model` runs as the bare base model: a PeftModel's adapters disabled, else nothing."""
    from contextlib import nullcontext

    from peft import PeftModel

    return model.disable_adapter() if isinstance(model, PeftModel) else nullcontext()


def attach(model, path: str | Path, name: str = "default"):
    """Put the adapter at `path` on `model` (a base model, or a PeftModel holding other adapters) under `name`, make
    it the active one, inference mode. Returns the PeftModel."""
    from peft import PeftModel

    path = str(Path(path).expanduser())
    if isinstance(model, PeftModel):
        model.load_adapter(path, adapter_name=name, is_trainable=False)
    else:
        model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False)
    model.set_adapter(name)
    model.eval()
    return model
