"""Layer-wise alignment scan: at which hidden-state index are source words closest to their translations?

One forward pass per batch covers every index. For every index and split the scan reports the registered metrics
(`tli.eval.metrics`), raw and (with `metrics.centre`) after centring each language on the training words, plus a
bootstrap CI of the gold cosine and the BOS-norm diagnostic. The recommended layer maximises a scale-free criterion
(retrieval MRR by default): raw cosine and the raw margin reward layers where all cosines are small or all alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from tli.console import track
from tli.data.lexicon import Lexicon
from tli.errors import ConfigError
from tli.eval.metrics import METRICS, MetricsConfig, alignment, metric
from tli.eval.stats import bootstrap_ci
from tli.eval.vectors import embed_split, layer_cells
from tli.model.embed import Probe
from tli.model.modes import eval_mode


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


def run_scan(model, tokenizer, splits: dict[str, Lexicon], probe: Probe, options: ScanConfig,
             metrics: MetricsConfig, tag: str = "base") -> list[dict]:
    """Rows for every (split, vectors, layer): every registered metric, the cosine's bootstrap CI and the BOS-norm
    diagnostic. `model` may be a PeftModel (its active adapter is scanned)."""
    with eval_mode(model):
        vectors = {s: embed_split(model, tokenizer, lex, probe, options.layers, options.batch_size)
                   for s, lex in splits.items()}
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
