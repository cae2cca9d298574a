"""Pooled word embeddings at every hidden-state index from one forward pass per batch.

Indexing follows Hugging Face `output_hidden_states`: index 0 is the token-embedding output, index i (1..L) the
output of decoder block i (in the full HF model the last index has the final norm applied).

Pooling modes (a registry: `POOLINGS`):
- `mean`: mean over the word's own tokens; BOS/EOS/PAD and prompt-template tokens excluded (default);
- `mean_all`: mean over every attended token, BOS and template included (the paper's pilot and training);
- `last`: the word's last token.
Vectors are L2-normalised. Words are batched by length and returned in input order; padding uses explicit position
ids, so the vectors do not depend on batch size, padding side or order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tli.console import track
from tli.errors import ConfigError, DataError, ModelError
from tli.model.loading import check_layers, num_layers

INDEXING = ("hidden-state index i as in Hugging Face output_hidden_states: 0 = token embeddings, i = output of "
            "decoder block i; the last index has the model's final norm applied")

Pool = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * w).sum(-2) / w.sum(-2).clamp(min=1.0)  # (..., B, D)


def _pool_mean(hidden, attention_mask, word_mask):
    return _masked_mean(hidden, word_mask)


def _pool_mean_all(hidden, attention_mask, word_mask):
    return _masked_mean(hidden, attention_mask)


def _pool_last(hidden, attention_mask, word_mask):
    T = word_mask.shape[-1]
    last = (T - 1) - word_mask.flip(-1).to(torch.int8).argmax(-1)  # (B,) index of the last word token
    index = last.view(*([1] * (hidden.dim() - 3)), -1, 1, 1).expand(*hidden.shape[:-2], 1, hidden.shape[-1])
    return hidden.gather(-2, index).squeeze(-2)  # (..., B, D)


POOLINGS: dict[str, Pool] = {"mean": _pool_mean, "mean_all": _pool_mean_all, "last": _pool_last}



@dataclass
class Probe:
    """Where and how a word is read out of the model (`model.target_layer`, `model.pooling`, `model.template`)."""

    target_layer: int = 15  # hidden-state index k that training pulls translations together at (default preset's)
    pooling: str = "mean"  # a key of POOLINGS
    template: str = "{word}"  # prompt around the word; its tokens never count as the word's

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={self.pooling!r} is not a pooling mode; valid: {', '.join(POOLINGS)}")
        if not isinstance(self.template, str) or self.template.count("{word}") != 1:
            raise ConfigError(f"model.template={self.template!r} must contain '{{word}}' exactly once")

    def settings(self) -> dict:
        """The probe as a plain dict (for sidecars and reports)."""
        return {"target_layer": self.target_layer, "pooling": self.pooling, "template": self.template}


@dataclass
class Encoded:
    """One tokenised word: ids with BOS etc., and which positions belong to the word itself."""

    input_ids: list[int]
    word_mask: list[bool]


def tokenize_words(tokenizer, words: Sequence[str], template: str = "{word}") -> list[Encoded]:
    """Tokenise each word inside `template`; a token is the word's if its character span overlaps the word's."""
    start = template.index("{word}")
    texts = [template.replace("{word}", w) for w in words]
    enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    out = []
    for w, ids, offsets, special in zip(
        words, enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"], strict=True
    ):
        end = start + len(w)
        mask = [not s and a < end and b > start for (a, b), s in zip(offsets, special, strict=True)]
        if not any(mask):
            raise DataError(f"word {w!r} produced no tokens of its own inside template {template!r}")
        out.append(Encoded(list(ids), mask))
    return out


def collate(items: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to a batch; position ids count only attended tokens, so left and right padding agree."""
    T = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)  # (B, T)
    attn = torch.zeros((len(items), T), dtype=torch.long)
    word = torch.zeros((len(items), T), dtype=torch.bool)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        sl = slice(T - n, T) if padding_side == "left" else slice(0, n)
        ids[i, sl] = torch.tensor(e.input_ids)
        attn[i, sl] = 1
        word[i, sl] = torch.tensor(e.word_mask)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return {"input_ids": ids, "attention_mask": attn, "word_mask": word, "position_ids": position_ids}


