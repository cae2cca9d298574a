"""Layer-wise alignment scan: which hidden-state index aligns source words with their translations?

For every hidden-state index (one forward pass per batch covers all of them) and every split, it reports the gold
cosine with a bootstrap CI, the mismatched-pair baseline and margin, retrieval P@1/P@5/MRR in both directions, CSLS
P@1 and the BOS-norm diagnostic. Raw cosine alone cannot tell alignment from a global shift (every word moving
together); the margin and retrieval can.
"""

from __future__ import annotations

from dataclasses import dataclass

from tli.embed import PoolingSpec, embed_words
from tli.lexicon import Lexicon
from tli.metrics import alignment_report, gold_matrix

# Criterion name -> row column it maximises. Margin is the default: it is raw cosine corrected for the global shift.
CRITERIA = {"margin": "margin", "p_at_1": "p_at_1", "mrr": "mrr", "csls_p_at_1": "csls_p_at_1", "cosine": "cosine"}


class ScanError(ValueError):
    pass


@dataclass(frozen=True)
class ScanSettings:
    layers: tuple[int, ...] | None = None  # hidden-state indices; None = all 0..L
    batch_size: int = 64
    csls_k: int = 10
    n_boot: int = 1000
    seed: int = 0
    criterion: str = "margin"
    criterion_split: str = "train"

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ScanError(f"scan.criterion={self.criterion!r} is not one of {', '.join(CRITERIA)}")
        if self.batch_size < 1:
            raise ScanError(f"batch_size={self.batch_size} must be >= 1")
        if self.csls_k < 1:
            raise ScanError(f"scan.csls_k={self.csls_k} must be >= 1")


def check_layers(layers, n_layers: int) -> tuple[int, ...] | None:
    """Validate requested hidden-state indices against 0..L."""
    if layers is None:
        return None
    layers = tuple(layers)
    bad = [j for j in layers if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j <= n_layers]
    if bad or not layers:
        raise ScanError(f"layers={list(layers)}: {bad or 'empty'}; valid hidden-state indices are 0..{n_layers}")
    return tuple(sorted(set(layers)))


def scan_split(model, tokenizer, lexicon: Lexicon, split: str, pooling: PoolingSpec, settings: ScanSettings,
               tag: str = "base") -> list[dict]:
    """One row per hidden-state index for one split."""
    if len(lexicon) == 0:
        raise ScanError(f"{lexicon.path}: the {split} lexicon has no pairs to scan")
    src_words, tgt_words, gold, pair_s, pair_t = gold_matrix(lexicon.sources, lexicon.targets)
    # Source and target words go through the model together: one forward pass per batch for all layers.
    emb = embed_words(model, tokenizer, src_words + tgt_words, pooling, layers=settings.layers,
                      batch_size=settings.batch_size)
    src, tgt = emb.vectors[: len(src_words)], emb.vectors[len(src_words):]  # (Ns, n_layers, D), (Nt, n_layers, D)
    rows = []
    for slot, layer in enumerate(emb.layers):
        report = alignment_report(src[:, slot], tgt[:, slot], gold, pair_s, pair_t, csls_k=settings.csls_k,
                                  n_boot=settings.n_boot, seed=settings.seed)
        rows.append({"model": tag, "split": split, "layer": layer, **report,
                     "bos_norm_ratio": float(emb.bos_norm_ratio[slot])})
    return rows


def run_scan(model, tokenizer, splits: dict[str, Lexicon], pooling: PoolingSpec, settings: ScanSettings,
             tag: str = "base") -> list[dict]:
    """Rows for every (split, layer). `model` may be a PeftModel (its adapter is whatever is active)."""
    was_training = model.training
    model.eval()
    try:
        return [row for split, lex in splits.items()
                for row in scan_split(model, tokenizer, lex, split, pooling, settings, tag)]
    finally:
        model.train(was_training)


def recommend(rows: list[dict], settings: ScanSettings, tag: str = "base") -> dict:
    """The recommended target layer (argmax of the criterion over trainable indices 1..L) and the raw-cosine argmax."""
    chosen = [r for r in rows if r["split"] == settings.criterion_split and r["model"] == tag]
    if not chosen:
        raise ScanError(f"scan.criterion_split={settings.criterion_split!r} was not scanned")
    trainable = [r for r in chosen if r["layer"] >= 1] or chosen  # index 0 (embeddings) has no block to adapt
    column = CRITERIA[settings.criterion]
    best = max(trainable, key=lambda r: (r[column], -r["layer"]))
    raw = max(chosen, key=lambda r: (r["cosine"], -r["layer"]))
    return {
        "criterion": settings.criterion,
        "criterion_split": settings.criterion_split,
        "recommended_layer": best["layer"],
        "recommended_value": best[column],
        "raw_cosine_argmax_layer": raw["layer"],
        "raw_cosine_max": raw["cosine"],
        "baseline_at_raw_argmax": raw["baseline_cosine"],
    }
