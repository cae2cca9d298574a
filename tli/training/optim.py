"""`optim.*`: AdamW on the trainable (adapter) weights and a warmup + decay schedule that scales with the run."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import torch

from tli.errors import ConfigError

log = logging.getLogger(__name__)
SCHEDULERS = ("linear", "cosine", "constant_with_warmup", "cosine_with_restarts", "polynomial", "constant")


@dataclass
class OptimConfig:
    lr: float = 2.0e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "linear"  # a transformers schedule name
    warmup_ratio: float = 0.1  # warmup as a fraction of the run's optimizer steps...
    warmup_steps: int | None = None  # ...unless a fixed number of steps is given (the paper: 50)

    def __post_init__(self):
        if not self.lr > 0:
            raise ConfigError(f"optim.lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} must be two numbers in [0, 1)")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"optim.scheduler={self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0 (or null: use warmup_ratio)")

    def warmup(self, total_steps: int) -> int:
        """Warmup steps for a run of `total_steps` optimizer steps; warns when warmup takes half the run or more."""
        steps = self.warmup_steps if self.warmup_steps is not None else round(self.warmup_ratio * total_steps)
        if total_steps > 0 and steps >= total_steps / 2:
            log.warning("optim: %d warmup steps in a run of %d optimizer steps: the learning rate peaks only at the "
                        "end (set optim.warmup_steps=null to use optim.warmup_ratio=%g)", steps, total_steps,
                        self.warmup_ratio)
        return steps

    def build(self, params, total_steps: int) -> dict:
        """Lightning's `configure_optimizers` return value."""
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=tuple(self.betas))
        schedule = Schedule(self.scheduler, self.warmup(total_steps), total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@functools.lru_cache(maxsize=16)
def _multiplier(name: str, warmup: int, total: int):
    """transformers' schedule `name` as a function of the step (built once per setting)."""
    from transformers import get_scheduler

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return get_scheduler(name, dummy, num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]


class Schedule:
    """The learning-rate multiplier at step t: transformers' schedule `name` over `total` steps. Its plain attributes
    are saved in checkpoints (LambdaLR keeps a callable object's __dict__), so a resumed run keeps the schedule it
    started with. `extend(total, step)` lengthens a run without a jump: from `step` on, the multiplier falls
    linearly from its current value to 0 at the new total (constant schedules stay constant)."""

    def __init__(self, name: str, warmup: int, total: int):
        self.name, self.warmup, self.total = name, warmup, total
        self.anchor: list | None = None  # [step, multiplier, planned total] where an extension took over

    def __call__(self, step: int) -> float:
        if self.anchor is None:
            return _multiplier(self.name, self.warmup, self.total)(step)
        start, value, planned = self.anchor
        if step < start:
            return _multiplier(self.name, self.warmup, planned)(step)
        if self.name == "constant" or (self.name == "constant_with_warmup" and start >= self.warmup):
            return value
        return value * max(0, self.total - step) / max(1, self.total - start)

    def extend(self, total: int, step: int) -> None:
        if total != self.total:
            self.anchor = [step, self(step), self.anchor[2] if self.anchor else self.total]
            self.total = total