def decoder_of(model):
    """The decoder stack (embeddings + blocks, no LM head) of a causal LM, unwrapping a PEFT model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder() if hasattr(base, "get_decoder") else base


def hidden_states(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """All hidden states (L+1 tensors of (B, T, D)) of one forward pass through the decoder (no LM head).

    L is the config's current depth, so inside `truncated(model, k)` that is k + 1 states; a decoder that returns
    another number (a family that ignores the truncation) is an error, never a silent full-depth run."""
    decoder = decoder_of(model)
    out = decoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        output_hidden_states=True,
        use_cache=False,
    )
    expected = num_layers(decoder.config) + 1
    if len(out.hidden_states) != expected:
        raise ModelError(
            f"{type(decoder).__name__} returned {len(out.hidden_states)} hidden states where its config asks for "
            f"{expected} (0..{expected - 1}): this model family does not follow config.num_hidden_layers, so the "
            "truncated training forward would silently run the full depth; set train.truncate=false"
        )
    return out.hidden_states


def pool(hidden: torch.Tensor, batch: dict[str, torch.Tensor], mode: str) -> torch.Tensor:
    """(..., B, T, D) -> L2-normalised (..., B, D)."""
    return F.normalize(POOLINGS[mode](hidden.float(), batch["attention_mask"], batch["word_mask"]), dim=-1)


@dataclass
class WordEmbeddings:
    vectors: torch.Tensor  # (N, n_layers, D), L2-normalised, float32, input order
    layers: list[int]  # hidden-state index of each layer slot
    bos_norm_ratio: torch.Tensor  # (n_layers,) median BOS-state norm / median norm of the words' own tokens


@torch.no_grad()
def embed_words(
    model,
    tokenizer,
    words: Sequence[str],
    probe: Probe | None = None,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    padding_side: str = "right",
    progress: str | None = None,
) -> WordEmbeddings:
    """Embed `words` at hidden-state indices `layers` (default: all, 0..L) with one forward pass per batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not words:
        raise ValueError("no words to embed")
    if layers is not None:
        check_layers(layers, num_layers(decoder_of(model).config), "layers")
    probe = probe or Probe()
    encoded = tokenize_words(tokenizer, words, probe.template)
    device = next(decoder_of(model).parameters()).device
    order = sorted(range(len(words)), key=lambda i: (-len(encoded[i].input_ids), i))  # longest first
    out, bos_norms, word_norms = None, [], []
    starts = range(0, len(order), batch_size)
    for s in track(starts, len(starts), progress) if progress else starts:
        idx = order[s : s + batch_size]
        batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id, padding_side)
        batch = {k: v.to(device) for k, v in batch.items()}
        states = hidden_states(model, batch)
        sel = range(len(states)) if layers is None else layers
        h = torch.stack([states[j] for j in sel]).float()  # (n_layers, B, T, D)
        pooled = pool(h, batch, probe.pooling).transpose(0, 1).cpu()  # (B, n_layers, D)
        if out is None:  # (N, n_layers, D), filled in input order: no second copy of the vectors
            out = torch.empty(len(words), *pooled.shape[1:], dtype=pooled.dtype)
        out[torch.tensor(idx)] = pooled
        first = batch["attention_mask"].argmax(-1)  # (B,) first attended position (the BOS if the model adds one)
        norms = h.norm(dim=-1)  # (n_layers, B, T)
        bos_norms.append(norms[:, torch.arange(len(idx), device=device), first].cpu())  # (n_layers, B)
        word_norms.append(norms[:, batch["word_mask"]].cpu())  # (n_layers, n_word_tokens)
    layer_ids = list(range(len(states))) if layers is None else list(layers)
    ratio = torch.cat(bos_norms, 1).median(1).values / torch.cat(word_norms, 1).median(1).values
    return WordEmbeddings(out, layer_ids, ratio)
