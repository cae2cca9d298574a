"""The LightningModule: a (4-bit) causal LM with LoRA adapters, trained with a contrastive loss at layer k.

Training runs only blocks 1..k (`truncate=True`): identical loss and gradients, a fraction of the cost. Validation
runs the full model and scores the validation pairs at the target layer and the last layer with the same function
as the scan and the evaluation (`tli.eval.metrics.alignment`), raw and, with `metrics.centre`, after centring each
language on the training words (`val/<metric>@<index>`, `val/centred/<metric>@<index>`). Checkpoints hold only the
trainable tensors plus optimizer, scheduler, loop, loader and RNG state; never the frozen base.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass

import lightning as L
import torch

from tli.errors import CheckpointError, TrainingError
from tli.eval.metrics import METRICS, Centring, MetricsConfig, alignment, metric_key
from tli.eval.pairs import GoldPairs
from tli.model.embed import Probe, hidden_states, pool
from tli.model.loading import ModelSpec, load_model, num_layers, truncated
from tli.model.lora import LoraConfig, apply_lora
from tli.training.losses import ContrastiveLoss
from tli.training.optim import OptimConfig, Schedule


@dataclass
class TrainConfig:
    """`train.*`."""

    truncate: bool = True  # run only blocks 1..k in training steps (identical loss and gradients, faster)
    gradient_checkpointing: bool = False
    allow_changes: bool = False  # resume a checkpoint even if the run's settings changed (the outputs record them)


class TLIModule(L.LightningModule):
    def __init__(self, model: ModelSpec, probe: Probe, lora: LoraConfig, loss: ContrastiveLoss, optim: OptimConfig,
                 options: TrainConfig | None = None, metrics: MetricsConfig | None = None,
                 hparams: dict | None = None):
        super().__init__()
        self.spec, self.probe, self.lora_spec, self.optim_cfg = model, probe, lora, optim
        self.options, self.metric_options = options or TrainConfig(), metrics or MetricsConfig()
        # Plain containers only: checkpoints load with weights_only=True; the backbone is never a hyperparameter.
        # The training job passes its run settings (derived from the adapter card); alone, the module records its own.
        self.save_hyperparameters(hparams or {"model": asdict(model), "probe": asdict(probe), "lora": asdict(lora),
                                   "loss": dict(getattr(loss, "settings", {})), "optim": asdict(optim),
                                   "train": asdict(self.options), "metrics": asdict(self.metric_options)})
        self.k = probe.target_layer
        self.loss_fn = loss
        self.backbone = None
        self.strict_loading = False  # checkpoints hold only trainable tensors
        self._rng_to_restore = None
        self._val: list = []  # (vectors (n_eval, 2B, D), src ids, tgt ids, pair positions (B,)) per batch
        self._centring: dict[str, list] = {"src": [], "tgt": []}  # training-word vectors (n, n_eval, D)
        self.before_training: dict[str, float] = {}  # the sanity-check validation: the base model's figures

    # ---- model -----------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.backbone is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        base, _ = load_model(self.spec, device=device)
        self.backbone = apply_lora(base, self.lora_spec, self.k).train()  # HF returns eval mode: LoRA dropout on
        if self.options.gradient_checkpointing:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.backbone.enable_input_require_grads()
        self.n_layers = num_layers(base.config)
        self.eval_layers = sorted({self.k, self.n_layers})

    def embed(self, words: dict, layers: list[int]) -> torch.Tensor:
        """Pooled, normalised embeddings (n_layers, B, D) of a padded word batch."""
        states = hidden_states(self.backbone, words)
        return pool(torch.stack([states[j] for j in layers]), words, self.probe.pooling)

    def layer_k(self, words: dict) -> torch.Tensor:
        """(B, D) at the target layer, running only blocks 1..k when truncating."""
        with truncated(self.backbone, self.k) if self.options.truncate else nullcontext():
            return self.embed(words, [self.k])[0]

    # ---- training --------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        B = batch["src_ids"].shape[0]
        vecs = self.layer_k(batch["words"])  # (2B, D): sources then targets, one forward pass
        loss = self.loss_fn(vecs[:B], vecs[B:], batch["src_ids"], batch["tgt_ids"])
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}): training stopped. Checkpoints written before this step "
                "are intact; lower optim.lr or raise loss.temperature."
            )
        # sync_dist: the mean over processes, which is the global batch's mean loss (see InfoNCE.forward).
        self.log("train/loss", loss, prog_bar=True, batch_size=B, sync_dist=True)
        for name, value in self.loss_fn.logged().items():
            self.log(f"train/{name}", value, batch_size=B)
        return loss

    def on_train_start(self) -> None:
        # A resumed run whose length changed (trainer.max_steps / max_epochs with train.allow_changes=true) keeps its
        # restored schedule and continues it to the new end without a jump in the learning rate.
        planned = int(self.trainer.estimated_stepping_batches)
        for config in self.trainer.lr_scheduler_configs:
            for schedule in getattr(config.scheduler, "lr_lambdas", []):
                if isinstance(schedule, Schedule) and schedule.total != planned:
                    schedule.extend(planned, self.trainer.global_step)

    def on_train_batch_start(self, batch, batch_idx):
        if self._rng_to_restore is not None:  # resumed: continue the saved random stream (LoRA dropout)
            torch.set_rng_state(self._rng_to_restore["torch"])
            if torch.cuda.is_available() and self._rng_to_restore.get("cuda") is not None:
                torch.cuda.set_rng_state_all(self._rng_to_restore["cuda"])
            self._rng_to_restore = None

    # ---- validation ------------------------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        if dataloader_idx == 1:  # training words, for the centring statistics (see PairDataModule.val_dataloader)
            vecs = self.embed(batch["words"], self.eval_layers).transpose(0, 1)  # (B, n_eval, D)
            self._centring["src"].append(vecs[batch["is_src"]].cpu())
            self._centring["tgt"].append(vecs[~batch["is_src"]].cpu())
            return
        B = batch["src_ids"].shape[0]
        vecs = self.embed(batch["words"], self.eval_layers)  # (n_eval, 2B, D), full model
        k_slot = self.eval_layers.index(self.k)
        loss = self.loss_fn(vecs[k_slot, :B], vecs[k_slot, B:], batch["src_ids"], batch["tgt_ids"])
        # the same on every process under DDP (validation is not sharded)
        self.log("val/loss", loss, batch_size=B, sync_dist=True, add_dataloader_idx=False)
        self._val.append((vecs.cpu(), batch["src_ids"].cpu(), batch["tgt_ids"].cpu(), batch["pair_idx"].cpu()))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        # back into lexicon order (batches are planned without repeated words), so that the pools of the pool-matched
        # metrics, drawn over pair positions, are those the scan and the evaluation draw on the same pairs
        order = torch.argsort(torch.cat([i for *_, i in self._val]))
        src = torch.cat([v[:, : len(s)] for v, s, *_ in self._val], 1)[:, order]  # (n_eval, P, D): each batch is
        tgt = torch.cat([v[:, len(s):] for v, s, *_ in self._val], 1)[:, order]  # sources, then targets
        gold = GoldPairs.from_pairs(torch.cat([s for _, s, _, _ in self._val])[order].tolist(),
                                    torch.cat([t for _, _, t, _ in self._val])[order].tolist())
        s_rows, t_rows = gold.first_rows()
        src, tgt = src[:, s_rows], tgt[:, t_rows]  # (n_eval, Ns, D), (n_eval, Nt, D): unique words
        variants = {False: (src, tgt)}
        if self._centring["src"] and self._centring["tgt"]:
            centring = Centring.fit(torch.cat(self._centring["src"]), torch.cat(self._centring["tgt"]))
            variants[True] = (torch.stack([centring.apply(src[j], "src", j) for j in range(len(src))]),
                              torch.stack([centring.apply(tgt[j], "tgt", j) for j in range(len(tgt))]))
        logged = {}
        for centred, (s, t) in variants.items():
            for slot, layer in enumerate(self.eval_layers):
                values = alignment(s[slot], t[slot], gold, self.metric_options)
                logged.update({metric_key("val", name, layer, centred): float(values[name]) for name in METRICS})
        if self.trainer.sanity_checking:  # before any step: with num_sanity_val_steps=-1, the base model's figures
            self.before_training = logged
        # equal on every process (each saw the whole set); synced so that checkpointing agrees
        self.log_dict(logged, sync_dist=True, add_dataloader_idx=False)
        self._val, self._centring = [], {"src": [], "tgt": []}

    # ---- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return self.optim_cfg.build(params, int(self.trainer.estimated_stepping_batches))

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def trainable_keys(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved, expected = set(checkpoint["state_dict"]), self.trainable_keys()
        if saved != expected:
            raise CheckpointError(
                f"checkpoint does not match this model's trainable tensors: missing {sorted(expected - saved)[:5]}, "
                f"unexpected {sorted(saved - expected)[:5]} (different lora.* or model.target_layer?)"
            )
        self._rng_to_restore = checkpoint.get("rng")
