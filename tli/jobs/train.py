"""The training job behind `train.py`: validate every setting before weights load, fit, export adapters + metrics."""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import MISSING, asdict, fields, is_dataclass, replace
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from tli.console import interactive
from tli.data.audit import write_audit
from tli.data.config import DataConfig
from tli.data.datamodule import PairDataModule
from tli.errors import ConfigError, RunDirError
from tli.eval.base_text import wants_written, written_validation
from tli.io import atomic_write_json
from tli.jobs.common import in_multirun, job_started, run_card, run_dir_lock
from tli.jobs.tracking import lightning_logger
from tli.jobs.train_summary import in_short, print_summary
from tli.model.adapter import save_adapter
from tli.model.card import AdapterCard
from tli.model.loading import check_layer, load_config, load_tokenizer, num_layers, weights_fingerprint
from tli.training.checkpoints import AtomicCheckpointIO, checkpoint_callbacks
from tli.training.losses import build_loss
from tli.training.module import TLIModule
from tli.training.objective import AlignOptions
from tli.training.optim import OptimConfig
from tli.training.preserve import PreserveConfig
from tli.training.resume import GracefulStop, RunSettings, check_resume_settings, flat_settings, resolve_ckpt_path
from tli.training.run_config import ObjectiveConfig, TrainConfig
from tli.training.text import Harm, TextSource
from tli.training.translation_lm import translation_batch
from tli.training.val_translation import ValidationTranslation

log = logging.getLogger(__name__)


def validate(cfg) -> tuple:
    """Every setting the schema's own checks cannot see, before any weights load: the loss options, the target
    layer and LoRA blocks against the model's depth, the objective's layer, the Trainer arguments.
    Returns (model config, loss, objective key)."""
    loss = build_loss(cfg.loss)
    unknown = sorted(set(cfg.trainer) - set(inspect.signature(L.Trainer.__init__).parameters) - {"self"})
    if unknown:
        raise ConfigError(f"trainer.{unknown[0]} is not an argument of lightning's Trainer")
    _, config = load_config(cfg.model.loading())
    n = num_layers(config)
    check_layer(config, cfg.model.target_layer, "model.target_layer", low=1)
    cfg.lora.block_numbers(cfg.model.target_layer, n)
    cfg.preserve.layers(cfg.model.target_layer, n)
    align = loss.options
    if not (align.weight or align.translation_lm):
        raise ConfigError("loss.weight=0 and loss.translation_lm=0: nothing to train (give either a weight > 0)")
    if cfg.train.schedule == "alternate" and not cfg.preserve.active:
        raise ConfigError("train.schedule=alternate alternates alignment and preservation steps: set preserve.kl or "
                          "preserve.retain > 0, or use train.schedule=sum")
    return config, loss, cfg.objective.key(cfg.model.target_layer, n)


def build_trainer(cfg, out: Path, monitor: str, logger, extra_callbacks=()) -> L.Trainer:
    cb = cfg.callbacks
    callbacks = checkpoint_callbacks(out / "checkpoints", monitor, cb.every_n_train_steps)
    if cb.lr_monitor and logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    progress = cb.progress_bar and interactive()  # plain, short output under CI=true or without a terminal
    if progress and cb.rich_progress_bar:
        callbacks.append(RichProgressBar())
    kwargs = dict(cfg.trainer)
    if kwargs.get("precision") == "auto":
        kwargs["precision"] = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    # The data module shards training batches itself (UniqueBatchSampler with num_replicas / rank: slices of global
    # batches without repeated strings); Lightning's DistributedSampler cannot wrap a custom batch sampler, and the
    # validation set is deliberately not sharded (every process validates all of it).
    kwargs["use_distributed_sampler"] = False
    return L.Trainer(**kwargs, callbacks=callbacks + list(extra_callbacks), logger=logger,
                     default_root_dir=str(out), plugins=[AtomicCheckpointIO()], enable_progress_bar=progress)


