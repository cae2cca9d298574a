"""Behaviour-preserving terms, composable with any contrastive loss (`preserve.*`).

- `preserve.kl`: KL(p_base || p_adapted) of the next-token distributions on ordinary text (the base model's own
  samples in both languages, `tli.eval.base_text`), averaged over the text's tokens. The base distribution comes
  from the same model with its adapters disabled (`reference: live`, one extra no-gradient forward per step) or from
  a cache computed once at the start of training (`reference: cached`): the base's top-k log-probabilities per token
  and the log of the rest's mass, so the term is the KL between the two distributions coarsened to those k + 1
  outcomes (a lower bound of the full KL; equal to it when the rest's mass is 0). A 262k vocabulary makes full
  cached logits too large to keep, and makes the LM head the KL's main cost: `kl_positions` > 0 evaluates the head
  (and the KL) on that many of the step's token positions only, drawn anew each step (an unbiased estimate of the
  mean over positions).
- `preserve.retain`: the distance between the adapted and the base hidden states at the layers above k (Lens's
  "retain" term), on the same text (`retain_on: text`) or on the target-language words of the batch (`words`):
  `mse` = squared error relative to the base states' squared norm (scale-free: residual streams are large), or
  `cosine` = mean (1 - cosine) over tokens.
Both are exactly 0, with zero gradient, when the adapter is the identity (zero-initialised LoRA B).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tli.errors import ConfigError
from tli.model.embed import decoder_of

REFERENCES, RETAIN_METRICS, RETAIN_ON = ("live", "cached"), ("mse", "cosine"), ("text", "words")
VAL_TEXT = ("auto", "samples", "written", "both")


@dataclass
class PreserveConfig:
    """`preserve.*`: weights of the behaviour-preserving terms (0 = off) and the text they run on."""

    kl: float = 0.0  # weight of KL(base || adapted) on preservation text
    retain: float = 0.0  # weight of the hidden-state retain term
    retain_layers: Any = "above_target"  # above_target (k+1..L) | a list of hidden-state indices
    retain_metric: str = "mse"  # mse (relative to the base norm) | cosine
    retain_on: str = "text"  # text (preservation text) | words (the batch's target-language words)
    reference: str = "live"  # live: adapters disabled each step | cached: top-k base log-probs computed once
    top_k: int = 64  # with reference=cached
    text_batch_size: int = 4  # preservation sentences per training step (both languages, cycled in order)
    kl_positions: int = 0  # > 0: the KL on that many of the step's token positions, drawn per step (0: all of them)
    n_text: int = 64  # base-model samples per language for training (tli.eval.base_text)
    n_val_text: int = 16  # base-model samples per language for validation (val/nll/<lang>, the harm check)
    max_new_tokens: int = 32  # sampled tokens per sample (after a short opener)
    text_files: list[str] = field(default_factory=list)  # extra training text, one sentence per line
    # Validation text (val/nll/<lang>, the harm budget): written (sentences people wrote: the bundled
    # tli/lexicons/validation sample or val_src / val_tgt), samples (n_val_text base-model samples), both, or auto
    # (written where bundled or given, samples for other languages)
    val_text: str = "auto"
    val_src: str | None = None  # UTF-8 file of data.src_lang sentences, one per line (null: the bundled sample)
    val_tgt: str | None = None  # the same for data.tgt_lang

    def __post_init__(self):
        for key in ("kl", "retain"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"preserve.{key}={value!r} must be a weight >= 0 (0 = off)")
        checks = (("reference", REFERENCES), ("retain_metric", RETAIN_METRICS), ("retain_on", RETAIN_ON),
                  ("val_text", VAL_TEXT))
        for key, allowed in checks:
            if getattr(self, key) not in allowed:
                raise ConfigError(f"preserve.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if not (self.retain_layers == "above_target" or (isinstance(self.retain_layers, (list, tuple))
                                                         and all(isinstance(i, int) for i in self.retain_layers))):
            raise ConfigError(f"preserve.retain_layers={self.retain_layers!r} must be above_target or a list of "
                              "hidden-state indices")
        for key in ("top_k", "text_batch_size", "max_new_tokens"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"preserve.{key}={getattr(self, key)!r} must be a positive integer")
        for key in ("n_text", "n_val_text", "kl_positions"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ConfigError(f"preserve.{key}={getattr(self, key)!r} must be an integer >= 0")
        if (self.kl or (self.retain and self.retain_on == "text")) and not (self.n_text or self.text_files):
            raise ConfigError("preserve.kl / preserve.retain on text need text: preserve.n_text > 0 or "
                              "preserve.text_files")

    @property
    def active(self) -> bool:
        return bool(self.kl or self.retain)

    def layers(self, k: int, n_layers: int) -> list[int]:
        """The retain term's hidden-state indices."""
        if self.retain_layers == "above_target":
            return list(range(k + 1, n_layers + 1)) or [n_layers]
        bad = [i for i in self.retain_layers if not 0 <= i <= n_layers]
        if bad or not self.retain_layers:
            raise ConfigError(f"preserve.retain_layers={list(self.retain_layers)} must be non-empty hidden-state "
                              f"indices within 0..{n_layers}")
        return sorted(set(self.retain_layers))


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on final hidden states (..., D) -> (..., V), with the family's logit soft-capping if any."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    logits = base.get_output_embeddings()(hidden)
    cap = getattr(base.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def forward_text(model, batch: dict, layers: list[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Log-probabilities (N, V) of every scored position (`batch["scored"]`: (B, T) bool, the positions whose next
    token exists) and the hidden states (B, T, D) at `layers`, from one forward pass."""
    out = decoder_of(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=bool(layers), use_cache=False)
    logits = head_logits(model, out.last_hidden_state[batch["scored"]])  # (N, V)
    states = [out.hidden_states[j] for j in layers] if layers else []
    return F.log_softmax(logits.float(), -1), states


def kl_live(base_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_base || p) from log-probabilities (N, V)."""
    return (base_logp.exp() * (base_logp - logp)).sum(-1).mean()


def topk_reference(base_logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, V) base log-probs -> top-k log-probs (N, k), their token ids (N, k), log of the rest's mass (N,)."""
    top, idx = base_logp.topk(min(k, base_logp.shape[-1]), -1)
    rest = base_logp.scatter(-1, idx, float("-inf")).logsumexp(-1)  # computed as kl_cached computes the adapted one
    return top, idx, rest


def kl_cached(top: torch.Tensor, idx: torch.Tensor, rest: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL between the base and adapted distributions coarsened to the base's top-k tokens
    and "the rest": sum_top p (log p - log q) + p_rest (log p_rest - log q_rest)."""
    q_top = logp.gather(-1, idx)  # (N, k)
    q_rest = logp.scatter(-1, idx, float("-inf")).logsumexp(-1)  # (N,) log of the adapted rest mass
    top_part = (top.exp() * (top - q_top)).sum(-1)
    rest_part = torch.where(rest > float("-inf"), rest.exp() * (rest - q_rest), torch.zeros_like(rest))  # k = V: none
    return (top_part + rest_part).mean()


def retain_distance(states: list[torch.Tensor], base: list[torch.Tensor], mask: torch.Tensor,
                    metric: str) -> torch.Tensor:
    """Mean over layers of the distance between adapted and base states (B, T, D) on the `mask` (B, T) tokens."""
    values = []
    for h, b in zip(states, base, strict=True):
        h, b = h[mask].float(), b[mask].float()  # (N, D)
        if metric == "mse":
            values.append((h - b).pow(2).sum() / b.pow(2).sum().clamp(min=1e-12))
        else:
            values.append((1 - F.cosine_similarity(h, b, dim=-1)).mean())
    return torch.stack(values).mean()
