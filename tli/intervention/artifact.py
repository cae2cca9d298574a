"""A saved intervention: `<eval dir>/intervention/` with `map.safetensors` (one tensor per hidden-state index,
`layer.<i>`: M (D, D) of a linear map in row form, or v (D,) of a mean shift) and `intervention.json`, an
`InterventionCard`: the adapter card's fields (base model and fingerprint, quantization, probe, lexicon hashes, seed,
and the `split` the map was fitted on: crossfit, fold, derange, val_fraction), so that it is evaluated, pooled
across folds and compared as a recipe exactly as an adapter is, plus `intervention` (kind, indices, solver, update,
position, the chosen alpha, the validation table of every alpha tried, fit_on, counts and timings).

`save_intervention` writes the directory atomically (a temporary sibling renamed into place). `read_intervention`
checks every file before any model weights load and returns the card and the `Intervention`; a missing, damaged
or inconsistent file is one line naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tli.errors import AdapterError
from tli.intervention.maps import KINDS, Intervention
from tli.io import atomic_write_dir
from tli.model.card import AdapterCard

CARD_FILE = "intervention.json"
MAP_FILE = "map.safetensors"


@dataclass(frozen=True)
class InterventionCard(AdapterCard):
    """The adapter card of a map: `lora`, `loss` and `preserve` stay empty; `intervention` says what it is."""

    intervention: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.intervention.get("type", "")

    def save(self, directory: str | Path) -> Path:
        from tli.io import atomic_write_json

        return atomic_write_json(Path(directory) / CARD_FILE, self.to_dict())

    @classmethod
    def load(cls, directory: str | Path) -> InterventionCard:
        path = Path(directory).expanduser() / CARD_FILE
        if not path.is_file():
            raise AdapterError(f"{str(directory)!r} has no {CARD_FILE}: not a saved intervention (evaluate.py "
                               "intervention=... writes <eval dir>/intervention/)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise AdapterError(f"{path} is not valid JSON ({err}): the saved intervention is damaged") from err
        if not isinstance(data, dict) or not isinstance(data.get("intervention"), dict):
            raise AdapterError(f"{path} is not an intervention card (no 'intervention' object)")
        card = cls.from_dict(data, where=str(path))
        if card.kind not in KINDS or not isinstance(card.intervention.get("layers"), list) \
                or not isinstance(card.intervention.get("alpha"), (int, float)):
            raise AdapterError(f"{path}: intervention.type must be one of {', '.join(KINDS)} with its layers and "
                               "alpha: the card is damaged")
        return card


def is_intervention(directory: str | Path) -> bool:
    return (Path(directory).expanduser() / CARD_FILE).is_file()


def save_intervention(intervention: Intervention, card: InterventionCard, out_dir: str | Path) -> Path:
    """Write map.safetensors and intervention.json into `out_dir` atomically (an earlier map there is replaced)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({f"layer.{i}": t.contiguous() for i, t in intervention.tensors.items()}, str(tmp / MAP_FILE),
                  metadata={"type": intervention.kind})
        card.save(tmp)

    return atomic_write_dir(out_dir, write, "the intervention")


def read_intervention(directory: str | Path) -> tuple[InterventionCard, Intervention]:
    """The card and the intervention of a saved map, after checking the files (tensors finite, one per listed index,
    shapes (D, D) or (D,) as the kind says)."""
    from safetensors import safe_open

    path = Path(directory).expanduser()
    if not path.is_dir():
        raise AdapterError(f"intervention.load={str(directory)!r}: no such directory")
    card = InterventionCard.load(path)
    weights = path / MAP_FILE
    if not weights.is_file():
        raise AdapterError(f"{weights} is missing: the saved intervention has no map")
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # a header or body safetensors cannot parse: truncated or not safetensors at all
        raise AdapterError(f"{weights} is damaged ({str(err).splitlines()[0][:200]}): fit the map again") from err
    layers = card.intervention["layers"]
    if sorted(tensors) != sorted(f"layer.{i}" for i in layers):
        raise AdapterError(f"{weights} holds {sorted(tensors)} but {CARD_FILE} lists layers {layers}: the files "
                           "belong to different interventions")
    by_layer = {int(i): tensors[f"layer.{i}"].float() for i in layers}
    for i, t in by_layer.items():
        square = t.dim() == 2 and t.shape[0] == t.shape[1]
        if (card.kind == "linear_map" and not square) or (card.kind == "mean_shift" and t.dim() != 1):
            raise AdapterError(f"{weights}: layer.{i} has shape {tuple(t.shape)}, not a {card.kind}'s "
                               f"{'(D, D)' if card.kind == 'linear_map' else '(D,)'}")
        if not t.isfinite().all() or (card.kind == "mean_shift" and float(t.norm()) == 0.0):
            raise AdapterError(f"{weights}: layer.{i} holds non-finite values (or a zero shift): fit the map again")
    iv = card.intervention
    return card, Intervention(card.kind, by_layer, float(iv["alpha"]), iv.get("update", "add"),
                              iv.get("position", "query"))


def read_intervention_card(directory: str | Path) -> InterventionCard:
    """The card of a saved map after every check of `read_intervention` (for `tli.model.adapter.open_adapters`)."""
    return read_intervention(directory)[0]



def read_card(directory: str | Path) -> AdapterCard:
    """The card of an adapter (`tli.model.adapter.read_sidecar`) or of a saved intervention, after the checks of its
    files: `open_adapters(..., read=read_card)` opens both, to be scored, pooled and compared alike."""
    from tli.model.adapter import read_sidecar

    return read_intervention_card(directory) if is_intervention(directory) else read_sidecar(directory)
