"""Layer-wise alignment scan: at which hidden-state index are source words closest to their translations?

One forward pass per batch covers every index. For every index and split the scan reports the registered metrics
(`tli.eval.metrics`), raw and (with `metrics.centre`) after centring each language on the training words, plus a
bootstrap CI of the gold cosine and the BOS-norm diagnostic. The recommended layer maximises a scale-free criterion
(retrieval MRR by default): raw cosine and the raw margin reward layers where all cosines are small or all alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tli.console import track
from tli.data.lexicon import Lexicon
from tli.errors import ConfigError
from tli.eval.metrics import METRICS, Centring, MetricsConfig, alignment, metric
from tli.eval.pairs import GoldPairs
from tli.eval.stats import bootstrap_ci
from tli.model.embed import Probe, embed_words


@dataclass
class ScanConfig:
    """`scan.*`."""

    layers: list[int] | None = None  # hidden-state indices to scan (null = all 0..L)
    batch_size: int = 64
    criterion: str = "mrr"  # the recommended layer maximises this metric (scale-free: mrr, p_at_1, margin_z, ...)
    criterion_split: str = "train"  # ... on this split
    criterion_centred: bool = False  # ... after centring
    n_boot: int = 1000  # bootstrap resamples for the cosine CI

    def __post_init__(self):
        if not metric(self.criterion, "scan.criterion").higher_is_better:
            raise ConfigError(f"scan.criterion={self.criterion!r} is descriptive, not a criterion")
        if self.batch_size < 1:
            raise ConfigError(f"scan.batch_size={self.batch_size} must be >= 1")
        if self.criterion_split not in ("train", "control"):
            raise ConfigError(f"scan.criterion_split={self.criterion_split!r} must be train or control")


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
        raise ConfigError(f"{lexicon.path}: the lexicon has no pairs to scan")
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


def run_scan(model, tokenizer, splits: dict[str, Lexicon], probe: Probe, options: ScanConfig,
             metrics: MetricsConfig, tag: str = "base") -> list[dict]:
    """Rows for every (split, vectors, layer): every registered metric, the cosine's bootstrap CI and the BOS-norm
    diagnostic. `model` may be a PeftModel (its active adapter is scanned)."""
    was_training = model.training
    model.eval()
    try:
        vectors = {s: embed_split(model, tokenizer, lex, probe, options.layers, options.batch_size)
                   for s, lex in splits.items()}
    finally:
        model.train(was_training)
    rows = []
    n_cells = (2 if metrics.centre else 1) * sum(len(v.layers) for v in vectors.values())
    for variant, split, slot, layer, src, tgt in track(layer_cells(vectors, metrics.centre), n_cells, "scoring"):
        v = vectors[split]
        values = alignment(src, tgt, v.gold, metrics)
        cos = (src[v.gold.src_index] * tgt[v.gold.tgt_index]).sum(-1)  # (P,)
        low, high = bootstrap_ci(cos, n_boot=options.n_boot, seed=metrics.seed)
        rows.append({"model": tag, "split": split, "vectors": variant, "layer": layer, **values,
                     "cosine_ci_low": low, "cosine_ci_high": high, "bos_norm_ratio": float(v.bos_norm_ratio[slot])})
    return rows


def recommend(rows: list[dict], options: ScanConfig, tag: str = "base") -> dict:
    """The recommended target layer (argmax of the criterion over trainable indices 1..L), why, and the raw-cosine
    argmax (what the paper's pilot would have chosen) for comparison."""
    variant = "centred" if options.criterion_centred else "raw"
    chosen = [r for r in rows if r["split"] == options.criterion_split and r["model"] == tag
              and r["vectors"] == variant]
    if not chosen:
        raise ConfigError(f"scan.criterion_split={options.criterion_split!r} ({variant} vectors) was not scanned")
    trainable = [r for r in chosen if r["layer"] >= 1] or chosen  # index 0 (embeddings) has no block to adapt
    best = max(trainable, key=lambda r: (r[options.criterion], -r["layer"]))
    raw = max(chosen, key=lambda r: (r["cosine"], -r["layer"]))
    label = METRICS[options.criterion].label
    why = (f"index {best['layer']} has the highest {label} on the {options.criterion_split} pairs ({variant} vectors, "
           f"{best['n_pairs']} pairs, {best['retrieval_pool']} candidates): {best[options.criterion]:.4f}; its gold "
           f"cosine is {best['cosine']:.4f} against {best['baseline_cosine']:.4f} for mismatched pairs. The raw cosine "
           f"peaks at index {raw['layer']} ({raw['cosine']:.4f}), where mismatched pairs reach "
           f"{raw['baseline_cosine']:.4f}: raw cosine rewards layers where all words look alike.")
    return {"criterion": options.criterion, "criterion_split": options.criterion_split, "vectors": variant,
            "recommended_layer": best["layer"], "recommended_value": best[options.criterion], "why": why,
            "raw_cosine_argmax_layer": raw["layer"], "raw_cosine_max": raw["cosine"],
            "baseline_at_raw_argmax": raw["baseline_cosine"]}
