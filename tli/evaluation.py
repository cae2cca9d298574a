"""Before/after evaluation of an adapter: per-pair cosines at every layer with the adapter off and on (one base
model, peft's adapter toggling), and the statistics a reviewer asks for per split and reported layer."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from tli.embed import PoolingSpec, embed_words
from tli.lexicon import Lexicon
from tli.metrics import alignment_report, gold_matrix, pair_cosines
from tli.stats import aggregate_runs, difference_in_differences, paired_stats


def split_embeddings(model, tokenizer, lexicon: Lexicon, pooling: PoolingSpec, batch_size: int,
                     adapter_enabled: bool) -> dict:
    """Unique-word embeddings at every layer for one split, with the adapter on or off."""
    src_words, tgt_words, gold, pair_s, pair_t = gold_matrix(lexicon.sources, lexicon.targets)
    toggle = nullcontext() if adapter_enabled or not hasattr(model, "disable_adapter") else model.disable_adapter()
    with toggle:
        emb = embed_words(model, tokenizer, src_words + tgt_words, pooling, batch_size=batch_size)
    n = len(src_words)
    return {"src": emb.vectors[:n], "tgt": emb.vectors[n:], "gold": gold, "pair_s": pair_s, "pair_t": pair_t,
            "layers": emb.layers}


def pair_cosine_table(before: dict, after: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair cosines at every layer: (n_layers, P) before and after."""
    def cos(e):
        return pair_cosines(e["src"][e["pair_s"]].transpose(0, 1), e["tgt"][e["pair_t"]].transpose(0, 1))

    return cos(before), cos(after)  # (n_layers, P) each


def layer_report(before: dict, after: dict, slot: int, n_boot: int, seed: int) -> dict:
    """Everything for one split at one layer: paired statistics plus baseline, margin and retrieval before/after."""
    cb, ca = pair_cosine_table(before, after)
    out = paired_stats(cb[slot].numpy(), ca[slot].numpy(), n_boot=n_boot, seed=seed)
    for tag, e in (("before", before), ("after", after)):
        rep = alignment_report(e["src"][:, slot], e["tgt"][:, slot], e["gold"], e["pair_s"], e["pair_t"],
                               n_boot=200, seed=seed)
        for key in ("baseline_cosine", "margin", "p_at_1", "mrr", "csls_p_at_1"):
            out[f"{key}_{tag}"] = rep[key]
    out["margin_delta"] = out["margin_after"] - out["margin_before"]
    return out


def evaluate_run(before: dict[str, dict], after: dict[str, dict], layers: list[int], n_boot: int,
                 seed: int) -> dict:
    """Statistics keyed split -> layer, plus the trained-vs-control difference in differences per layer."""
    result: dict = {}
    for split in before:
        slots = {layer: before[split]["layers"].index(layer) for layer in layers}
        result[split] = {str(layer): layer_report(before[split], after[split], slot, n_boot, seed)
                         for layer, slot in slots.items()}
    if "train" in before and "control" in before:
        result["targeted"] = {}
        for layer in layers:
            slot = before["train"]["layers"].index(layer)
            tb, ta = pair_cosine_table(before["train"], after["train"])
            cb, ca = pair_cosine_table(before["control"], after["control"])
            result["targeted"][str(layer)] = difference_in_differences(
                tb[slot].numpy(), ta[slot].numpy(), cb[slot].numpy(), ca[slot].numpy(), n_boot=n_boot, seed=seed)
    return result


AGGREGATED = ("mean_after", "delta", "delta_pct", "cohen_dz", "margin_after", "margin_delta", "p_at_1_after",
              "mrr_after")


def aggregate(runs: list[dict], layers: list[int]) -> dict:
    """Mean and standard deviation across runs (seeds) of the main numbers, per split and layer."""
    out: dict = {}
    for split in ("train", "control"):
        if all(split in r for r in runs):
            out[split] = {str(layer): aggregate_runs([r[split][str(layer)] for r in runs], AGGREGATED)
                          for layer in layers}
    if all("targeted" in r for r in runs):
        out["targeted"] = {str(layer): aggregate_runs([r["targeted"][str(layer)] for r in runs], ("did",))
                           for layer in layers}
    return out
