"""The training job behind `train.py`: validate every setting before weights load, fit, export adapters + metrics."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from tli import __version__
from tli.adapter import save_adapter
from tli.audit import write_audit
from tli.config import lexicon_info, model_spec, pooling_spec
from tli.data import PairDataModule
from tli.io import atomic_write_json
from tli.lora import LoraSpec
from tli.losses import build_loss
from tli.modeling import check_layer, load_config, load_tokenizer, num_layers
from tli.module import TLIModule
from tli.tracking import wandb_offline

log = logging.getLogger(__name__)
OBJECTIVE_METRICS = ("mrr", "p_at_1", "margin", "cosine")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup", "cosine_with_restarts", "polynomial", "constant")


class TrainConfigError(ValueError):
    pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file and rename: a crash mid-write never corrupts the last good checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def objective_name(cfg: dict, n_layers: int) -> str:
    obj = cfg["objective"]
    if obj["metric"] not in OBJECTIVE_METRICS:
        raise TrainConfigError(f"objective.metric={obj['metric']!r} is not one of {', '.join(OBJECTIVE_METRICS)}")
    layer = {"last": n_layers, "target": cfg["model"]["target_layer"]}.get(obj["layer"])
    if layer is None:
        raise TrainConfigError(f"objective.layer={obj['layer']!r} must be 'last' or 'target'")
    return f"val/{obj['metric']}@{layer}"


def validate(cfg: dict):
    """Every user-settable value, checked before any weights load (data.* is checked by PairDataModule, also before
    the weights load). Returns (spec, pooling, config, loss)."""
    spec, pooling = model_spec(cfg["model"]), pooling_spec(cfg["model"])
    lora = LoraSpec(**cfg["lora"])
    loss = build_loss(cfg["loss"])
    optim = cfg["optim"]
    if not optim["lr"] > 0:
        raise TrainConfigError(f"optim.lr={optim['lr']} must be > 0")
    if optim["warmup_steps"] < 0:
        raise TrainConfigError(f"optim.warmup_steps={optim['warmup_steps']} must be >= 0")
    if optim["scheduler"] not in SCHEDULERS:
        raise TrainConfigError(f"optim.scheduler={optim['scheduler']!r} is not one of {', '.join(SCHEDULERS)}")
    _, config = load_config(spec)
    check_layer(config, cfg["model"]["target_layer"], "model.target_layer", low=1)
    lora.block_numbers(cfg["model"]["target_layer"], num_layers(config))
    return spec, pooling, config, loss


def make_logger(cfg: dict, out: Path):
    kind = (cfg.get("logger") or {}).get("type", "none")
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out), name="csv", version="")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        lg = cfg["logger"]
        run_id = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]  # same run dir -> same W&B run
        logger = WandbLogger(project=lg.get("project", "tli"), entity=lg.get("entity"), group=lg.get("group"),
                             name=lg.get("name") or out.name, tags=list(lg.get("tags") or []), save_dir=str(out),
                             offline=wandb_offline(lg.get("offline", "auto")), id=run_id, resume="allow",
                             job_type="train")
        logger.log_hyperparams(cfg)
        return logger
    if kind == "none":
        return False
    raise TrainConfigError(f"logger.type={kind!r} is not one of csv, wandb, none")


def resolve_ckpt_path(ckpt_path, ckpt_dir: Path):
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        last = ckpt_dir / "last.ckpt"
        if last.is_file():
            return str(last)
        log.warning("ckpt_path=last: no %s yet, starting from scratch (resume a run with hydra.run.dir=<its dir>)",
                    last)
        return None
    if not Path(ckpt_path).is_file():
        raise TrainConfigError(f"ckpt_path={ckpt_path!r}: no such checkpoint file")
    return str(ckpt_path)


def build_trainer(cfg: dict, out: Path, monitor: str, logger, extra_callbacks=()) -> L.Trainer:
    cb = cfg["callbacks"]
    ckpt_dir = str(out / "checkpoints")
    callbacks = [
        # The best checkpoint by the objective (needs a validation to have run) ...
        ModelCheckpoint(dirpath=ckpt_dir, filename="best-step{step:06d}", monitor=monitor, mode="max", save_top_k=1,
                        auto_insert_metric_name=False),
        # ... and last.ckpt, written at every validation and every N steps regardless of metrics (for resume).
        ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                        every_n_train_steps=cb.get("every_n_train_steps")),
    ]
    if cb.get("lr_monitor") and logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cb.get("rich_progress_bar"):
        callbacks.append(RichProgressBar())
    kwargs = dict(cfg["trainer"])
    if kwargs.get("precision") == "auto":
        kwargs["precision"] = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    # The data module shards training batches itself (UniqueBatchSampler with num_replicas / rank: slices of global
    # batches without repeated strings); Lightning's DistributedSampler cannot wrap a custom batch sampler, and the
    # validation set is deliberately not sharded (every process validates all of it).
    kwargs["use_distributed_sampler"] = False
    return L.Trainer(**kwargs, callbacks=callbacks + list(extra_callbacks), logger=logger,
                     default_root_dir=str(out), plugins=[AtomicCheckpointIO()],
                     enable_progress_bar=bool(cb.get("progress_bar", True)))


def _hydra_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return False
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_distributed(trainer: L.Trainer, loss) -> None:
    """Data-parallel sanity, before any weights load: refuse a script re-launch inside a multirun; warn when the
    contrastive negatives stay per process."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if (isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
            and not launcher.cluster_environment.creates_processes_externally and _hydra_multirun()):
        raise TrainConfigError(
            f"trainer.devices={launcher.num_processes} with strategy {trainer.strategy.__class__.__name__} inside a "
            "Hydra multirun: Lightning would re-run the whole command (the sweep) in every extra process. Use one "
            "device per job in sweeps, or a launcher that starts the processes itself (hydra/launcher=submitit_slurm "
            "with tasks_per_node)."
        )
    if trainer.world_size > 1 and not getattr(loss, "gather", False) and rank_zero_only.rank == 0:
        log.warning("%d processes and loss.gather is off: each process's negatives are only its own batch of "
                    "data.batch_size pairs (loss.gather=true makes the whole global batch the negative pool)",
                    trainer.world_size)


