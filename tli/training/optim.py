"""`optim.*`: AdamW on the trainable (adapter) weights and a warmup + decay schedule that scales with the run."""

from __future__ import annotations

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
        from transformers import get_scheduler

        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=tuple(self.betas))
        scheduler = get_scheduler(self.scheduler, optimizer, num_warmup_steps=self.warmup(total_steps),
                                  num_training_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
