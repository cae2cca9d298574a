"""The LightningModule: a (4-bit) causal LM with LoRA adapters, trained with a contrastive loss at layer k.

Training runs only blocks 1..k (`truncate=True`): identical loss and gradients, a fraction of the cost. Validation
runs the full model and reports retrieval and alignment at the target layer and the last layer
(`val/<metric>@<hidden-state index>`). Checkpoints hold only the trainable tensors plus optimizer, scheduler, loop,
loader and RNG state; never the frozen base.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR

from tli.config import model_spec
from tli.embed import hidden_states, pool
from tli.lora import LoraSpec, apply_lora
from tli.metrics import mismatched_baseline
from tli.modeling import load_model, num_layers, truncated


class NonFiniteLossError(FloatingPointError):
    pass


class CheckpointMismatchError(RuntimeError):
    pass


class TLIModule(L.LightningModule):
    def __init__(self, model: Mapping, lora: Mapping, loss: nn.Module, optim: Mapping, truncate: bool = True,
                 gradient_checkpointing: bool = False):
        super().__init__()
        # Plain containers only: checkpoints load with weights_only=True; the backbone is never a hyperparameter.
        self.save_hyperparameters({"model": dict(model), "lora": dict(lora), "optim": dict(optim),
                                   "truncate": truncate, "gradient_checkpointing": gradient_checkpointing})
        self.model_cfg, self.lora_spec, self.optim_cfg = dict(model), LoraSpec(**lora), dict(optim)
        self.k = int(model["target_layer"])
        self.pooling = model.get("pooling", "mean")
        self.loss_fn = loss
        self.truncate, self.gradient_checkpointing = truncate, gradient_checkpointing
        self.backbone = None
        self.strict_loading = False  # checkpoints hold only trainable tensors
        self._rng_to_restore = None
        self._val: dict[int, list] = {}

    # ---- model -----------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.backbone is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        base, _ = load_model(model_spec(self.model_cfg), device=device)
        self.backbone = apply_lora(base, self.lora_spec, self.k).train()  # HF returns eval mode: LoRA dropout on
        if self.gradient_checkpointing:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.backbone.enable_input_require_grads()
        self.n_layers = num_layers(base.config)
        self.eval_layers = sorted({self.k, self.n_layers})
        # Under DDP every process validates the whole set (the val loader is not sharded): no sync on compute, which
        # would gather every query twice (duplicated candidates change the MRR).
        local = {"sync_on_compute": False}
        self.val_metrics = nn.ModuleDict({
            f"{name}@{layer}": metric for layer in self.eval_layers
            for name, metric in (("cosine", MeanMetric(**local)), ("baseline", MeanMetric(**local)),
                                 ("s2t_p_at_1", RetrievalHitRate(top_k=1, **local)),
                                 ("t2s_p_at_1", RetrievalHitRate(top_k=1, **local)),
                                 ("s2t_mrr", RetrievalMRR(**local)), ("t2s_mrr", RetrievalMRR(**local)))
        }).to(device)

    def embed(self, words: dict, layers: list[int]) -> torch.Tensor:
        """Pooled, normalised embeddings (n_layers, B, D) of a padded word batch."""
        states = hidden_states(self.backbone, words)
        return pool(torch.stack([states[j] for j in layers]), words, self.pooling)

    def layer_k(self, words: dict) -> torch.Tensor:
        """(B, D) at the target layer, running only blocks 1..k when truncating."""
        with truncated(self.backbone, self.k) if self.truncate else nullcontext():
            return self.embed(words, [self.k])[0]

    # ---- training --------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        B = batch["src_ids"].shape[0]
        vecs = self.layer_k(batch["words"])  # (2B, D): sources then targets, one forward pass
        loss = self.loss_fn(vecs[:B], vecs[B:], batch["src_ids"], batch["tgt_ids"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}): training stopped. Checkpoints written before this step "
                "are intact; lower optim.lr or raise loss.temperature."
            )
        # sync_dist: the mean over processes, which is the global batch's mean loss (see InfoNCE.forward).
        self.log("train/loss", loss, prog_bar=True, batch_size=B, sync_dist=True)
        if hasattr(self.loss_fn, "temperature"):
            self.log("train/temperature", self.loss_fn.temperature, batch_size=B)
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        if self._rng_to_restore is not None:  # resumed: continue the saved random stream (LoRA dropout)
            torch.set_rng_state(self._rng_to_restore["torch"])
            if torch.cuda.is_available() and self._rng_to_restore.get("cuda") is not None:
                torch.cuda.set_rng_state_all(self._rng_to_restore["cuda"])
            self._rng_to_restore = None

    # ---- validation ------------------------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        B = batch["src_ids"].shape[0]
        vecs = self.embed(batch["words"], self.eval_layers)  # (n_eval, 2B, D), full model
        k_slot = self.eval_layers.index(self.k)
        loss = self.loss_fn(vecs[k_slot, :B], vecs[k_slot, B:], batch["src_ids"], batch["tgt_ids"])
        self.log("val/loss", loss, batch_size=B, sync_dist=True)  # the same on every process under DDP
        for slot, layer in enumerate(self.eval_layers):
            self._val.setdefault(layer, []).append((vecs[slot, :B], vecs[slot, B:], batch["src_ids"], batch["tgt_ids"]))

    def on_validation_epoch_end(self):
        for layer, parts in self._val.items():
            src, tgt = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])  # (P, D)
            s_ids, t_ids = torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])  # (P,)
            gold = (s_ids[:, None] == s_ids[None, :]) | (t_ids[:, None] == t_ids[None, :])  # (P, P) same word
            sim = src @ tgt.T  # (P, P)
            m = self.val_metrics
            m[f"cosine@{layer}"].update(sim.diagonal())
            m[f"baseline@{layer}"].update(torch.as_tensor(mismatched_baseline(src, tgt, gold=gold)))
            rows = torch.arange(len(src), device=src.device)[:, None].expand_as(sim)  # (P, P) query index
            m[f"s2t_p_at_1@{layer}"].update(sim, gold, indexes=rows)
            m[f"s2t_mrr@{layer}"].update(sim, gold, indexes=rows)
            m[f"t2s_p_at_1@{layer}"].update(sim.T, gold.T, indexes=rows)
            m[f"t2s_mrr@{layer}"].update(sim.T, gold.T, indexes=rows)
            values = {name: m[f"{name}@{layer}"].compute() for name in
                      ("cosine", "baseline", "s2t_p_at_1", "t2s_p_at_1", "s2t_mrr", "t2s_mrr")}
            self.log_dict({
                f"val/cosine@{layer}": values["cosine"],
                f"val/baseline_cosine@{layer}": values["baseline"],
                f"val/margin@{layer}": values["cosine"] - values["baseline"],
                f"val/p_at_1@{layer}": (values["s2t_p_at_1"] + values["t2s_p_at_1"]) / 2,
                f"val/mrr@{layer}": (values["s2t_mrr"] + values["t2s_mrr"]) / 2,
            }, sync_dist=True)  # equal on every process (each saw the whole set); synced so checkpointing agrees
            for name in values:
                m[f"{name}@{layer}"].reset()
        self._val = {}

    # ---- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        from transformers import get_scheduler

        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.optim_cfg["lr"], weight_decay=self.optim_cfg["weight_decay"],
                                      betas=tuple(self.optim_cfg.get("betas", (0.9, 0.999))))
        scheduler = get_scheduler(self.optim_cfg["scheduler"], optimizer,
                                  num_warmup_steps=self.optim_cfg["warmup_steps"],
                                  num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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
            raise CheckpointMismatchError(
                f"checkpoint does not match this model's trainable tensors: missing {sorted(expected - saved)[:5]}, "
                f"unexpected {sorted(saved - expected)[:5]} (different lora.* or model.target_layer?)"
            )
        self._rng_to_restore = checkpoint.get("rng")
