"""Before/after evaluation of an adapter's embeddings: every split embedded at every layer with the adapter off and on
(one base model; `tli.eval.vectors`), and per split and reported layer the statistics a reviewer asks for
(`evaluate_run`), the figure's curves (`curves`), eval/pairs.csv (`pair_rows`), and the figures across runs
(`aggregate`; `aggregate_all` adds translation and LM loss for summary["aggregate"]). Markdown: `tli.eval.sections`.

For each variant of the vectors (raw; centred, each language's mean over the training words removed, fitted
separately before and after) it reports every registered metric before and after, and paired tests on three
per-pair scores (`tli.eval.metrics.PAIR_SCORES`): the paper's raw cosine, the baseline-corrected margin, and the
pool-size-free reciprocal rank. Trained and control pairs are compared on the same scores (difference in
differences). The honest null is the centred base model: a change counts as injected alignment that reaches unseen
words only where the centred after-vectors beat the centred before-vectors on control pairs. The reading's claims
("beats", "worse", "targeted") are judged on Holm-adjusted p-values over all of them, and need at least
`MIN_PAIRS_FOR_CLAIMS` pairs per split (`tli.eval.claims`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tli.errors import ConfigError
from tli.eval.claims import ALPHA, MIN_PAIRS_FOR_CLAIMS, adjust_claims, verdict_variant
from tli.eval.lm_loss_stats import aggregate_lm_loss
from tli.eval.metrics import HEADLINE, PAIR_SCORES, MetricsConfig, alignment, mismatched_moments, pair_scores
from tli.eval.pairs import pair_cosines
from tli.eval.stats import aggregate_runs, difference_in_differences, paired_stats
from tli.eval.tables import fmt_p
from tli.eval.translation_stats import aggregate_translation
from tli.eval.vectors import SplitVectors, layer_cells
from tli.model.loading import QUANTIZATIONS

VARIANTS = ("raw", "centred")
SPLITS = ("train", "control", "unseen")  # "unseen": a cross-fitted adapter's held-out fold (tli.eval.unseen)
UNSEEN = {"control": "unseen (control) pairs", "unseen": "unseen (held-out fold) pairs"}  # the verdict's splits


@dataclass
class EvalConfig:
    """`eval.*`."""

    layers: list[int] | None = None  # hidden-state indices to report (null: the adapter's target layer and the last)
    batch_size: int = 64
    n_boot: int = 10000  # bootstrap resamples for confidence intervals
    # Behaviour (tli.eval.translation): few-shot greedy word translation in both directions, before and after.
    translation: bool = False
    shots: int = 5  # demonstrations per prompt, drawn (seed) from the other split: control shots for train words
    max_new_tokens: int = 8  # generated tokens per answer (generation also stops at the first newline)
    generation_batch_size: int = 32  # prompts per generate() call (the predictions do not depend on it)
    nn_shots: bool = True  # also the null "nn_shots": the base model with nearest-neighbour shots (tli.eval.nn_shots)
    # Do no harm (tli.eval.lm_loss): held-out LM loss in data.src_lang and data.tgt_lang, before and after.
    lm_loss: bool = True
    heldout_src: str | None = None  # UTF-8 file, one sentence per line (null: the bundled sample of data.src_lang)
    heldout_tgt: str | None = None  # the same for data.tgt_lang
    # The precision translation and the LM loss are scored in: one a user would generate in (default: none, i.e. full
    # precision; the adapters, trained on the quantized base, are applied on top). The representation figures stay
    # in model.quantization, the precision the adapters were trained in.
    behaviour_quantization: str = "none"

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size={self.batch_size} must be >= 1")
        if self.n_boot < 100:
            raise ConfigError(f"eval.n_boot={self.n_boot} must be >= 100")
        if self.shots < 1:
            raise ConfigError(f"eval.shots={self.shots} must be >= 1: the prompt has no instruction, so a base model "
                              "needs demonstrations to know the task")
        if self.max_new_tokens < 1:
            raise ConfigError(f"eval.max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.generation_batch_size < 1:
            raise ConfigError(f"eval.generation_batch_size={self.generation_batch_size} must be >= 1")
        if self.behaviour_quantization not in QUANTIZATIONS:
            raise ConfigError(f"eval.behaviour_quantization={self.behaviour_quantization!r} is not one of "
                              f"{', '.join(QUANTIZATIONS)}")


def layer_scores(vectors: dict[str, SplitVectors], layers: list[int], options: MetricsConfig,
                 only: set[str] | None = None) -> dict:
    """variant -> split -> layer -> {"metrics": alignment(...), "pairs": pair_scores(...)} for one model state (the
    splits in `only`, or all; centring is always fitted on the "train" split)."""
    out: dict = {}
    for variant, split, _, layer, src, tgt in layer_cells(vectors, options.centre, layers):
        if only is not None and split not in only:
            continue
        gold = vectors[split].gold
        out.setdefault(variant, {}).setdefault(split, {})[layer] = {
            "metrics": alignment(src, tgt, gold, options), "pairs": pair_scores(src, tgt, gold, options)}
    return out


def curves(before: dict[str, SplitVectors], after: dict[str, SplitVectors]) -> dict:
    """Mean pair cosine and mismatched baseline at every index, before and after, per split (for the figure)."""
    out = {}
    for split in before:
        c = {"layers": before[split].layers}
        for tag, v in (("before", before[split]), ("after", after[split])):
            ps, pt = v.src[v.gold.src_index], v.tgt[v.gold.tgt_index]  # (P, n_layers, D)
            c[f"cosine_{tag}"] = pair_cosines(ps, pt).mean(0).tolist()
            c[f"baseline_{tag}"] = [mismatched_moments(ps[:, j], pt[:, j], v.gold)[0] for j in range(len(v.layers))]
        out[split] = c
    return out


def evaluate_run(before: dict, after: dict, layers: list[int], n_boot: int, seed: int) -> dict:
    """From `layer_scores` before and after: split -> layer -> variant -> {before, after, paired}; and, with both
    splits, targeted -> layer -> variant -> score -> difference in differences (trained vs control gains); claims
    (`tli.eval.claims.adjust_claims`: the Holm family the reading's words are judged on) and reading -> layer."""
    result: dict = {}
    for variant in before:
        for split in before[variant]:
            for layer in layers:
                b, a = before[variant][split][layer], after[variant][split][layer]
                result.setdefault(split, {}).setdefault(layer, {})[variant] = {
                    "before": b["metrics"], "after": a["metrics"],
                    "paired": {s: paired_stats(b["pairs"][s], a["pairs"][s], n_boot=n_boot, seed=seed)
                               for s in PAIR_SCORES}}
        if {"train", "control"} <= set(before[variant]):
            for layer in layers:
                result.setdefault("targeted", {}).setdefault(layer, {})[variant] = {
                    s: difference_in_differences(*(state[variant][split][layer]["pairs"][s]
                                                   for split in ("train", "control") for state in (before, after)),
                                                 n_boot=n_boot, seed=seed)
                    for s in PAIR_SCORES}
    result["claims"] = adjust_claims(result, layers)
    result["reading"] = {layer: reading(result, layer) for layer in layers}
    return result


def reading(run: dict, layer: int) -> list[str]:
    """Plain-language lines for one layer: global shift, baseline-corrected change, and the verdict against the
    centred base model (the honest null) on control pairs."""
    lines = []
    for split in SPLITS:
        if split not in run:
            continue
        raw = run[split][layer]["raw"]
        cos, shift = raw["paired"]["cosine"], raw["after"]["baseline_cosine"] - raw["before"]["baseline_cosine"]
        margin = raw["paired"]["margin"]
        text = (f"{split}, index {layer}: raw cosine {_v(cos['mean_before'])} -> {_v(cos['mean_after'])}; "
                f"mismatched pairs moved by {_v(shift, '+.4f')}; margin {_v(margin['mean_before'])} -> "
                f"{_v(margin['mean_after'])} ({fmt_p(margin['wilcoxon_p'])})")
        if cos["n"] < MIN_PAIRS_FOR_CLAIMS:
            text += f" (n = {cos['n']}: too small a split to support a claim)"
        elif cos["delta"] is not None and cos["delta"] > 0 and shift > cos["delta"] / 2:
            text += ": most of the raw gain is a global shift"
        elif cos["delta"] is not None and cos["delta"] < 0 < (margin["delta"] or 0):
            text += ": raw cosine fell while the margin rose (a raw-cosine table would call this a failure)"
        if cos.get("n_nonfinite"):
            text += f" ({cos['n_nonfinite']} pairs with non-finite scores dropped)"
        lines.append(text)
    for split, label in UNSEEN.items():
        if split not in run:
            continue
        variant = verdict_variant(run, layer, split)
        rr = run[split][layer][variant]["paired"]["pool_mrr"]
        p1 = run[split][layer][variant]
        lines.append(
            f"{label}, index {layer}, {variant} vectors: pool-matched MRR {_v(rr['mean_before'])} -> "
            f"{_v(rr['mean_after'])} ({fmt_p(rr['wilcoxon_p'])}); pool P@1 {_v(p1['before']['pool_p_at_1'])} -> "
            f"{_v(p1['after']['pool_p_at_1'])}: " + verdict(rr, variant, split))
    for variant, scores in run.get("targeted", {}).get(layer, {}).items():
        lines.append(f"trained vs control ({variant}, margin): {scores['margin']['reading']}")
    return lines


def _v(x, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def verdict(rr: dict, variant: str, split: str = "control") -> str:
    """The claim on unseen pairs (control, or a cross-fitted adapter's held-out fold), judged on the Holm-adjusted
    Wilcoxon p (`holm_p`, set by `adjust_claims`; the raw p where absent) and refused below `MIN_PAIRS_FOR_CLAIMS`
    pairs."""
    null = "the centred base model" if variant == "centred" else "the base model"
    p = rr.get("holm_p", rr["wilcoxon_p"])
    if rr["n"] < MIN_PAIRS_FOR_CLAIMS:
        return (f"too few {'control' if split == 'control' else 'held-out fold'} pairs (n = {rr['n']}, fewer than "
                f"{MIN_PAIRS_FOR_CLAIMS}) to support a claim about {null}")
    if rr["delta"] is None or p is None:
        return "untestable"
    if "holm_p" in rr:
        null += f" (Holm-adjusted {fmt_p(p)})"
    if p < ALPHA and rr["delta"] > 0:
        return f"the adapter beats {null} on words it never saw"
    if p < ALPHA:
        return f"the adapter is worse than {null} on words it never saw"
    return f"no detectable gain over {null} on words it never saw"


def aggregate(runs: list[dict], layers: list[int]) -> dict:
    """Across runs (seeds): split -> layer -> variant -> {metric_after / delta: mean, std, n}; and targeted dids."""
    out: dict = {}
    for split in SPLITS:
        if not all(split in r for r in runs):
            continue
        for layer in layers:
            for variant in runs[0][split][layer]:
                flat = [{**{f"{m}_after": r[split][layer][variant]["after"][m] for m in HEADLINE},
                         **{f"{m}_delta": r[split][layer][variant]["after"][m] - r[split][layer][variant]["before"][m]
                            for m in HEADLINE},
                         **{f"{s}_paired_delta": r[split][layer][variant]["paired"][s]["delta"] for s in PAIR_SCORES}}
                        for r in runs]
                out.setdefault(split, {}).setdefault(layer, {})[variant] = aggregate_runs(flat, list(flat[0]))
    if all("targeted" in r for r in runs):
        for layer in layers:
            for variant in runs[0]["targeted"][layer]:
                flat = [{f"{s}_did": r["targeted"][layer][variant][s]["did"] for s in PAIR_SCORES} for r in runs]
                out.setdefault("targeted", {}).setdefault(layer, {})[variant] = aggregate_runs(flat, list(flat[0]))
    return out


def aggregate_all(runs: list[dict], layers: list[int]) -> dict:
    """summary["aggregate"]: the embedding figures (`aggregate`), plus "translation" and "lm_loss" across runs where
    they were computed."""
    out = aggregate(runs, layers)
    if all("translation" in r for r in runs):
        out["translation"] = aggregate_translation([r["translation"] for r in runs])
    if all("lm_loss" in r for r in runs):
        out["lm_loss"] = aggregate_lm_loss([r["lm_loss"] for r in runs])
    return out


def pair_rows(run: str, pairs: dict[str, list], before: dict, after: dict, layers: list[int]) -> list[dict]:
    """eval/pairs.csv: one row per run, split, pair and layer, with each per-pair score before and after (`pairs`:
    split -> its pairs, in the order they were scored)."""
    rows = []
    for split, split_pairs in pairs.items():
        for layer in layers:
            cols = {}
            for variant in before:
                prefix = "" if variant == "raw" else f"{variant}_"
                for score, values in before[variant][split][layer]["pairs"].items():
                    short = "cos" if score == "cosine" else score
                    cols[f"{prefix}{short}_before"] = values.tolist()
                    cols[f"{prefix}{short}_after"] = after[variant][split][layer]["pairs"][score].tolist()
            for p, pair in enumerate(split_pairs):
                rows.append({"run": run, "split": split, "source": pair.source, "target": pair.target,
                             "layer": layer, **{k: v[p] for k, v in cols.items()}})
    return rows
