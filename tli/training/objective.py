"""What a training step optimises besides the contrastive loss itself: the options that every contrastive loss shares
(`loss.anchor`, `loss.centred`, `loss.weight`, `loss.translation_lm`) and the step schedule (`train.schedule`).

- `loss.anchor=base`: the target-language side of the pairs is embedded by the base model (adapters disabled, no
  gradient), so only the source language moves (mid-align's detached English side).
- `loss.centred=true`: the loss sees each language's vectors minus a running mean of that language (an exponential
  moving average over training batches, momentum `loss.centre_momentum`, no gradient through it; the first batch
  initialises it), which is what the centred metrics score: a shift of a whole language earns nothing.
- `loss.weight`: the contrastive term's weight (0: no alignment term, e.g. the translation-LM baseline alone);
  `loss.translation_lm`: the weight of the causal-LM loss on few-shot translation prompts built from the batch's pairs
  (both directions, answer tokens only; tli.training.translation_lm), `loss.translation_shots` shots each.
- `train.schedule`: `sum` adds every weighted term at every step; `alternate` takes the alignment group (contrastive
  + translation LM) on even optimizer steps and the preservation group (KL + retain) on odd ones (mid-align).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tli.errors import ConfigError

ANCHORS, SCHEDULES = ("none", "base"), ("sum", "alternate")
ALIGN_GROUP, PRESERVE_GROUP = ("align", "translation_lm"), ("kl", "retain")


@dataclass
class AlignOptions:
    """The `loss.*` keys shared by every contrastive loss (popped before the loss's own constructor sees them)."""

    anchor: str = "none"
    centred: bool = False
    centre_momentum: float = 0.9
    weight: float = 1.0
    translation_lm: float = 0.0
    translation_shots: int = 3

    def __post_init__(self):
        if self.anchor not in ANCHORS:
            raise ConfigError(f"loss.anchor={self.anchor!r} is not one of {', '.join(ANCHORS)}")
        if not isinstance(self.centred, bool):
            raise ConfigError(f"loss.centred={self.centred!r} must be true or false")
        if not 0 <= self.centre_momentum < 1:
            raise ConfigError(f"loss.centre_momentum={self.centre_momentum!r} must be in [0, 1)")
        for key in ("weight", "translation_lm"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"loss.{key}={value!r} must be a weight >= 0")
        if not isinstance(self.translation_shots, int) or isinstance(self.translation_shots, bool) \
                or self.translation_shots < 0:
            raise ConfigError(f"loss.translation_shots={self.translation_shots!r} must be an integer >= 0")

    @classmethod
    def pop_from(cls, options: dict) -> AlignOptions:
        """Remove this class's keys from a `loss.*` dict and build it."""
        return cls(**{k: options.pop(k) for k in list(options) if k in cls.__dataclass_fields__})

    def settings(self) -> dict:
        return asdict(self)


class RunningCentre:
    """Per-language running means (D,) of the layer-k vectors, no gradient; saved in checkpoints (exact resume)."""

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.means: dict[str, torch.Tensor] = {}

    def __call__(self, vecs: torch.Tensor, side: str) -> torch.Tensor:
        """(B, D) -> (B, D) minus the running mean of `side`, updated with this batch first."""
        batch = vecs.detach().float().mean(0)
        old = self.means.get(side)
        new = batch if old is None else self.momentum * old.to(batch.device) + (1 - self.momentum) * batch
        self.means[side] = new
        return vecs - new.to(vecs.dtype)

    def state_dict(self) -> dict:
        return {side: m.cpu() for side, m in self.means.items()}

    def load_state_dict(self, state: dict) -> None:
        self.means = dict(state)


def active_groups(schedule: str, step: int, has_preservation: bool) -> tuple[str, ...]:
    """The term names a step optimises: every term (`sum`), or alternately the alignment and preservation groups."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "sum" or not has_preservation:
        return ALIGN_GROUP + PRESERVE_GROUP
    return ALIGN_GROUP if step % 2 == 0 else PRESERVE_GROUP
