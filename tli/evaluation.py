"""Before/after evaluation of an adapter: per-pair cosines at every layer with the adapter off and on (one base
model, peft's adapter toggling), and the statistics a reviewer asks for per split and reported layer."""

from __future__ import annotations

from tli.embed import PoolingSpec, embed_words
from tli.lexicon import Lexicon
from tli.metrics import alignment_report, gold_matrix, mismatched_baseline, pair_cosines
from tli.stats import aggregate_runs, difference_in_differences, paired_stats


def split_embeddings(model, tokenizer, lexicon: Lexicon, pooling: PoolingSpec, batch_size: int) -> dict:
    """Unique-word embeddings at every layer for one split, and each pair's cosine at every layer."""
    src_words, tgt_words, gold, pair_s, pair_t = gold_matrix(lexicon.sources, lexicon.targets)
    emb = embed_words(model, tokenizer, src_words + tgt_words, pooling, batch_size=batch_size)
    src, tgt = emb.vectors[: len(src_words)], emb.vectors[len(src_words):]  # (Ns, n_layers, D), (Nt, n_layers, D)
    pair_cos = pair_cosines(src[pair_s].transpose(0, 1), tgt[pair_t].transpose(0, 1))  # (n_layers, P)
    return {"src": src, "tgt": tgt, "gold": gold, "pair_s": pair_s, "pair_t": pair_t, "layers": emb.layers,
            "pair_cos": pair_cos}


def baseline_curve(e: dict) -> list[float]:
    """Mismatched-pair baseline cosine at every layer of one split's embeddings."""
    src, tgt = e["src"][e["pair_s"]].transpose(0, 1), e["tgt"][e["pair_t"]].transpose(0, 1)  # (n_layers, P, D)
    gold = e["gold"][e["pair_s"]][:, e["pair_t"]]  # (P, P)
    return mismatched_baseline(src, tgt, gold=gold).tolist()


def layer_report(before: dict, after: dict, slot: int, n_boot: int, seed: int) -> dict:
    """Everything for one split at one layer: paired statistics plus baseline, margin and retrieval before/after."""
    out = paired_stats(before["pair_cos"][slot].numpy(), after["pair_cos"][slot].numpy(), n_boot=n_boot, seed=seed)
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
            result["targeted"][str(layer)] = difference_in_differences(
                *(e[split]["pair_cos"][slot].numpy() for split in ("train", "control") for e in (before, after)),
                n_boot=n_boot, seed=seed)
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