def check_distributed(trainer: L.Trainer, loss) -> None:
    """Data-parallel sanity, before any weights load: refuse a script re-launch inside a multirun; warn when the
    contrastive negatives stay per process."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if (isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
            and not launcher.cluster_environment.creates_processes_externally and in_multirun()):
        raise ConfigError(
            f"trainer.devices={launcher.num_processes} with strategy {trainer.strategy.__class__.__name__} inside a "
            "Hydra multirun: Lightning would re-run the whole command (the sweep) in every extra process. Use one "
            "device per job in sweeps, or a launcher that starts the processes itself (hydra/launcher=submitit_slurm "
            "with tasks_per_node)."
        )
    if trainer.world_size > 1 and not loss.gather and rank_zero_only.rank == 0:
        log.warning("%d processes and loss.gather is off: each process's negatives are only its own batch of "
                    "data.batch_size pairs (loss.gather=true makes the whole global batch the negative pool)",
                    trainer.world_size)


# Trainer arguments that change what the optimisation computes: compared on resume like optim.* (the others, such as
# logging intervals or the progress bar, may change freely).
OPTIMISATION_TRAINER_KEYS = ("max_steps", "max_epochs", "min_steps", "min_epochs", "accumulate_grad_batches",
                             "gradient_clip_val", "gradient_clip_algorithm", "precision", "limit_train_batches",
                             "overfit_batches")


def run_settings(cfg, card) -> dict:
    """What defines a run, recorded in its checkpoints and compared on resume: the adapter card's defining settings
    (`AdapterCard.defining`), plus how it is optimised (paths and caches excluded: a run may move to another
    machine; the lexicons are compared by content)."""
    loading = {k: v for k, v in asdict(cfg.model.loading()).items()
               if k not in ("cache_dir", "name_or_path", "revision", "quantization")}
    data = {k: v for k, v in asdict(cfg.data).items()
            if k not in ("train_file", "control_file", "num_workers", "src_field", "tgt_field")}
    return {**card.defining(), "loading": loading, "optim": asdict(cfg.optim), "preserve": asdict(cfg.preserve),
            "train": {k: v for k, v in asdict(cfg.train).items() if k != "allow_changes"},
            "objective": asdict(cfg.objective), "data": data,
            "trainer": {k: cfg.trainer.get(k) for k in OPTIMISATION_TRAINER_KEYS}}


def default_settings() -> dict:
    """The defaults of the run settings' sections, flat (`loss.centred` -> False): what a checkpoint written before
    a key existed ran with (`check_resume_settings`)."""
    def default(f):
        value = f.default if f.default is not MISSING else f.default_factory()
        return asdict(value) if is_dataclass(value) else value

    sections = {"loss": AlignOptions, "optim": OptimConfig, "train": TrainConfig, "preserve": PreserveConfig,
                "objective": ObjectiveConfig, "data": DataConfig}
    tree = {name: {f.name: default(f) for f in fields(cls) if f.default is not MISSING or f.default_factory is not
                   MISSING} for name, cls in sections.items()}
    tree["preserve"] = card_preserve(tree["preserve"], TrainConfig.schedule)
    return flat_settings(tree)


def card_preserve(preserve: dict, schedule: str) -> dict:
    """The card's `preserve` settings: the preserve.* keys and the step schedule they run on."""
    return {**preserve, "schedule": schedule}


def train_job(cfg, extra_callbacks=()) -> dict:
    """Train from a typed config (`tli.config.TLIConfig`); returns the final metrics (also in metrics.json)."""
    out = Path(cfg.paths.output_dir)
    config, loss, key = validate(cfg)
    started = time.monotonic()
    reported: set = set()  # audit findings logged once, though training and its evaluation both audit
    with run_dir_lock(out):
        result = _train(cfg, out, loss, key, extra_callbacks, reported)
    if rank_zero_only.rank == 0:
        print_summary(result, cfg, out, time.monotonic() - started)
        if cfg.evaluate:  # after the lock is released: the evaluation takes its own
            from tli.jobs.evaluate import evaluate_job

            result["evaluation"] = str(out / "eval")
            summary = evaluate_job(replace(cfg, adapter=str(out / "adapter")), reported=reported)
            print("\n".join(in_short(summary, cfg.model.target_layer)))
    return result