def train_job(cfg: dict, extra_callbacks=()) -> dict:
    """Train from a plain config dict (see conf/train.yaml); returns the final metrics (also in metrics.json)."""
    out = Path(cfg["paths"]["output_dir"])
    spec, pooling, config, loss = validate(cfg)
    monitor = objective_name(cfg, num_layers(config))
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out / "checkpoints")
    L.seed_everything(cfg["seed"], workers=True)
    tokenizer = load_tokenizer(spec)
    data_cfg = cfg["data"]
    datamodule = PairDataModule(data_cfg, tokenizer, template=pooling.template, batch_size=data_cfg["batch_size"],
                                val_fraction=data_cfg["val_fraction"], seed=cfg["seed"],
                                num_workers=data_cfg.get("num_workers", 0))
    lexicons = datamodule.prepare_lexicons()  # bad files fail here, before the weights load
    module = TLIModule(cfg["model"], cfg["lora"], loss, cfg["optim"], truncate=cfg["train"]["truncate"],
                       gradient_checkpointing=cfg["train"]["gradient_checkpointing"])
    logger = make_logger(cfg, out)
    try:
        trainer = build_trainer(cfg, out, monitor, logger, extra_callbacks)
        check_distributed(trainer, loss)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        ckpt_cb = trainer.checkpoint_callback
        sidecar = {
            "base_model": spec.name_or_path, "revision": spec.revision, "quantization": spec.quantization,
            "target_layer": module.k, "pooling": pooling.mode, "template": pooling.template,
            "lora": cfg["lora"], "loss": cfg["loss"], "lexicons": lexicon_info(lexicons), "tli_version": __version__,
            "src_field": data_cfg["src_field"], "tgt_field": data_cfg["tgt_field"],
        }
        result = {"objective_name": monitor, "objective": metrics.get(monitor), "global_step": trainer.global_step,
                  "epochs": trainer.current_epoch, "metrics": metrics, "settings": sidecar}
        if trainer.is_global_zero:
            save_adapter(module.backbone, out / "adapter_last", {**sidecar, "checkpoint": "last"})
            best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
            if best:
                state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
                module.load_state_dict(state, strict=False)
                result["best"] = {"path": best, "score": float(ckpt_cb.best_model_score)}
                result["objective"] = float(ckpt_cb.best_model_score)
            save_adapter(module.backbone, out / "adapter", {**sidecar, "checkpoint": "best" if best else "last"})
            atomic_write_json(out / "metrics.json", result)
            write_audit(lexicons, out / "audit.json")
        return result
    finally:
        if cfg.get("logger", {}).get("type") == "wandb":
            import wandb

            wandb.finish()
