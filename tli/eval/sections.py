"""The Markdown sections of eval/report.md, one pair per concern: `<concern>_section` (one run) and
`<concern>_aggregate_section` (across runs), for the embeddings (from `tli.eval.evaluation`), few-shot translation
(`tli.eval.translation_stats`) and the held-out LM loss (`tli.eval.lm_loss_stats`). Each returns text ending in a
newline; `tli.eval.report` stitches them. Numbers and p-values are written by `tli.eval.tables`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tli.eval.evaluation import SPLITS
from tli.eval.metrics import PAIR_SCORES
from tli.eval.power import mde_mcnemar
from tli.eval.tables import fmt_number as _f
from tli.eval.tables import fmt_p, markdown_table
from tli.eval.translation_stats import AGGREGATED as TRANSLATION_AGGREGATED


def _cells(run: dict):
    """(split, layer, variant, statistics) for every split, reported layer and vector variant of one run."""
    for split in SPLITS:
        for layer, per_variant in run.get(split, {}).items():
            for variant, stats in per_variant.items():
                yield split, layer, variant, stats


def _ci(low, high) -> str:
    return f"{_f(low)} to {_f(high)}"


def embedding_section(run: dict) -> str:
    """The embedding tables of one run: the paper's cosine table, baseline and retrieval, paired tests on per-pair
    scores, trained vs control, and the plain-language reading."""
    cosine = [[split, layer, r["n"], _f(r["mean_before"]), _f(r["mean_after"]), _f(r["delta"]), _f(r["delta_pct"], 2),
               _f(r["t"], 2), fmt_p(r["p"]), fmt_p(r["wilcoxon_p"]), _f(r["cohen_dz"], 2),
               _ci(r["delta_ci_low"], r["delta_ci_high"])]
              for split, layer, variant, st in _cells(run) if variant == "raw" for r in [st["paired"]["cosine"]]]
    baseline = []
    for split, layer, variant, st in _cells(run):
        b, a = st["before"], st["after"]

        def ba(key, b=b, a=a):
            return f"{_f(b[key])} -> {_f(a[key])}"

        baseline.append([split, layer, variant, ba("baseline_cosine"), ba("margin"), ba("margin_z"),
                         f"{ba('p_at_1')} ({a['retrieval_pool']})", ba("pool_p_at_1"), ba("mrr"), ba("csls_p_at_1")])
    paired = [[split, layer, variant, score, _f(r["mean_before"]), _f(r["mean_after"]), _f(r["delta"]),
               _ci(r["delta_ci_low"], r["delta_ci_high"]), fmt_p(r["wilcoxon_p"])]
              for split, layer, variant, st in _cells(run) for score in PAIR_SCORES for r in [st["paired"][score]]]
    lines = ["### Mean cosine of translation pairs (the paper's table; raw vectors)", "",
             markdown_table(cosine, ["split", "layer", "n", "before", "after", "delta", "delta %", "t", "p (paired t)",
                                     "p (Wilcoxon)", "Cohen's d_z", "95% CI of delta"]),
             "", "### Against the mismatched-pair baseline, and retrieval (before -> after)", "",
             markdown_table(baseline, ["split", "layer", "vectors", "baseline", "margin", "margin_z",
                                       "P@1 (candidates)", "pool P@1", "MRR", "CSLS P@1"]),
             "", "### Paired tests on per-pair scores", "",
             "`margin`: the pair's cosine minus its source's mean cosine to mismatched targets; `pool_mrr`: the "
             "translation's reciprocal rank among it and random mismatched words of the split (pool-matched).", "",
             markdown_table(paired, ["split", "layer", "vectors", "score", "before", "after", "delta", "95% CI",
                                     "p (Wilcoxon)"])]
    if run.get("targeted"):
        targeted = [[layer, variant, score, _f(d["train_delta"]), _f(d["control_delta"]), _f(d["did"]),
                     _ci(d["did_ci_low"], d["did_ci_high"]), fmt_p(d["p"]), fmt_p(d.get("holm_p"))]
                    for layer, per_variant in run["targeted"].items() for variant, per_score in per_variant.items()
                    for score, d in per_score.items()]
        lines += ["", "### Trained vs control pairs (difference in differences of the per-pair gains)", "",
                  markdown_table(targeted, ["layer", "vectors", "score", "train gain", "control gain", "difference",
                                            "95% CI", "p (Welch)", "p (Holm)"])]
    lines += ["", "### Reading", ""]
    claims = run.get("claims")
    if claims:
        lines += [f"Claims (beats, worse, targeted) are judged on p-values Holm-adjusted over {claims['n']} claims "
                  f"(family-wise {claims['alpha']:g}); a split with fewer than {claims['min_pairs']} pairs supports "
                  "no claim.", ""]
    lines += [f"- {line}." for per_layer in run["reading"].values() for line in per_layer]
    return "\n".join(lines) + "\n"


def embedding_aggregate_section(aggregate: dict, behaviour: tuple[str, ...] = (),
                                header: str = "## Across runs (mean ± standard deviation)") -> str:
    """The embedding figures across runs (`tli.eval.evaluation.aggregate`); keys in `behaviour` are skipped."""
    rows = [[split, layer, variant, key, _f(v["mean"]), _f(v["std"]), v["n"]]
            for split, per_layer in aggregate.items() if split not in behaviour
            for layer, per_variant in per_layer.items() for variant, stats in per_variant.items()
            for key, v in stats.items()]
    table = markdown_table(rows, ["split", "layer", "vectors", "statistic", "mean", "std", "runs"])
    return f"{header}\n\n{table}\n"


def _acc(s: dict, name: str) -> str:
    low, high = s[f"{name}_ci_low"], s[f"{name}_ci_high"]
    sign = "+" if name == "change" else ""
    ci = "" if low is None else f" [{low:{sign}.3f}, {high:{sign}.3f}]"
    return "n/a" if s[name] is None else f"{s[name]:{sign}.3f}{ci}"


def _words(flips: list[dict], max_words: int) -> str:
    shown = ", ".join(f"{f['source']} ({f['prediction_before'] or '∅'} → {f['prediction_after'] or '∅'})"
                      for f in flips[:max_words])
    rest = len(flips) - max_words
    return shown + (f", and {rest} more" if rest > 0 else "") if flips else "none"


def translation_section(summary: dict, *, aggregate: dict | None = None, max_words: int = 20,
                        header: str = "## Few-shot word translation") -> str:
    """From `summarize_translation`: accuracy table, trained-vs-control readings, flipped words (and, with
    `aggregate`, mean ± sd across runs)."""
    cells = [(split, d, s) for split, by in summary.items() if split != "targeted" for d, s in by.items()]
    table = [[split, d, s["n"], _acc(s, "accuracy_before"), _acc(s, "accuracy_after"), _acc(s, "change"),
              s["mcnemar_b"], s["mcnemar_c"], fmt_p(s["mcnemar_p"]),
              _f(mde_mcnemar(s["n"], (s["mcnemar_b"] + s["mcnemar_c"]) / s["n"] if s["n"] else 0.0), 3)]
             for split, d, s in cells]
    lines = [header, "",
             "Exact match after normalisation (Unicode NFC, case, surrounding punctuation and spaces, a leading "
             "English \"the\", \"a\", \"an\" or \"to\"); any listed translation counts. Brackets: 95% percentile "
             "bootstrap CIs (the change: paired). McNemar: exact binomial test on the discordant words "
             "(b right → wrong, c wrong → right). MDE: the smallest accuracy change McNemar's test detects at this "
             "n with power 0.8 (alpha 0.05), from the observed discordance (Connor 1987).", "",
             markdown_table(table, ["split", "direction", "n", "accuracy before", "accuracy after", "change", "b",
                                    "c", "McNemar p", "MDE"], align="llrlllrrrr")]
    if summary.get("targeted"):
        lines += ["", "Trained vs control words (difference of accuracy changes, splits resampled independently):", ""]
        lines += [f"- {d}: {c['reading']}" for d, c in summary["targeted"].items()]
    lines += _graded_lines(summary)
    lines += ["", "Words that flipped (prediction before → after):", ""]
    for split, d, s in cells:
        lines.append(f"- {split}, {d}, right → wrong ({len(s['right_to_wrong'])}): "
                     f"{_words(s['right_to_wrong'], max_words)}")
        lines.append(f"- {split}, {d}, wrong → right ({len(s['wrong_to_right'])}): "
                     f"{_words(s['wrong_to_right'], max_words)}")
    if aggregate:
        lines += ["", translation_aggregate_section(aggregate, header="Across runs (mean ± sd, ddof = 1):")]
    return "\n".join(lines) + "\n"


def _graded_lines(summary: dict) -> list[str]:
    """The graded scores (`tli.eval.graded`) of `translation_section`: paired before/after per cell, and the
    difference in differences of trained vs control words."""
    cells = [(split, d, s["graded"]) for split, by in summary.items() if split != "targeted" for d, s in by.items()
             if "graded" in s]
    if not cells:
        return []
    rows = [[split, d, g, r["n"], _f(r["mean_before"]), _f(r["mean_after"]), _f(r["delta"]),
             _ci(r["delta_ci_low"], r["delta_ci_high"]), fmt_p(r["wilcoxon_p"])]
            for split, d, graded in cells for g, r in graded.items()]
    lines = ["", "Graded scores, per word (`gold_logprob`: mean log-probability per token of the best listed "
             "translation, teacher-forced after the prompt; `chrf`: chrF 0-100 of the prediction against the best "
             "listed translation; `gold_rank`: rank of the gold's first token at the end of the prompt, 1 = greedy "
             "choice, lower is better). Paired bootstrap CI of the mean change, Wilcoxon signed-rank p.", "",
             markdown_table(rows, ["split", "direction", "score", "n", "before", "after", "delta", "95% CI",
                                   "p (Wilcoxon)"], align="lllrrrrlr")]
    did = [[d, g, _f(r["train_delta"]), _f(r["control_delta"]), _f(r["did"]), _ci(r["did_ci_low"], r["did_ci_high"]),
            fmt_p(r["p"])] for d, c in (summary.get("targeted") or {}).items() for g, r in c.get("graded", {}).items()]
    if did:
        lines += ["", "Graded scores, trained vs control words (difference in differences):", "",
                  markdown_table(did, ["direction", "score", "train change", "control change", "difference",
                                       "95% CI", "p (Welch)"], align="llrrrlr")]
    return lines


def _mean_sd(a: dict) -> str:
    if a["mean"] is None:
        return "n/a"
    return f"{a['mean']:.3f}" + ("" if a["std"] is None else f" ± {a['std']:.3f}")


def translation_aggregate_section(
        aggregate: dict, header: str = "### Few-shot word translation across runs (mean ± sd, ddof = 1)") -> str:
    """From `aggregate_translation`: accuracies and changes per split and direction, mean ± sd over runs."""
    rows = [[split, d, a["accuracy_after"]["n"], *(_mean_sd(a[k]) for k in TRANSLATION_AGGREGATED)]
            for split, by in aggregate.items() if split != "targeted" for d, a in by.items()]
    lines = [header, "", markdown_table(rows, ["split", "direction", "runs", "accuracy before", "accuracy after",
                                               "change"], align="llrlll")]
    for d, a in (aggregate.get("targeted") or {}).items():
        lines.append(f"\nTrained minus control change, {d}: {_mean_sd(a['difference'])}")
    graded = [[split, d, g, r["delta"]["n"], *(_mean_sd(r[k]) for k in ("mean_before", "mean_after", "delta"))]
              for split, by in aggregate.items() if split != "targeted" for d, a in by.items()
              for g, r in a.get("graded", {}).items()]
    if graded:
        lines += ["", "Graded scores across runs:", "",
                  markdown_table(graded, ["split", "direction", "score", "runs", "before", "after", "delta"],
                                 align="lllrlll")]
    lines += [f"\nGraded trained minus control change, {d}, {g}: {_mean_sd(r['did'])}"
              for d, a in (aggregate.get("targeted") or {}).items() for g, r in a.get("graded", {}).items()]
    return "\n".join(lines) + "\n"


def lm_loss_section(comparisons: Mapping[str, Mapping[str, Any]], header: str = "## Do no harm: held-out text") -> str:
    """From {language: compare_lm_loss result}: the loss before and after per language, and a warning on a rise."""
    rows = [[lang, c["n_sentences"], c["n_tokens"], f"{c['nll_before']:.3f}", f"{c['nll_after']:.3f}",
             "n/a" if c["relative_change"] is None else f"{100 * c['relative_change']:+.1f}%",
             f"{c['perplexity_before']:.3g} → {c['perplexity_after']:.3g}",
             fmt_p(c["wilcoxon_p"]), _f(c.get("mde"), 3), "**rise**" if c["rise"] else "ok"]
            for lang, c in comparisons.items()]
    lines = [header, "",
             "Mean negative log-likelihood per token (nats) of short held-out sentences, before and after the "
             "adapter. A rise is flagged when it exceeds the threshold and the per-sentence NLLs rose consistently "
             "(one-sided Wilcoxon signed-rank test). MDE: the smallest mean per-sentence NLL change (nats) a paired "
             "test detects at this n with power 0.8 (alpha 0.05).", "",
             markdown_table(rows, ["language", "sentences", "tokens", "NLL before", "NLL after", "change",
                                   "perplexity", "Wilcoxon p", "MDE", "flag"], align="lrrrrrlrrl")]
    risen = [lang for lang, c in comparisons.items() if c["rise"]]
    if risen:
        lines += ["", f"**Warning:** the language-modelling loss rose in {', '.join(risen)}: the adapter harms "
                      "ordinary text in that language."]
    return "\n".join(lines) + "\n"


def lm_loss_aggregate_section(aggregate: Mapping[str, Mapping[str, Any]],
                              header: str = "### Do no harm, across runs (mean ± sd, ddof = 1)") -> str:
    """From `aggregate_lm_loss`: the loss before and after and its relative change per language, mean ± sd."""
    def cell(a: Mapping[str, Any], scale: float = 1.0, sign: str = "", digits: int = 3, unit: str = "") -> str:
        if a["mean"] is None:
            return "n/a"
        sd = "" if a["std"] is None else f" ± {scale * a['std']:.{digits}f}{unit}"
        return f"{scale * a['mean']:{sign}.{digits}f}{unit}{sd}"

    rows = [[lang, a["nll_after"]["n"], cell(a["nll_before"]), cell(a["nll_after"]),
             cell(a["relative_change"], 100, "+", 1, "%"), a["rises"]] for lang, a in aggregate.items()]
    table = markdown_table(rows, ["language", "runs", "NLL before", "NLL after", "change", "runs flagged"],
                           align="lrrrrr")
    return f"{header}\n\n{table}\n"


def intervention_section(info: dict) -> str:
    """The report's section on a run that is an intervention: what it is and the validation table of every alpha."""
    ridge = "" if info.get("ridge") is None else f", lambda {info['ridge']:g}"
    what = info["type"] if info["type"] == "mean_shift" else \
        f"linear_map ({info.get('solver')}{ridge}, update {info.get('update')})"
    budget = "(no budget)" if info.get("max_harm") is None else f"{100 * info['max_harm']:g}%"
    lines = ["### Intervention", "",
             f"{what} at hidden-state indices {info['layers']}, on the {info.get('position')} position(s), fitted on "
             f"{info.get('n_fit_pairs', '?')} {'deranged ' if info.get('fit_on') == 'deranged' else ''}training "
             f"pairs; alpha {info['alpha']:+g} chosen on {info.get('n_val_pairs', '?')} validation pairs by "
             f"{info.get('select_on')}, within a rise of the source-language validation-text NLL of at most "
             f"{budget}.", ""]
    table = info.get("validation") or []
    if table:
        lines += ["| alpha | accuracy | gold log-prob | text NLL | rise | within budget | chosen |",
                  "|---|---|---|---|---|---|---|"]
        for r in table:
            lines.append(f"| {r['alpha']:+g} | {_opt(r.get('accuracy'), '.3f')} | {_opt(r.get('gold_logprob'))} | "
                         f"{_opt(r.get('nll'))} | {_opt(r.get('rise'), '+.2%')} | "
                         f"{'yes' if r['within_budget'] else 'no'} | {'*' if r.get('chosen') else ''} |")
        lines.append("")
    return "\n".join(lines)


