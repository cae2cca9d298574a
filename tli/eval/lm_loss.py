"""Do no harm: the language-modelling loss of held-out sentences before and after an adapter.

Each sentence is tokenised with the tokenizer's own special tokens (BOS for Llama and Gemma). Every token after the
first is scored given its prefix; added special tokens before the text (BOS) are context only, never a target. So a
single unpadded sentence gets exactly `model(input_ids, labels=input_ids).loss`. Batches are right-padded and the
padding is masked out of the loss, so the numbers do not depend on batch size. The loss of a language is the
token-weighted mean NLL (nats per token) over its sentences; perplexity is its exponential.

A rise is flagged (`compare_lm_loss`) when the mean NLL grows by more than `threshold` (default 2%, relative) AND
the per-sentence NLLs rose consistently: one-sided Wilcoxon signed-rank test (after > before), p < `alpha` (0.05).
The first condition ignores harmless drift, the second a change carried by one or two sentences.

Bundled samples (`heldout_sentences`): English, Korean and Swahili, in `tli/lexicons/heldout/` (see its datasheet).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import wilcoxon

from tli.errors import ConfigError, DataError
from tli.eval.stats import aggregate_runs

AGGREGATED = ("nll_before", "nll_after", "change", "relative_change")
HELDOUT_FILES = {"english": "en", "en": "en", "eng": "en", "korean": "ko", "ko": "ko", "kor": "ko",
                 "swahili": "sw", "kiswahili": "sw", "sw": "sw", "swa": "sw", "swh": "sw"}


def read_sentences(path: str | Path) -> list[str]:
    """Sentences of a UTF-8 text file, one per line; blank lines are skipped."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    sentences = [" ".join(line.split()) for line in lines if line.strip()]
    if not sentences:
        raise DataError(f"{path}: contains no sentences (expected one sentence per line)")
    return sentences


def bundled_heldout(lang: str) -> Path | None:
    """The bundled held-out file of a language (name such as "Korean" or ISO code "ko"), or None."""
    code = HELDOUT_FILES.get(lang.strip().casefold())
    return None if code is None else Path(str(resources.files("tli") / "lexicons" / "heldout" / f"{code}.txt"))


def heldout_sentences(lang: str) -> list[str]:
    """The bundled held-out sample of a language (name such as "Korean" or ISO code "ko"), or a file path."""
    if Path(lang).expanduser().is_file():
        return read_sentences(lang)
    path = bundled_heldout(lang)
    if path is None:
        raise DataError(
            f"no bundled held-out sentences for language {lang!r} (bundled: English, Korean, Swahili, or the codes "
            f"{', '.join(sorted(set(HELDOUT_FILES.values())))}); write your own UTF-8 file with one sentence per "
            "line and pass its path instead of the language name")
    return read_sentences(path)


@torch.no_grad()
def sentence_nll(model, tokenizer, sentences: Sequence[str], *, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(summed NLL in nats, number of scored tokens) per sentence, in input order: two (N,) arrays."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    ids = tokenizer(list(sentences), add_special_tokens=True)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    sums, counts = np.zeros(len(ids)), np.zeros(len(ids), dtype=np.int64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, padding=True, padding_side="right",
                                  return_tensors="pt").to(device)
            input_ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, T), (B, T)
            logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
            labels = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (B, T-1): padding is no target
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels, reduction="none")  # (B, T-1)
            sums[rows] = nll.sum(1).double().cpu().numpy()
            counts[rows] = (labels != -100).sum(1).cpu().numpy()
    finally:
        model.train(was_training)
    return sums, counts


def lm_loss(model, tokenizer, sentences: Sequence[str], *, batch_size: int = 8) -> dict[str, Any]:
    """Token-weighted mean NLL and perplexity of `sentences`, with per-sentence mean NLLs for paired tests."""
    sums, counts = sentence_nll(model, tokenizer, sentences, batch_size=batch_size)
    if counts.sum() == 0:
        raise ValueError("no token to score: every sentence is a single token")
    nll = float(sums.sum() / counts.sum())
    return {"n_sentences": len(sentences), "n_tokens": int(counts.sum()), "nll": nll, "perplexity": math.exp(nll),
            "sentence_nll": (sums / np.maximum(counts, 1)).tolist(), "sentence_tokens": counts.tolist()}


