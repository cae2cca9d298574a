"""LoRA adapters through peft, by default only on the blocks a layer-k loss can train (blocks 1..k)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tli.errors import ConfigError, ModelError
from tli.model.loading import find_decoder_layers, num_layers


@dataclass
class LoraConfig:
    """`lora.*`: LoRA adapters (peft). The paper: r 16, alpha 32, dropout 0.05 on q_proj and v_proj."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # Which decoder blocks (1-based, like hidden-state indices) get adapters: "up_to_target" = 1..k, "all", or a list.
    blocks: Any = "up_to_target"

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"lora.r={self.r!r} must be a positive integer")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha={self.alpha!r} must be > 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout={self.dropout!r} must be in [0, 1)")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ConfigError(f"lora.target_modules={self.target_modules!r} must be a non-empty list of names")
        if isinstance(self.blocks, str) and self.blocks not in ("up_to_target", "all"):
            raise ConfigError(f"lora.blocks={self.blocks!r}: use up_to_target, all, or a list of block numbers")

    def block_numbers(self, target_layer: int, n_layers: int) -> list[int]:
        """1-based decoder blocks that get adapters."""
        if self.blocks == "up_to_target":
            return list(range(1, target_layer + 1))
        if self.blocks == "all":
            return list(range(1, n_layers + 1))
        bad = [b for b in self.blocks if not 1 <= b <= n_layers]
        if bad or not self.blocks:
            raise ConfigError(f"lora.blocks={list(self.blocks)} must be non-empty block numbers within 1..{n_layers}")
        return sorted(set(self.blocks))


def apply_lora(model: nn.Module, spec: LoraConfig, target_layer: int):
    """Wrap `model` in a PeftModel with LoRA on `spec.target_modules` of the chosen blocks; the base is frozen."""
    import peft

    layers_name, layers = find_decoder_layers(model)
    blocks = spec.block_numbers(target_layer, num_layers(model.config))
    # bitsandbytes' Linear4bit / Linear8bitLt subclass nn.Linear
    present = {name.rsplit(".", 1)[-1] for name, m in layers[0].named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in spec.target_modules if t not in present]
    if missing:
        raise ModelError(
            f"lora.target_modules={list(spec.target_modules)}: {missing} not found in the decoder blocks; "
            f"linear modules available: {sorted(present)}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    config = peft.LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        layers_to_transform=[b - 1 for b in blocks],  # peft counts blocks from 0
        layers_pattern=layers_name.rsplit(".", 1)[-1],
        bias="none",
    )
    return peft.get_peft_model(model, config)


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable (adapter) parameters by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