def harm_settings(cfg, tokenizer, lexicons, key: str) -> Harm:
    """The validation and preservation text of a run (tli.training.text) and its harm budget."""
    p, d = cfg.preserve, cfg.data
    if not (cfg.objective.score_text or p.active) or (d.val_fraction == 0 and not p.active):
        return Harm()
    spec = cfg.model.loading()
    words = lexicons.train.pairs
    validate = cfg.objective.score_text and d.val_fraction > 0
    written, n_val = {}, {}  # per language: written validation sentences (read and checked now), base samples
    for lang, path, side in ((d.src_lang, p.val_src, "src"), (d.tgt_lang, p.val_tgt, "tgt")):
        use_written = validate and wants_written(p.val_text, lang, path)
        written[lang] = written_validation(lang, path, f"preserve.val_{side}") if use_written else []
        n_val[lang] = p.n_val_text if validate and (p.val_text in ("samples", "both") or not written[lang]) else 0
    source = TextSource(langs=(d.src_lang, d.tgt_lang), seed=cfg.seed, n_train=p.n_text, n_val=n_val,
                        max_new_tokens=p.max_new_tokens, fingerprint=weights_fingerprint(spec),
                        cache_dir=spec.cache_dir, files=list(p.text_files),
                        fallback={d.src_lang: sorted({w.source for w in words})[:32],
                                  d.tgt_lang: sorted({w.target for w in words})[:32]}, written=written)
    return Harm(text=source, objective_key=key, max_harm=cfg.objective.max_harm, tokenizer=tokenizer)


def _finite(value) -> float | None:
    """A float for metrics.json; None for -inf (every epoch over the harm budget) or NaN."""
    value = float(value)
    return value if math.isfinite(value) else None


def harm_verdict(result: dict, metrics: dict, max_harm: float | None) -> dict:
    """What metrics.json says about the harm budget: the kept adapter's alignment and harm (the last validation's,
    or the best checkpoint's own validation when the best is kept), and whether it is within the budget."""
    if result.get("kept") == "best":
        metrics = result["best"].get("validation") or metrics
    harm, alignment = metrics.get("val/harm"), metrics.get(result["objective_name"])
    admissible = max_harm is None or (harm is not None and harm <= max_harm)
    return {"alignment": alignment, "harm": harm, "max_harm": max_harm, "admissible": admissible,
            "objective": alignment if admissible else None}


