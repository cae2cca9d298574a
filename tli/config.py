"""The typed config schema of the three entry points, registered in Hydra's ConfigStore as the base of
conf/train.yaml, conf/scan.yaml and conf/evaluate.yaml.

Each section is a dataclass owned by the module that uses it (defaults and range checks live there, once); this
module only assembles them. Hydra type-checks command-line overrides against it; `to_typed` turns a composed config
into a `TLIConfig`, refusing keys the schema does not know (Hydra lets `+key=value` add any key) and running every
section's range checks, so a bad setting fails before any weights load.

The three entry points share one schema, so that `experiment=` presets compose with all of them; each job reads the
sections it needs.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import MISSING

from tli.data.config import DataConfig
from tli.errors import ConfigError
from tli.eval.evaluation import EvalConfig
from tli.eval.metrics import MetricsConfig
from tli.eval.scan import ScanConfig
from tli.intervention.config import InterventionConfig
from tli.model.embed import Probe
from tli.model.loading import ModelSpec
from tli.model.lora import LoraConfig
from tli.training.optim import OptimConfig
from tli.training.preserve import PreserveConfig
from tli.training.run_config import CallbacksConfig, ObjectiveConfig, TrainConfig


@dataclass
class ModelConfig(Probe, ModelSpec):
    """`model.*`: how to load the model (`ModelSpec`) and where and how to read words out of it (`Probe`)."""

    cache_dir: str = "${paths.cache_dir}"

    def __post_init__(self):
        self.loading(), self.probe()  # both validate themselves

    def loading(self) -> ModelSpec:
        return ModelSpec(**{f.name: getattr(self, f.name) for f in fields(ModelSpec)})

    def probe(self) -> Probe:
        return Probe(**{f.name: getattr(self, f.name) for f in fields(Probe)})


@dataclass
class PathsConfig:
    output_dir: str = "${hydra:runtime.output_dir}"  # the Hydra run directory; tests set it
    cache_dir: str = "${oc.env:TLI_CACHE_DIR,'~/.cache/tli'}"  # the tiny model and converted GGUF files


LOGGERS = ("csv", "wandb", "none")


@dataclass
class LoggerConfig:
    """`logger.*`: experiment tracking (tli.jobs.tracking)."""

    type: str = "none"  # csv | wandb | none
    project: str = "tli"
    entity: str | None = None
    group: str | None = None  # jobs of a multirun are grouped by their sweep directory (set by train.py)
    name: str | None = None  # default: the run directory's name
    tags: list[str] = field(default_factory=list)
    offline: Any = "auto"  # auto: offline unless WANDB_API_KEY is set or `wandb login` was run; or true / false

    def __post_init__(self):
        if self.type not in LOGGERS:
            raise ConfigError(f"logger.type={self.type!r} is not one of {', '.join(LOGGERS)}")
        if self.offline not in ("auto", True, False):
            raise ConfigError(f"logger.offline={self.offline!r} must be auto, true or false")


ALL_JOBS = ("train", "scan", "evaluate")


def _section(default=MISSING, factory=None, jobs: tuple[str, ...] = ALL_JOBS):
    """A schema field that records which entry points read it (`read_by`)."""
    meta = {"jobs": jobs}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass
class TLIConfig:
    seed: int = _section(0)
    model: ModelConfig = _section(factory=ModelConfig)
    data: DataConfig = _section(MISSING)  # from a data preset (conf/data/)
    metrics: MetricsConfig = _section(factory=MetricsConfig)
    paths: PathsConfig = _section(factory=PathsConfig)
    logger: LoggerConfig = _section(factory=LoggerConfig)
    # train.py
    lora: LoraConfig = _section(factory=LoraConfig, jobs=("train",))
    loss: dict[str, Any] = _section(factory=lambda: {"name": "infonce"}, jobs=("train",))  # tli.training.losses
    optim: OptimConfig = _section(factory=OptimConfig, jobs=("train",))
    train: TrainConfig = _section(factory=TrainConfig, jobs=("train",))
    preserve: PreserveConfig = _section(factory=PreserveConfig, jobs=("train",))  # behaviour-preserving terms
    objective: ObjectiveConfig = _section(factory=ObjectiveConfig, jobs=("train",))
    trainer: dict[str, Any] = _section(factory=dict, jobs=("train",))  # any Lightning Trainer argument
    callbacks: CallbacksConfig = _section(factory=CallbacksConfig, jobs=("train",))
    ckpt_path: str | None = _section(None, jobs=("train",))  # a checkpoint file, or `last`
    evaluate: bool = _section(False, jobs=("train",))  # evaluate the finished run into <run dir>/eval/
    # scan.py and evaluate.py
    adapter: Any = _section(None, jobs=("scan", "evaluate"))  # an adapter directory, or a list (evaluate)
    # evaluate.py: several recipes in one evaluation, each a list of adapter directories (seeds, folds):
    # adapters.<recipe>=[dir,...]; compared with the base model and with each other on the same queries
    adapters: dict[str, list[str]] = _section(factory=dict, jobs=("evaluate",))
    scan: ScanConfig = _section(factory=ScanConfig, jobs=("scan",))
    eval: EvalConfig = _section(factory=EvalConfig, jobs=("evaluate",))
    # evaluate.py intervention=linear_map|mean_shift: inference-time alignment fitted in the job (tli.intervention);
    # its alpha is held to objective.max_harm, the training runs' harm budget
    intervention: InterventionConfig = _section(factory=InterventionConfig, jobs=("evaluate",))


def read_by(job: str) -> set[str]:
    """The top-level config keys entry point `job` (train, scan, evaluate) reads."""
    return {f.name for f in fields(TLIConfig) if job in f.metadata["jobs"]}


def overrides_for(job: str, overrides: list[str]) -> list[str]:
    """The command-line overrides of another run that entry point `job` reads: keys of the sections it reads, and
    experiment presets (they compose with every entry point); not paths, logger or adapter (they belong to a run),
    nor Hydra's own keys or groups only another entry point has (multiseed, hparams_search, debug)."""
    kept = read_by(job) - {"paths", "logger", "adapter"} | {"experiment"}
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] in kept]


def register() -> None:
    """Put the schema into Hydra's ConfigStore (as `tli_schema`); entry points call this before composing."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="tli_schema", node=TLIConfig)


def _unknown_keys(node, schema: type, prefix: str) -> list[tuple[str, list[str]]]:
    """(dotted key, valid keys) for every key under `node` that `schema` (a dataclass) does not define."""
    from omegaconf import DictConfig

    hints = typing.get_type_hints(schema)
    out = []
    for key in node.keys():
        if key not in hints:
            out.append((f"{prefix}{key}", sorted(hints)))
        elif isinstance(node._get_node(key), DictConfig) and is_dataclass(hints[key]):
            out += _unknown_keys(node._get_node(key), hints[key], f"{prefix}{key}.")
    return out


def to_typed(cfg) -> TLIConfig:
    """A composed DictConfig -> TLIConfig: unknown keys and out-of-range values are a ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    unknown = _unknown_keys(cfg, TLIConfig, "")
    if unknown:
        key, valid = unknown[0]
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
        hint = f"did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?" if close else \
            f"valid keys here: {', '.join(valid)}"
        more = f" ({len(unknown) - 1} more unknown key(s))" if len(unknown) > 1 else ""
        raise ConfigError(f"unknown config key {key}: {hint}{more}")
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from err
