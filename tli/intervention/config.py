"""`intervention.*` (conf/intervention/linear_map.yaml, mean_shift.yaml): what to fit, where to apply it, how alpha
is chosen. Range checks run at start-up (before any weights load) and name the key."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tli.errors import ConfigError

TYPES = ("none", "linear_map", "mean_shift")
SOLVERS = ("ridge", "procrustes")
UPDATES = ("add", "towards")  # add: h + a W h (INCLINE); towards: h + a (W h - h)
POSITIONS = ("query", "last")  # the query word's tokens, or the prompt's last token (INCLINE)
FIT_ON = ("pairs", "deranged")
SELECT_ON = ("gold_logprob", "accuracy")
HARM_TEXT = ("auto", "samples", "written", "both")  # as preserve.val_text (tli.training.preserve)


@dataclass
class InterventionConfig:
    """`intervention.*`; `type: none` (default) evaluates adapters as before."""

    type: str = "none"  # none | linear_map | mean_shift
    layers: Any = "target"  # target (model.target_layer) | all (1..L) | a list of hidden-state indices 0..L
    solver: str = "ridge"  # linear_map: ridge | procrustes (orthogonal, scipy.linalg.orthogonal_procrustes)
    ridge: float = 1.0  # ridge lambda on the L2-normalised word vectors; 0: least squares (INCLINE's lstsq)
    update: str = "add"  # linear_map: add (h + a W h, INCLINE) | towards (h + a (W h - h))
    alphas: list[float] = field(default_factory=lambda: [-1.0, -0.5, -0.25, -0.1, -0.05, 0.05, 0.1, 0.25, 0.5,
                                                         1.0])  # both signs; 0 always added
    position: str = "query"  # query (the query word's tokens) | last (the prompt's last token, INCLINE)
    fit_on: str = "pairs"  # pairs | deranged (the matched null: targets deranged, tli.data.crossfit.derange)
    select_on: str = "gold_logprob"  # what chooses alpha on the validation pairs: gold_logprob | accuracy
    val_text: int = 16  # base-model samples in the source language for the harm budget (objective.max_harm)
    # what the harm budget scores, as preserve.val_text: written (the bundled tli/lexicons/validation sample of the
    # source language, or harm_file), samples (val_text base-model samples), both, or auto (written where bundled or
    # given, samples otherwise)
    harm_text: str = "auto"
    harm_file: str | None = None  # UTF-8 source-language sentences, one per line (null: the bundled sample)
    max_new_tokens: int = 32  # tokens per sample (tli.eval.base_text; preserve.* defaults: the cache is shared)
    load: str | None = None  # a saved map directory (<eval dir>/intervention): evaluate it instead of fitting
    fit_only: bool = False  # fit, choose alpha and save the map; no before/after report (for sweeps)

    def __post_init__(self):
        for key, allowed in (("type", TYPES), ("solver", SOLVERS), ("update", UPDATES), ("position", POSITIONS),
                             ("fit_on", FIT_ON), ("select_on", SELECT_ON), ("harm_text", HARM_TEXT)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"intervention.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if not (self.layers in ("target", "all") or (isinstance(self.layers, (list, tuple)) and self.layers and all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.layers))):
            raise ConfigError(f"intervention.layers={self.layers!r} must be target, all or a non-empty list of "
                              "hidden-state indices")
        if isinstance(self.layers, (list, tuple)) and len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"intervention.layers={list(self.layers)} lists an index twice")
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or not self.ridge >= 0 \
                or not math.isfinite(self.ridge):
            raise ConfigError(f"intervention.ridge={self.ridge!r} must be a finite lambda >= 0 (0: least squares)")
        if not self.alphas or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a)
                                  for a in self.alphas):
            raise ConfigError(f"intervention.alphas={self.alphas!r} must be a non-empty list of finite numbers "
                              "(0, the base model, is always tried too)")
        for key in ("val_text", "max_new_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "val_text" else 1):
                raise ConfigError(f"intervention.{key}={value!r} must be an integer >= "
                                  f"{0 if key == 'val_text' else 1}")
        if self.harm_file is not None and not Path(self.harm_file).expanduser().is_file():
            raise ConfigError(f"intervention.harm_file={self.harm_file!r}: no such file (UTF-8 text in the source "
                              "language, one sentence per line)")
        if self.fit_only and (self.load or self.type == "none"):
            raise ConfigError("intervention.fit_only=true fits a map: set intervention=linear_map or mean_shift "
                              "(and no intervention.load)")

    @property
    def active(self) -> bool:
        """Whether this evaluation fits or loads an intervention."""
        return self.type != "none" or self.load is not None

    def grid(self) -> list[float]:
        """The alphas tried, 0 (the base model) first, then ascending, each once."""
        return [0.0, *sorted({float(a) for a in self.alphas} - {0.0})]

    def resolve_layers(self, target_layer: int, n_layers: int) -> list[int]:
        """The hidden-state indices the map acts at, checked against the model's depth L (0..L)."""
        layers = [target_layer] if self.layers == "target" else list(range(1, n_layers + 1)) \
            if self.layers == "all" else [int(i) for i in self.layers]
        bad = [i for i in layers if not 0 <= i <= n_layers]
        if bad:
            what = f"model.target_layer={target_layer} (intervention.layers=target)" if self.layers == "target" \
                else f"intervention.layers={list(self.layers)}"
            raise ConfigError(f"{what}: index {bad[0]} is out of range for this model's hidden-state indices "
                              f"0..{n_layers}")
        return sorted(layers)

    def settings(self) -> dict:
        """What the saved map's card records about how it was made."""
        out = {"type": self.type, "position": self.position, "fit_on": self.fit_on, "select_on": self.select_on,
               "alphas_tried": self.grid(), "harm_text": self.harm_text, "harm_file": self.harm_file}
        if self.type == "linear_map":
            out.update(solver=self.solver, ridge=float(self.ridge) if self.solver == "ridge" else None,
                       update=self.update)
        return out
