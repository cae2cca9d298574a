"""The text a training run preserves behaviour on and validates harm with (`tli.eval.base_text` samples).

`TextSource` says where the text comes from (languages, seed, the model's fingerprint and cache, the user's files);
`PreservationText` holds it tokenised once: training rows cycled by optimizer step (so a resumed run sees exactly the
rows the straight run saw), the cached top-k base reference (`preserve.reference=cached`), and the validation
sentences with the base model's NLL on them, against which `val/nll_change/<lang>` and `val/harm` are measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tli.eval.base_text import preservation_text
from tli.eval.lm_loss import lm_loss
from tli.training.preserve import forward_text, topk_reference


@dataclass
class TextSource:
    langs: tuple[str, str]  # data.src_lang, data.tgt_lang
    seed: int
    n_train: int
    n_val: int | dict[str, int]  # validation samples (per language)
    max_new_tokens: int
    fingerprint: str | None = None
    cache_dir: str | None = None
    files: list[str] = field(default_factory=list)
    fallback: dict[str, list[str]] = field(default_factory=dict)  # openers for languages without bundled ones
    written: dict[str, list[str]] | None = None  # written validation sentences per language (preserve.val_text)

    def described(self) -> dict[str, str]:
        """{language: what its harm is measured on}, e.g. "24 written sentences + 16 base-model samples"."""
        out = {}
        for lang in self.langs:
            n = self.n_val.get(lang, 0) if isinstance(self.n_val, dict) else self.n_val
            written = len((self.written or {}).get(lang, []))
            parts = [f"{written} written sentences"] * bool(written) + [f"{n} base-model samples"] * bool(n)
            out[lang] = " + ".join(parts) or "none"
        return out

    @property
    def validates(self) -> bool:
        """Whether there is validation text to score (samples or written sentences)."""
        counts = self.n_val.values() if isinstance(self.n_val, dict) else [self.n_val]
        return bool(any(counts) or any((self.written or {}).values()))


def tokenize_text(tokenizer, sentences: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded (N, T) ids and mask, and `scored` (N, T): positions whose next token is text (a target)."""
    enc = tokenizer(sentences, add_special_tokens=True, padding=True, padding_side="right", return_tensors="pt")
    mask = enc["attention_mask"]
    scored = torch.zeros_like(mask, dtype=torch.bool)
    scored[:, :-1] = (mask[:, 1:] == 1)
    return {"input_ids": enc["input_ids"], "attention_mask": mask, "scored": scored}


class PreservationText:
    def __init__(self, base_model, tokenizer, source: TextSource, *, need_train: bool):
        """`base_model`: the model with its adapters disabled (the samples and reference are the base's)."""
        text = preservation_text(base_model, tokenizer, list(source.langs), seed=source.seed,
                                 n_train=source.n_train if need_train else 0, n_val=source.n_val,
                                 max_new_tokens=source.max_new_tokens, fingerprint=source.fingerprint,
                                 cache_dir=source.cache_dir, files=source.files if need_train else (),
                                 fallback=source.fallback, written=source.written)
        self.tokenizer, self.val = tokenizer, {lang: split.val for lang, split in text.items()}
        longest = max((len(split.train) for split in text.values()), default=0)
        rows = [split.train[i] for i in range(longest) for split in text.values() if i < len(split.train)]
        self.rows = rows
        self.train = tokenize_text(tokenizer, rows) if rows else None
        self.reference: tuple | None = None
        self.base_nll: dict[str, float] = {}

    def batch(self, step: int, size: int, device, positions: int = 0) -> dict[str, torch.Tensor]:
        """The training rows of optimizer step `step` (cycled in order); with `positions` > 0, only that many of
        their scored positions stay scored (drawn by a generator seeded with the step: the same in a resumed run)."""
        n = self.train["input_ids"].shape[0]
        rows = torch.tensor([(step * size + j) % n for j in range(min(size, n))])
        out = {k: v[rows] for k, v in self.train.items()}
        where = out["scored"].nonzero()  # (n_scored, 2)
        if 0 < positions < len(where):
            keep = where[torch.randperm(len(where), generator=torch.Generator().manual_seed(step))[:positions]]
            out["scored"] = torch.zeros_like(out["scored"])
            out["scored"][keep[:, 0], keep[:, 1]] = True
        out = {k: v.to(device) for k, v in out.items()}
        out["rows"] = rows
        return out

    @torch.no_grad()
    def cache_reference(self, base_model, top_k: int, batch_size: int = 8) -> None:
        """Top-k base log-probs of every training row's scored positions: (N, T, k) values and ids, (N, T) rest."""
        n, T = self.train["input_ids"].shape
        device = next(base_model.parameters()).device
        top = torch.zeros(n, T, top_k)
        idx = torch.zeros(n, T, top_k, dtype=torch.long)
        rest = torch.zeros(n, T)
        for s in range(0, n, batch_size):
            rows = slice(s, min(s + batch_size, n))
            batch = {k: v[rows].to(device) for k, v in self.train.items()}
            logp, _ = forward_text(base_model, batch)  # (N_scored, V)
            t, i, r = topk_reference(logp, top_k)
            scored = self.train["scored"][rows]
            top[rows][scored], idx[rows][scored], rest[rows][scored] = t.cpu(), i.cpu(), r.cpu()
        self.reference = (top, idx, rest)

    def reference_for(self, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cached reference at a batch's scored positions: (N, k), (N, k), (N,)."""
        rows, scored = batch["rows"], batch["scored"].cpu()
        return tuple(part[rows][scored].to(device) for part in self.reference)

    def nll(self, model) -> dict[str, float]:
        """Token-weighted mean NLL (nats/token) of each language's validation sentences."""
        return {lang: lm_loss(model, self.tokenizer, sentences)["nll"] for lang, sentences in self.val.items()
                if sentences}


@dataclass
class Harm:
    """What validation text is scored for (`objective.score_text`) and the budget (`objective.max_harm`)."""

    text: TextSource | None = None
    objective_key: str | None = None
    max_harm: float | None = None
    tokenizer: object = field(default=None, repr=False)

    def figures(self, text: PreservationText | None, model, logged: dict) -> dict[str, float]:
        """val/nll/<lang>, val/nll_change/<lang> (relative to the base model) and val/harm (the larger change) of
        `model` on the validation text; under a budget, val/objective: `logged`'s objective, or -inf above it."""
        out: dict[str, float] = {}
        if text is None or not text.base_nll:
            return out
        for lang, nll in text.nll(model).items():
            base = text.base_nll[lang]
            out[f"val/nll/{lang}"], out[f"val/nll_change/{lang}"] = nll, nll / base - 1 if base > 0 else 0.0
        out["val/harm"] = max(v for k, v in out.items() if k.startswith("val/nll_change/"))
        if self.max_harm is not None and self.objective_key in logged:
            within = out["val/harm"] <= self.max_harm
            out["val/objective"] = logged[self.objective_key] if within else float("-inf")
        return out