def _train(cfg, out: Path, loss, key: str, extra_callbacks, reported: set | None = None) -> dict:
    ckpt_dir = out / "checkpoints"
    ckpt_path, ckpt = resolve_ckpt_path(cfg.ckpt_path, ckpt_dir)
    if ckpt is None and list(ckpt_dir.glob("*.ckpt")):
        raise RunDirError(f"run directory {out} already holds the checkpoints of an earlier run: resume it with "
                          "ckpt_path=last, or give this run a new directory (hydra.run.dir=...)")
    L.seed_everything(cfg.seed, workers=True)
    spec, probe = cfg.model.loading(), cfg.model.probe()
    tokenizer = load_tokenizer(spec)
    align = loss.options
    datamodule = PairDataModule(cfg.data, tokenizer, template=probe.template, seed=cfg.seed,
                                centring_words=cfg.metrics.centre,
                                translation=partial(translation_batch, shots=align.translation_shots)
                                if align.translation_lm else None)
    lexicons = datamodule.prepare_lexicons(reported)  # bad files fail here, before the weights load
    d = cfg.data
    split = {"crossfit": d.crossfit, "fold": d.fold, "derange": d.derange, "val_fraction": d.val_fraction}
    card = run_card(cfg, lexicons, lora=asdict(cfg.lora), loss=loss.settings, split=split,
                    preserve=card_preserve(asdict(cfg.preserve), cfg.train.schedule))
    settings = run_settings(cfg, card)
    changed = check_resume_settings(ckpt, ckpt_path, settings, cfg.train.allow_changes,
                                    default_settings()) if ckpt else {}
    o = cfg.objective
    translation = ValidationTranslation.for_run(lexicons.train, cfg.data, cfg.seed, tokenizer=tokenizer,
                                                direction=o.translation_direction, shots=o.translation_shots) \
        if o.translates else None
    module = TLIModule(spec, probe, cfg.lora, loss, cfg.optim, cfg.train, cfg.metrics, hparams=settings,
                       preserve=cfg.preserve, harm=harm_settings(cfg, tokenizer, lexicons, key),
                       translation=translation)
    logger = lightning_logger(cfg.logger, asdict(cfg), out)
    stop = GracefulStop(ckpt_dir)
    try:
        trainer = build_trainer(cfg, out, cfg.objective.monitor(key), logger,
                                [RunSettings(settings), stop, *extra_callbacks])
        check_distributed(trainer, loss)
        job_started()  # every check passed: from here on a failure is this run's, no longer a refusal
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:
            stop.sigterm_exit()  # outside SLURM: stop like Ctrl-C (below); under SLURM, Lightning's requeue path
        if stop.stopped:
            raise stop.error(trainer.global_step, out)
        # an epoch over the harm budget logs val/objective = -inf: null in metrics.json (valid JSON)
        metrics = {k: float(v) if math.isfinite(float(v)) else None for k, v in trainer.callback_metrics.items()}
        card = card.with_updates(base_fingerprint=weights_fingerprint(spec), resumed_with_changes=changed)
        result = {"objective_name": key, "objective": metrics.get(key), "global_step": trainer.global_step,
                  "epochs": trainer.current_epoch, "metrics": metrics, "validation_before": module.before_training,
                  "n_val_pairs": len(datamodule.val_pairs), "n_layers": module.n_layers, "settings": card.to_dict()}
        if trainer.is_global_zero:
            result.update(export_adapters(trainer, module, out, card, cfg.objective.keep))
            result.update(harm_verdict(result, metrics, cfg.objective.max_harm))
            if module.harm.text is not None and module.harm.text.validates:
                result["val_text"] = module.harm.text.described()
            atomic_write_json(out / "metrics.json", result)
            write_audit(lexicons, out / "audit.json")
        return result
    finally:
        if cfg.logger.type == "wandb":
            import wandb

            wandb.finish()


def export_adapters(trainer: L.Trainer, module: TLIModule, out: Path, card: AdapterCard, keep: str) -> dict:
    """adapter/ holds the kept adapter (`objective.keep`: the last, by default); adapter_best/ (or adapter_last/
    when the best is kept) the other one. Returns what metrics.json records about the choice."""
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    other = "adapter_best" if keep == "last" else "adapter_last"
    found: dict = {"kept": keep if best else "last"}
    if best:
        found["best"] = {"path": best, "score": _finite(ckpt_cb.best_model_score)}
    if keep == "last" or not best:
        save_adapter(module.backbone, out / "adapter", card.with_updates(checkpoint="last"))
    else:
        save_adapter(module.backbone, out / other, card.with_updates(checkpoint="last"))
    if best:
        ckpt = torch.load(best, map_location="cpu", weights_only=True)
        module.load_state_dict(ckpt["state_dict"], strict=False)
        found["best"]["validation"] = ckpt.get("validation", {})
        save_adapter(module.backbone, out / ("adapter" if keep == "best" else other),
                     card.with_updates(checkpoint="best"))
        if keep == "best":
            found["objective"] = _finite(ckpt_cb.best_model_score)
    return found
