"""The LightningModule: a (4-bit) causal LM with LoRA adapters, trained with a contrastive loss at layer k.

A training step adds up weighted terms (`train/<term>` in the logs): the contrastive loss at layer k (`align`), the
translation-LM loss (`translation_lm`), and the behaviour-preserving `kl` and `retain` on the base model's own text
(tli.training.preserve, tli.training.objective for anchor, centring and the schedule). The contrastive term runs
only blocks 1..k (`truncate=True`): identical loss and gradients, a fraction of the cost; the others need the full
model. Validation
runs the full model and scores the validation pairs at the target layer and the last layer with the same function
as the scan and the evaluation (`tli.eval.metrics.alignment`), raw and, with `metrics.centre`, after centring each
language on the training words (`val/<metric>@<index>`, `val/centred/<metric>@<index>`). Checkpoints hold only the
trainable tensors plus optimizer, scheduler, loop, loader and RNG state (and the running centres); never the frozen
base. With validation text (`objective.score_text`), every validation also scores the base model's samples:
`val/nll/<lang>`, `val/nll_change/<lang>` (relative to the base model on the same text) and `val/harm` (the larger
change); with `objective.max_harm`, `val/objective` is the objective where harm is within the budget, else -inf.
With a translation objective (tli.training.val_translation), every validation also translates the validation pairs.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict

import lightning as L
import torch
import torch.nn.functional as F

from tli.errors import CheckpointError, TrainingError
from tli.eval.metrics import METRICS, Centring, MetricsConfig, alignment, metric_key
from tli.eval.pairs import GoldPairs
from tli.model.embed import Probe, hidden_states, pool
from tli.model.loading import ModelSpec, load_model, num_layers, truncated
from tli.model.lora import LoraConfig, apply_lora
from tli.training.losses import ContrastiveLoss
from tli.training.objective import AlignOptions, RunningCentre, active_groups
from tli.training.optim import OptimConfig, Schedule
from tli.training.preserve import PreserveConfig, forward_text, kl_cached, kl_live, retain_distance
from tli.training.run_config import TrainConfig
from tli.training.text import Harm, PreservationText
from tli.training.val_translation import ValidationTranslation


class TLIModule(L.LightningModule):
    def __init__(self, model: ModelSpec, probe: Probe, lora: LoraConfig, loss: ContrastiveLoss, optim: OptimConfig,
                 options: TrainConfig | None = None, metrics: MetricsConfig | None = None,
                 hparams: dict | None = None, preserve: PreserveConfig | None = None, harm: Harm | None = None,
                 translation: ValidationTranslation | None = None):
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
        self.align = getattr(loss, "options", None) or AlignOptions()
        self.preserve, self.harm = preserve or PreserveConfig(), harm or Harm()
        self.val_translation = translation  # validation pairs translated every validation (objective.*)
        self.centre = RunningCentre(self.align.centre_momentum)
        self.text: PreservationText | None = None
        self.backbone = None
        self.strict_loading = False  # checkpoints hold only trainable tensors
        self._rng_to_restore = None
        self._val: list = []  # (vectors (n_eval, 2B, D), src ids, tgt ids, pair positions (B,)) per batch
        self._centring: dict[str, list] = {"src": [], "tgt": []}  # training-word vectors (n, n_eval, D)
        self.before_training: dict[str, float] = {}  # the sanity-check validation: the base model's figures
        self.last_validation: dict[str, float] = {}

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
        self.retain_layers = self.preserve.layers(self.k, self.n_layers)

    def on_fit_start(self) -> None:
        """The base model's own text (sampled with the adapters disabled; cached per model, language and seed), and
        the cached top-k reference; the same in a resumed run."""
        needs_train = self.preserve.kl > 0 or (self.preserve.retain > 0 and self.preserve.retain_on == "text")
        if self.text is None and self.harm.text is not None and (needs_train or self.harm.text.validates):
            with self.backbone.disable_adapter():
                self.text = PreservationText(self.backbone, self.harm.tokenizer, self.harm.text,
                                             need_train=needs_train)
                if needs_train and self.preserve.kl and self.preserve.reference == "cached":
                    self.text.cache_reference(self.backbone, self.preserve.top_k)
                if self.text.val:
                    self.text.base_nll = self.text.nll(self.backbone)

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
        weights = {"align": self.align.weight, "translation_lm": self.align.translation_lm,
                   "kl": self.preserve.kl, "retain": self.preserve.retain}
        groups = active_groups(self.options.schedule, self.global_step, self.preserve.active)
        terms = {}
        if "align" in groups and weights["align"]:
            terms["align"] = self.align_term(batch)
        if "translation_lm" in groups and weights["translation_lm"]:
            terms["translation_lm"] = self.translation_term(batch["translation"])
        if ("kl" in groups and weights["kl"]) or ("retain" in groups and weights["retain"]):
            terms.update(self.preservation_terms(batch, weights))
        loss = sum(weights[name] * value for name, value in terms.items())
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}): training stopped. Checkpoints written before this step "
                "are intact; lower optim.lr or raise loss.temperature."
            )
        # sync_dist: the mean over processes, which is the global batch's mean loss (see InfoNCE.forward).
        self.log("train/loss", loss, prog_bar=True, batch_size=B, sync_dist=True)
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=B)
        for name, value in self.loss_fn.logged().items():
            self.log(f"train/{name}", value, batch_size=B)
        return loss

    def align_term(self, batch) -> torch.Tensor:
        """The contrastive loss at layer k; with loss.anchor=base the targets come from the base model."""
        B, words = batch["src_ids"].shape[0], batch["words"]
        if self.align.anchor == "base":
            src = self.layer_k({k: v[:B] for k, v in words.items()})  # (B, D)
            with torch.no_grad(), self.backbone.disable_adapter():
                tgt = self.layer_k({k: v[B:] for k, v in words.items()})
        else:
            vecs = self.layer_k(words)  # (2B, D): sources then targets, one forward pass
            src, tgt = vecs[:B], vecs[B:]
        if self.align.centred:
            src, tgt = self.centre(src, "src"), self.centre(tgt, "tgt")
        return self.loss_fn(src, tgt, batch["src_ids"], batch["tgt_ids"])

    def translation_term(self, seqs: dict) -> torch.Tensor:
        """Causal-LM loss on the answer tokens of the batch's few-shot translation prompts."""
        scored = {"input_ids": seqs["input_ids"], "attention_mask": seqs["attention_mask"],
                  "scored": seqs["labels"][:, 1:] != -100}  # position t predicts token t + 1
        scored["scored"] = F.pad(scored["scored"], (0, 1), value=False)
        logp, _ = forward_text(self.backbone, scored)  # (N, V)
        targets = seqs["labels"][:, 1:][seqs["labels"][:, 1:] != -100]  # (N,)
        return -logp.gather(-1, targets[:, None]).mean()

    def preservation_terms(self, batch, weights: dict) -> dict[str, torch.Tensor]:
        """KL and retain on this step's preservation text (retain on the batch's target words if so set)."""
        out, p = {}, self.preserve
        text = self.text.batch(self.global_step, p.text_batch_size, self.device, p.kl_positions) \
            if self.text is not None and self.text.train is not None else None
        on_text = weights["retain"] and p.retain_on == "text"
        if weights["kl"] or on_text:
            layers = self.retain_layers if on_text else []
            logp, states = forward_text(self.backbone, text, layers)
            live = p.reference == "live" or on_text
            if live:
                with torch.no_grad(), self.backbone.disable_adapter():
                    base_logp, base_states = forward_text(self.backbone, text, layers)
            if weights["kl"]:
                out["kl"] = kl_live(base_logp, logp) if p.reference == "live" else \
                    kl_cached(*self.text.reference_for(text, self.device), logp)
            if on_text:
                out["retain"] = retain_distance(states, base_states, text["attention_mask"].bool(), p.retain_metric)
        if weights["retain"] and p.retain_on == "words":
            B, words = batch["src_ids"].shape[0], batch["words"]
            tgt = {k: v[B:] for k, v in words.items()}
            states = hidden_states(self.backbone, tgt)
            with torch.no_grad(), self.backbone.disable_adapter():
                base = hidden_states(self.backbone, tgt)
            out["retain"] = retain_distance([states[j] for j in self.retain_layers],
                                            [base[j] for j in self.retain_layers], tgt["word_mask"], p.retain_metric)
        return out

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
        if self.val_translation is not None:
            logged.update(self.val_translation.score(self.backbone))
        logged.update(self.harm.figures(self.text, self.backbone, logged))
        if self.trainer.sanity_checking:  # before any step: with num_sanity_val_steps=-1, the base model's figures
            self.before_training = logged
        # equal on every process (each saw the whole set); synced so that checkpointing agrees
        self.log_dict(logged, sync_dist=True, add_dataloader_idx=False)
        self.last_validation = logged  # saved with the checkpoint written after this validation
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
        checkpoint["centre"] = self.centre.state_dict()
        checkpoint["validation"] = dict(self.last_validation)  # what the best checkpoint was chosen on
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
        self.centre.load_state_dict(checkpoint.get("centre", {}))
