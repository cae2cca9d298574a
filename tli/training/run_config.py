"""The training sections of the config, which need no Lightning (`objective.*`: what a run keeps; `callbacks.*`;
`train.*`): loading the config does not import it, so scan.py never does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tli.errors import ConfigError
from tli.eval.metrics import CRITERIA, METRICS, metric, metric_key
from tli.eval.translation import DIRECTIONS
from tli.training.objective import SCHEDULES

# objective.metric -> the logged key (tli.training.val_translation)
TRANSLATION_OBJECTIVES = {"translation": "val/translation/accuracy",
                          "translation_logprob": "val/translation/gold_logprob"}


@dataclass
class ObjectiveConfig:
    """`objective.*`: the validation figure that names the best checkpoint and that a sweep maximises."""

    metric: str = "mrr"  # a metric of tli.eval.metrics.METRICS (higher is better), or a translation objective:
    # translation (validation-pair accuracy) | translation_logprob (mean gold log-probability); see below
    layer: Any = "last"  # last (index L) | target (index k) | a hidden-state index (alignment metrics only)
    centred: bool = False  # the metric after centring each language on the training words
    # Validation translation (tli.training.val_translation): every validation translates the validation pairs
    # (greedy, `translation_shots` shots drawn from the run's true training pairs) in `translation_direction`
    # (forward: source -> target language, backward: the reverse) and logs val/translation/accuracy and
    # val/translation/gold_logprob; on when the objective is a translation one or score_translation=true.
    score_translation: bool = False
    translation_direction: str = "forward"
    translation_shots: int = 5
    keep: str = "last"  # adapter/ holds the last adapter (default) or the best by the objective
    # Harm budget: validation text (the base model's own samples, never the evaluation's held-out sentences) is
    # scored every validation; an epoch whose NLL rose by more than max_harm (relative, in either language) is
    # disqualified: it is never the best checkpoint, and a run whose kept adapter is over it has no objective.
    score_text: bool = True
    max_harm: float | None = 0.02  # null: no budget (val/harm is still logged when score_text)

    def __post_init__(self):
        if self.translation_direction not in DIRECTIONS:
            raise ConfigError(f"objective.translation_direction={self.translation_direction!r} is not one of "
                              f"{', '.join(DIRECTIONS)}")
        if isinstance(self.translation_shots, bool) or not isinstance(self.translation_shots, int) \
                or self.translation_shots < 0:
            raise ConfigError(f"objective.translation_shots={self.translation_shots!r} must be an integer >= 0")
        if self.metric not in TRANSLATION_OBJECTIVES and self.metric not in METRICS:
            raise ConfigError(f"objective.metric={self.metric!r} is not an objective; valid: an alignment metric "
                              f"({', '.join(CRITERIA)}) or {', '.join(TRANSLATION_OBJECTIVES)}")
        if self.metric in METRICS and not metric(self.metric, "objective.metric").higher_is_better:
            raise ConfigError(f"objective.metric={self.metric!r} is descriptive, not an objective (higher is not "
                              "better); choose e.g. mrr, p_at_1, pool_p_at_1, margin_z")
        if not (self.layer in ("last", "target") or (isinstance(self.layer, int) and not isinstance(self.layer, bool))):
            raise ConfigError(f"objective.layer={self.layer!r} must be last, target or a hidden-state index")
        if self.keep not in ("last", "best"):
            raise ConfigError(f"objective.keep={self.keep!r} must be last or best")
        if self.max_harm is not None and (isinstance(self.max_harm, bool) or self.max_harm < 0):
            raise ConfigError(f"objective.max_harm={self.max_harm!r} must be a relative NLL rise >= 0 or null")
        if self.max_harm is not None and not self.score_text:
            raise ConfigError("objective.max_harm needs objective.score_text=true (the harm is measured on validation "
                              "text); set objective.max_harm=null to train without a budget")

    def monitor(self, key: str) -> str:
        """What the best checkpoint is chosen by: `val/objective` (the objective within the harm budget) or `key`."""
        return "val/objective" if self.max_harm is not None else key

    @property
    def translates(self) -> bool:
        """Whether validation translates the validation pairs (tli.training.val_translation)."""
        return self.score_translation or self.metric in TRANSLATION_OBJECTIVES

    def key(self, target_layer: int, n_layers: int) -> str:
        """The logged name, e.g. `val/mrr@18` or `val/translation/accuracy`; the layer must be one validation
        reports (k or L)."""
        if self.metric in TRANSLATION_OBJECTIVES:
            return TRANSLATION_OBJECTIVES[self.metric]
        layer = {"last": n_layers, "target": target_layer}.get(self.layer, self.layer)
        if layer not in (target_layer, n_layers):
            raise ConfigError(f"objective.layer={self.layer!r}: validation reports the target index {target_layer} "
                              f"and the last index {n_layers} only")
        return metric_key("val", self.metric, layer, self.centred)


@dataclass
class CallbacksConfig:
    """`callbacks.*`. Checkpoints go to <run dir>/checkpoints: best-step*.ckpt (by the objective) and last.ckpt."""

    every_n_train_steps: int | None = None  # also checkpoint every N optimizer steps (null: at each validation)
    lr_monitor: bool = True
    rich_progress_bar: bool = True
    progress_bar: bool = True


@dataclass
class TrainConfig:
    """`train.*`."""

    truncate: bool = True  # run only blocks 1..k in training steps (identical loss and gradients, faster)
    gradient_checkpointing: bool = False
    allow_changes: bool = False  # resume a checkpoint even if the run's settings changed (the outputs record them)
    schedule: str = "sum"  # sum: every term each step | alternate: alignment and preservation terms take turns

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
