"""The behavioural half of an evaluation: few-shot word translation (`tli.eval.translation`, compared in
`tli.eval.translation_stats`) and the held-out LM loss ("do no harm": `tli.eval.lm_loss`, `tli.eval.lm_loss_stats`)
of one model state, compared before and after an adapter; the settings, console lines and W&B values they report."""

from __future__ import annotations

import hashlib
import logging
import time

from tli.errors import ConfigError, DataError
from tli.eval.evaluation import EvalConfig
from tli.eval.lm_loss import heldout_file, lm_loss, read_sentences
from tli.eval.lm_loss_stats import compare_lm_loss
from tli.eval.tables import fmt_p
from tli.eval.translation import (
    DIRECTIONS,
    Query,
    ShotsError,
    before_after_rows,
    build_queries,
    direction_label,
    evaluate_translation,
)
from tli.eval.translation_stats import summarize_translation

log = logging.getLogger(__name__)


def translation_queries(opts: EvalConfig, splits: dict, seed: int) -> list[Query]:
    """The few-shot prompts of `eval.translation` (shots drawn with `seed` from the other split), built before any
    weights load so that impossible settings fail at once."""
    if "control" not in splits:
        raise ConfigError("eval.translation=true needs a control lexicon (data.control_file): the shots for the "
                          "training words are drawn from the control pairs and vice versa")
    try:
        return build_queries(splits, k=opts.shots, seed=seed)
    except ShotsError as err:  # the shots setting asks for more than the lexicons allow
        raise ConfigError(f"eval.shots={opts.shots}: {err}") from err


def heldout_samples(opts: EvalConfig, src_lang: str, tgt_lang: str) -> dict[str, dict]:
    """language -> {"file", "sha256", "sentences"} for both languages of the pair (`eval.lm_loss`): the file given
    as `eval.heldout_src` / `eval.heldout_tgt`, else the bundled sample of `data.src_lang` / `data.tgt_lang`."""
    out = {}
    for side, lang in (("src", src_lang), ("tgt", tgt_lang)):
        given = getattr(opts, f"heldout_{side}")
        path = heldout_file(lang, given, lang_name=f"data.{side}_lang", path_name=f"eval.heldout_{side}",
                            instead=f"give it as eval.heldout_{side}=PATH, or set eval.lm_loss=false")
        try:
            out[lang] = {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                         "sentences": read_sentences(path)}
        except DataError as err:
            raise DataError(f"eval.heldout_{side}: {err}" if given else str(err)) from err
    return out


def behaviour(model, tokenizer, queries: list[Query], heldout: dict, opts: EvalConfig) -> dict:
    """What the model does in one state: translation rows (one per query) and held-out LM loss per language."""
    start = time.perf_counter()
    rows = evaluate_translation(model, tokenizer, queries, batch_size=opts.generation_batch_size,
                                max_new_tokens=opts.max_new_tokens) if queries else []
    mid = time.perf_counter()
    losses = {lang: lm_loss(model, tokenizer, h["sentences"]) for lang, h in heldout.items()}
    done = [f"translation of {len(queries)} words: {mid - start:.1f} s"] if queries else []
    done += [f"held-out LM loss: {time.perf_counter() - mid:.1f} s"] if heldout else []
    if done:
        log.info("; ".join(done))
    return {"translation": rows, "lm_loss": losses}


def compare_behaviour(before: dict, after: dict, n_boot: int, seed: int) -> tuple[dict, list[dict]]:
    """({"translation": summarize_translation, "lm_loss": {language: compare_lm_loss}} with only the parts that
    ran, eval/translation.csv rows)."""
    rows = before_after_rows(before["translation"], after["translation"])
    out = {}
    if rows:
        out["translation"] = summarize_translation(rows, n_boot=n_boot, seed=seed)
    if before["lm_loss"]:
        out["lm_loss"] = {lang: compare_lm_loss(b, after["lm_loss"][lang]) for lang, b in before["lm_loss"].items()}
    return out, rows


def behaviour_lines(run: dict) -> list[str]:
    """Console lines: accuracy before -> after per split and direction (and the graded scores' means, with the
    trained-vs-control difference in differences), and the do-no-harm verdict per language."""
    lines = []
    for split, by in run.get("translation", {}).items():
        if split == "targeted":
            continue
        for direction, st in by.items():
            lines.append(f"translation, {split}, {direction}: {st['correct_before']}/{st['n']} -> "
                         f"{st['correct_after']}/{st['n']} correct ({st['accuracy_before']:.3f} -> "
                         f"{st['accuracy_after']:.3f}; {st['mcnemar_b']} lost, {st['mcnemar_c']} gained, "
                         f"McNemar {fmt_p(st['mcnemar_p'])})")
            if "graded" in st:
                lines.append(f"translation, {split}, {direction}, graded: " + "; ".join(
                    f"{g} {_num(r['mean_before'])} -> {_num(r['mean_after'])} (Wilcoxon {fmt_p(r['wilcoxon_p'])})"
                    for g, r in st["graded"].items()))
    for direction, c in run.get("translation", {}).get("targeted", {}).items():
        lines.append(f"translation, trained vs control, {direction}: {c['reading']}")
        if "graded" in c:
            lines.append(f"translation, trained vs control, {direction}, graded: " + "; ".join(
                f"{g} difference {_num(r['did'], '+.3g')} (Welch {fmt_p(r['p'])})" for g, r in c["graded"].items()))
    for lang, c in run.get("lm_loss", {}).items():
        lines.append(f"do no harm, {lang}: {c['reading']}")
    return lines


def _num(x, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def translation_settings(opts: EvalConfig, queries: list[Query], lexicon, seed: int) -> dict | None:
    """summary["settings"]["translation"]: the generation settings and the number of words per split and direction."""
    if not queries:
        return None
    counts: dict = {}
    for q in queries:
        counts.setdefault(q.split, {}).setdefault(q.direction, 0)
        counts[q.split][q.direction] += 1
    return {"shots": opts.shots, "shot_seed": seed, "max_new_tokens": opts.max_new_tokens,
            "generation_batch_size": opts.generation_batch_size,
            "directions": {d: direction_label(lexicon, d) for d in DIRECTIONS}, "words": counts}


def behaviour_metrics(runs: dict) -> dict:
    """W&B summary values: eval/translation/<split>/<direction>/<statistic> (graded scores as <score>_mean_before,
    _mean_after, _delta; <score>_did under targeted) and eval/lm_loss/<language>/<statistic> (with several runs the
    run name follows `eval/`)."""
    out = {}
    for name, run in runs.items():
        prefix = "eval/" if len(runs) == 1 else f"eval/{name}/"
        for split, by in run.get("translation", {}).items():
            for direction, st in by.items():
                keys = ("difference",) if split == "targeted" else ("accuracy_before", "accuracy_after", "change",
                                                                    "mcnemar_p")
                out.update({f"{prefix}translation/{split}/{direction}/{k}": st[k] for k in keys})
                out.update({f"{prefix}translation/{split}/{direction}/{g}_{k}": r[k]
                            for g, r in st.get("graded", {}).items()
                            for k in (("did",) if split == "targeted" else ("mean_before", "mean_after", "delta"))})
        for lang, c in run.get("lm_loss", {}).items():
            out.update({f"{prefix}lm_loss/{lang}/{k}": c[k] for k in ("nll_before", "nll_after", "relative_change",
                                                                       "rise")})
    return out
