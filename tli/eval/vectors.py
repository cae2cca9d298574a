"""The vectors the scan and the evaluation score: one split's unique words embedded at the chosen hidden-state
indices (`SplitVectors`, `embed_split`), and every (variant, split, layer) cell of them, raw and centred
(`layer_cells`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tli.data.lexicon import Lexicon
from tli.errors import DataError
from tli.eval.metrics import Centring
from tli.eval.pairs import GoldPairs
from tli.model.embed import Probe, embed_words


@dataclass
class SplitVectors:
    """One split's unique words embedded at the scanned indices."""

    gold: GoldPairs
    src: torch.Tensor  # (Ns, n_layers, D), L2-normalised
    tgt: torch.Tensor  # (Nt, n_layers, D)
    layers: list[int]  # hidden-state index of each layer slot
    bos_norm_ratio: torch.Tensor  # (n_layers,)


def embed_split(model, tokenizer, lexicon: Lexicon, probe: Probe, layers: list[int] | None,
                batch_size: int) -> SplitVectors:
    """Source and target words go through the model together: one forward pass per batch for all layers."""
    if len(lexicon) == 0:
        raise DataError(f"{lexicon.path}: the lexicon has no pairs to scan")
    gold = GoldPairs.from_pairs(lexicon.sources, lexicon.targets)
    emb = embed_words(model, tokenizer, gold.src_keys + gold.tgt_keys, probe, layers=layers, batch_size=batch_size,
                      progress=f"embedding {lexicon.path.name}")
    n = len(gold.src_keys)
    return SplitVectors(gold, emb.vectors[:n], emb.vectors[n:], emb.layers, emb.bos_norm_ratio)


def layer_cells(vectors: dict[str, SplitVectors], centre: bool, layers: list[int] | None = None) -> Iterator[tuple]:
    """(variant, split, slot, layer, src (Ns, D), tgt (Nt, D)) for every vector variant (raw; centred on this model
    state's training words, whichever split is scored), split and scanned (or listed) layer, one layer at a time:
    memory holds the raw vectors only."""
    centring = Centring.fit(vectors["train"].src, vectors["train"].tgt) if centre else None
    for variant in ("raw", "centred") if centring else ("raw",):
        for split, v in vectors.items():
            for slot, layer in enumerate(v.layers):
                if layers is not None and layer not in layers:
                    continue
                src, tgt = v.src[:, slot], v.tgt[:, slot]
                if variant == "centred":
                    src, tgt = centring.apply(src, "src", slot), centring.apply(tgt, "tgt", slot)
                yield variant, split, slot, layer, src, tgt
