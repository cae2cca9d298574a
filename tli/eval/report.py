"""The evaluation report (Markdown): the paper's before/after table, then what tells alignment from a global shift
(baseline, margin, retrieval, centring), the trained-vs-control comparison and a plain-language reading."""

from __future__ import annotations

from pathlib import Path

from tli.eval.lm_loss import lm_loss_aggregate_section, lm_loss_section
from tli.eval.metrics import PAIR_SCORES
from tli.eval.translation_report import aggregate_section, translation_section
from tli.io import atomic_write_text

BEHAVIOUR = ("translation", "lm_loss")  # summary["aggregate"] keys that are not splits of the embedding figures


def _f(x, digits: int = 4) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _p(p) -> str:
    return "n/a" if p is None else ("< 1e-4" if p < 1e-4 else f"{p:.4f}")


def _cells(run: dict):
    """(split, layer, variant, statistics) for every split, reported layer and vector variant of one run."""
    for split in ("train", "control"):
        for layer, per_variant in run.get(split, {}).items():
            for variant, stats in per_variant.items():
                yield split, layer, variant, stats


def render(summary: dict) -> str:
    s = summary["settings"]
    sizes = ", ".join(f"{split} {info['pairs']} pairs" for split, info in s["lexicons"].items())
    lines = [
        "# TLI evaluation report", "",
        f"Model `{s['model']}` (revision {s['revision']}, quantization {s['quantization']}), pooling `{s['pooling']}` "
        f"(template `{s['template']}`), adapter(s) {', '.join(f'`{a}`' for a in s['adapters'])} trained at index "
        f"{s['target_layer']}. Layers are Hugging Face hidden-state indices ({s['indexing']}). Lexicons: {sizes}. "
        f"Centred vectors: each language's mean over the training words removed, fitted separately before and after "
        f"training. Pool-matched retrieval: pools of {s['metrics']['pool_size']} pairs, so train and control compare. "
        f"Bootstrap: {s['n_boot']} resamples, seed {s['seed']}.", "",
    ]
    t = s.get("translation")
    if t:
        lines += [f"Few-shot word translation: {t['shots']} shots per prompt drawn (seed {t['shot_seed']}) from the "
                  "other split (control pairs for training words and vice versa), the same before and after; greedy, "
                  f"at most {t['max_new_tokens']} new tokens, answer up to the first newline.", ""]
    risen = [f"{lang} ({name})" for name, run in summary["runs"].items()
             for lang, c in run.get("lm_loss", {}).items() if c["rise"]]
    if risen:
        lines += [f"**Do no harm: the held-out language-modelling loss rose in {', '.join(risen)}** (see the "
                  "do-no-harm sections below).", ""]
    for run_name, run in summary["runs"].items():
        lines += [f"## {run_name}", "", "### Mean cosine of translation pairs (the paper's table; raw vectors)", "",
                  "| split | layer | n | before | after | delta | delta % | t | p (paired t) | p (Wilcoxon) | "
                  "Cohen's d_z | 95% CI of delta |", "|" + "---|" * 12]
        for split, layer, variant, st in _cells(run):
            if variant == "raw":
                r = st["paired"]["cosine"]
                lines.append(
                    f"| {split} | {layer} | {r['n']} | {_f(r['mean_before'])} | {_f(r['mean_after'])} | "
                    f"{_f(r['delta'])} | {_f(r['delta_pct'], 2)} | {_f(r['t'], 2)} | {_p(r['p'])} | "
                    f"{_p(r['wilcoxon_p'])} | {_f(r['cohen_dz'], 2)} | {_f(r['delta_ci_low'])} to "
                    f"{_f(r['delta_ci_high'])} |")
        lines += ["", "### Against the mismatched-pair baseline, and retrieval (before -> after)", "",
                  "| split | layer | vectors | baseline | margin | margin_z | P@1 (candidates) | pool P@1 | MRR | "
                  "CSLS P@1 |", "|" + "---|" * 10]
        for split, layer, variant, st in _cells(run):
            b, a = st["before"], st["after"]

            def ba(key, b=b, a=a):
                return f"{_f(b[key])} -> {_f(a[key])}"

            lines.append(f"| {split} | {layer} | {variant} | {ba('baseline_cosine')} | {ba('margin')} | "
                         f"{ba('margin_z')} | {ba('p_at_1')} ({a['retrieval_pool']}) | {ba('pool_p_at_1')} | "
                         f"{ba('mrr')} | {ba('csls_p_at_1')} |")
        lines += ["", "### Paired tests on per-pair scores", "",
                  "`margin`: the pair's cosine minus its source's mean cosine to mismatched targets; `pool_mrr`: the "
                  "translation's reciprocal rank among it and random mismatched words of the split (pool-matched).", "",
                  "| split | layer | vectors | score | before | after | delta | 95% CI | p (Wilcoxon) |",
                  "|" + "---|" * 9]
        for split, layer, variant, st in _cells(run):
            for score in PAIR_SCORES:
                r = st["paired"][score]
                lines.append(f"| {split} | {layer} | {variant} | {score} | {_f(r['mean_before'])} | "
                             f"{_f(r['mean_after'])} | {_f(r['delta'])} | {_f(r['delta_ci_low'])} to "
                             f"{_f(r['delta_ci_high'])} | {_p(r['wilcoxon_p'])} |")
        if run.get("targeted"):
            lines += ["", "### Trained vs control pairs (difference in differences of the per-pair gains)", "",
                      "| layer | vectors | score | train gain | control gain | difference | 95% CI | p (Welch) |",
                      "|" + "---|" * 8]
            for layer, per_variant in run["targeted"].items():
                for variant, per_score in per_variant.items():
                    for score, d in per_score.items():
                        lines.append(f"| {layer} | {variant} | {score} | {_f(d['train_delta'])} | "
                                     f"{_f(d['control_delta'])} | {_f(d['did'])} | {_f(d['did_ci_low'])} to "
                                     f"{_f(d['did_ci_high'])} | {_p(d['p'])} |")
        lines += ["", "### Reading", ""]
        lines += [f"- {line}." for per_layer in run["reading"].values() for line in per_layer]
        lines.append("")
        if run.get("translation"):
            lines.append(translation_section(run["translation"], header="### Few-shot word translation"))
        if run.get("lm_loss"):
            lines.append(lm_loss_section(run["lm_loss"], header="### Do no harm: held-out text"))
    if summary.get("aggregate"):
        lines += ["## Across runs (mean ± standard deviation)", "",
                  "| split | layer | vectors | statistic | mean | std | runs |", "|---|---|---|---|---|---|---|"]
        for split, per_layer in summary["aggregate"].items():
            if split in BEHAVIOUR:
                continue
            for layer, per_variant in per_layer.items():
                for variant, stats in per_variant.items():
                    for key, v in stats.items():
                        lines.append(f"| {split} | {layer} | {variant} | {key} | {_f(v['mean'])} | {_f(v['std'])} | "
                                     f"{v['n']} |")
        lines.append("")
        if summary["aggregate"].get("translation"):
            lines.append(aggregate_section(summary["aggregate"]["translation"]))
        if summary["aggregate"].get("lm_loss"):
            lines.append(lm_loss_aggregate_section(summary["aggregate"]["lm_loss"]))
    return "\n".join(lines)


def write_report(summary: dict, path: str | Path) -> Path:
    return atomic_write_text(path, render(summary) + "\n")