def compare_lm_loss(before: Mapping[str, Any], after: Mapping[str, Any], *, threshold: float = 0.02,
                    alpha: float = 0.05) -> dict[str, Any]:
    """Change of the held-out loss (after - before) and the `rise` flag (rule in the module docstring)."""
    if before["sentence_tokens"] != after["sentence_tokens"]:
        raise ValueError("before and after scored different tokens: same sentences and tokenizer are required")
    b, a = np.asarray(before["sentence_nll"]), np.asarray(after["sentence_nll"])  # (N,), (N,)
    change = after["nll"] - before["nll"]
    relative = change / before["nll"] if before["nll"] > 0 else (math.inf if change > 0 else 0.0)
    if np.all(a == b) or b.size < 2:
        p = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scipy's note on ties / small samples
            p = float(wilcoxon(a, b, alternative="greater").pvalue)
    rise = bool(relative > threshold and p < alpha)
    verdict = "RISE: the adapter made held-out text less likely" if rise else "no material rise"
    reading = (f"NLL {before['nll']:.3f} -> {after['nll']:.3f} nats/token ({100 * relative:+.1f}%), perplexity "
               f"{before['perplexity']:.3g} -> {after['perplexity']:.3g}, Wilcoxon p (rise) = {p:.3g}: {verdict} "
               f"(flagged when > {100 * threshold:g}% and p < {alpha:g})")
    return {"n_sentences": before["n_sentences"], "n_tokens": before["n_tokens"], "nll_before": before["nll"],
            "nll_after": after["nll"], "change": change, "relative_change": float(relative),
            "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"], "wilcoxon_p": p,
            "threshold": threshold, "alpha": alpha, "rise": rise, "reading": reading}


def lm_loss_section(comparisons: Mapping[str, Mapping[str, Any]], header: str = "## Do no harm: held-out text") -> str:
    """Markdown for eval/report.md from {language: compare_lm_loss result}."""
    lines = [header, "",
             "Mean negative log-likelihood per token (nats) of short held-out sentences, before and after the "
             "adapter. A rise is flagged when it exceeds the threshold and the per-sentence NLLs rose consistently "
             "(one-sided Wilcoxon signed-rank test).", "",
             "| language | sentences | tokens | NLL before | NLL after | change | perplexity | Wilcoxon p | flag |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for lang, c in comparisons.items():
        flag = "**rise**" if c["rise"] else "ok"
        lines.append(f"| {lang} | {c['n_sentences']} | {c['n_tokens']} | {c['nll_before']:.3f} | "
                     f"{c['nll_after']:.3f} | {100 * c['relative_change']:+.1f}% | "
                     f"{c['perplexity_before']:.3g} → {c['perplexity_after']:.3g} | {c['wilcoxon_p']:.3g} | {flag} |")
    risen = [lang for lang, c in comparisons.items() if c["rise"]]
    if risen:
        lines += ["", f"**Warning:** the language-modelling loss rose in {', '.join(risen)}: the adapter harms "
                      "ordinary text in that language."]
    return "\n".join(lines) + "\n"


def aggregate_lm_loss(runs: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Across runs (seeds), from one {language: compare_lm_loss result} per run: {language: {nll_before | nll_after |
    change | relative_change: {mean, std (ddof=1), n}, "rises": number of runs flagged}}, for the languages every
    run has."""
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for lang in runs[0]:
        if all(lang in r for r in runs):
            out[lang] = {**aggregate_runs([r[lang] for r in runs], AGGREGATED),
                         "rises": sum(bool(r[lang]["rise"]) for r in runs)}
    return out


def lm_loss_aggregate_section(aggregate: Mapping[str, Mapping[str, Any]],
                              header: str = "### Do no harm, across runs (mean ± sd, ddof = 1)") -> str:
    """Markdown for eval/report.md from `aggregate_lm_loss`."""
    def cell(a: Mapping[str, Any], scale: float = 1.0, sign: str = "", digits: int = 3, unit: str = "") -> str:
        sd = "" if a["std"] is None else f" ± {scale * a['std']:.{digits}f}{unit}"
        return f"{scale * a['mean']:{sign}.{digits}f}{unit}{sd}"

    lines = [header, "", "| language | runs | NLL before | NLL after | change | runs flagged |",
             "|---|---:|---:|---:|---:|---:|"]
    for lang, a in aggregate.items():
        lines.append(f"| {lang} | {a['nll_after']['n']} | {cell(a['nll_before'])} | {cell(a['nll_after'])} | "
                     f"{cell(a['relative_change'], 100, '+', 1, '%')} | {a['rises']} |")
    return "\n".join(lines) + "\n"
