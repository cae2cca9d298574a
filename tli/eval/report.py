"""The evaluation report (Markdown), stitched from `tli.eval.sections`: the settings, then per run the embedding
section (the paper's before/after table, then what tells alignment from a global shift: baseline, margin, retrieval,
centring; the trained-vs-control comparison and a plain-language reading), few-shot translation and the held-out LM
loss; with several runs, each concern across runs."""

from __future__ import annotations

from pathlib import Path

from tli.eval.headline import behaviour_table
from tli.eval.recipe_alignment import recipe_alignment_section
from tli.eval.sections import (
    embedding_aggregate_section,
    embedding_section,
    intervention_section,
    lm_loss_aggregate_section,
    lm_loss_section,
    translation_aggregate_section,
    translation_section,
    unseen_alignment_section,
)
from tli.io import atomic_write_text

BEHAVIOUR = ("translation", "lm_loss")  # summary["aggregate"] keys that are not splits of the embedding figures


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
    if s.get("translation") or s.get("lm_loss"):
        q = s.get("behaviour_quantization", s["quantization"])
        lines += [f"Behaviour (translation, held-out text) is scored with the base model in quantization {q}"
                  + (" (full precision)" if q == "none" else "") + ", the adapters applied on top; the representation "
                  f"figures in {s['quantization']}, the precision the adapters were trained in.", ""]
    t = s.get("translation")
    if t:
        lines += [f"Few-shot word translation: {t['shots']} shots per prompt drawn (seed {t['shot_seed']}) from the "
                  "other split (control pairs for training words and vice versa), the same before and after; greedy, "
                  f"at most {t['max_new_tokens']} new tokens, answer up to the first newline.", ""]
    table = behaviour_table(summary)  # the behaviour first; the representation figures follow
    if table:
        lines += [table]
    if summary.get("unseen_alignment"):
        lines += [unseen_alignment_section(summary["unseen_alignment"])]
    if summary.get("recipe_alignment"):
        lines += [recipe_alignment_section(summary["recipe_alignment"])]
    risen = [f"{lang} ({name})" for name, run in summary["runs"].items()
             for lang, c in run.get("lm_loss", {}).items() if c["rise"]]
    if risen:
        lines += [f"**Do no harm: the held-out language-modelling loss rose in {', '.join(risen)}** (see the "
                  "do-no-harm sections below).", ""]
    for run_name, run in summary["runs"].items():
        lines += [f"## {run_name}", ""]
        if run.get("intervention"):  # an inference-time map (tli.intervention), not an adapter
            lines.append(intervention_section(run["intervention"]))
        lines.append(embedding_section(run))
        if run.get("translation"):
            lines.append(translation_section(run["translation"], header="### Few-shot word translation"))
        if run.get("lm_loss"):
            lines.append(lm_loss_section(run["lm_loss"], header="### Do no harm: held-out text"))
    aggregate = summary.get("aggregate")
    if aggregate:
        lines.append(embedding_aggregate_section(aggregate, BEHAVIOUR))
        if aggregate.get("translation"):
            lines.append(translation_aggregate_section(aggregate["translation"]))
        if aggregate.get("lm_loss"):
            lines.append(lm_loss_aggregate_section(aggregate["lm_loss"]))
    return "\n".join(lines)


def write_report(summary: dict, path: str | Path) -> Path:
    return atomic_write_text(path, render(summary) + "\n")