def _opt(x, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def unseen_alignment_section(pooled: Mapping[str, Any]) -> str:
    """The cross-fitted representation pool (`tli.eval.unseen.pooled_alignment`): per pool, layer, vectors and
    per-pair score, the pooled paired test over every adapter's held-out fold, with the folds' sign agreement."""
    rows = [[pool, layer, variant, score, r["n"], f"{_f(r['mean_before'])} -> {_f(r['mean_after'])}", _f(r["delta"]),
             _ci(r["delta_ci_low"], r["delta_ci_high"]), fmt_p(r["wilcoxon_p"]),
             f"{r['n_positive']} up, {r['n_negative']} down", _f(r["mde"])]
            for pool, by_layer in pooled.items() for layer, by_variant in by_layer.items()
            for variant, by_score in by_variant.items() for score, r in by_score.items()]
    return ("## Representations on unseen words (cross-fitted)\n\nEvery training pair scored once per seed by the "
            "adapter that never saw it (its held-out fold), before -> after, pooled over (fold, seed) strata; the "
            "verdict's score is the centred `pool_mrr`.\n\n"
            + markdown_table(rows, ["pool", "layer", "vectors", "score", "pairs", "before -> after", "delta",
                                    "95% CI", "p (Wilcoxon)", "strata", "MDE"]) + "\n")
