"""The behaviour table that opens eval/report.md: for each run (or the cross-fitted pool) and each split and
direction, exact-match accuracy, gold log-probability and chrF before -> after with CIs, the p-value of the accuracy
change (the stratified exact test for a cross-fitted pool, exact McNemar for one run), and the minimum detectable
accuracy change at that n (alpha 0.05, power 0.8: how large a change a null result could have missed); then the
held-out NLL per language. The numbers come from summary.json; this module only lays them out."""

from __future__ import annotations

from typing import Any

from tli.eval.power import mde_mcnemar
from tli.eval.tables import fmt_number, fmt_p, markdown_table

NN = "nearest-neighbour shots, no training"
COLUMNS = ["source", "split", "direction", "n", "accuracy", "gold log-prob (mean)", "chrF (mean)", "p (accuracy)",
           "MDE (accuracy)", "words up / down (word-level p)"]


def _ba(before, after, low=None, high=None, digits: int = 3) -> str:
    if before is None or after is None:
        return "n/a"
    ci = f" [{fmt_number(low, digits)}, {fmt_number(high, digits)}]" if low is not None and high is not None else ""
    return f"{fmt_number(before, digits)} → {fmt_number(after, digits)}{ci}"


def _graded(cell: dict | None) -> str:
    """before -> after (95% CI of the change) of a paired_stats cell."""
    if not cell:
        return "n/a"
    return _ba(cell.get("mean_before"), cell.get("mean_after"), cell.get("delta_ci_low"), cell.get("delta_ci_high"))


def _run_rows(name: str, translation: dict) -> list[dict]:
    rows = []
    for split, by in translation.items():
        if split == "targeted":
            continue
        for direction, st in by.items():
            n = st["n"]
            discordance = (st["mcnemar_b"] + st["mcnemar_c"]) / n if n else 0.0
            graded = st.get("graded") or {}
            rows.append({"source": name, "split": split, "direction": direction, "n": n,
                         "accuracy": _ba(st["accuracy_before"], st["accuracy_after"], st.get("change_ci_low"),
                                         st.get("change_ci_high")),
                         "gold log-prob (mean)": _graded(graded.get("gold_logprob")),
                         "chrF (mean)": _graded(graded.get("chrf")),
                         "p (accuracy)": f"McNemar {fmt_p(st['mcnemar_p'])}",
                         "MDE (accuracy)": fmt_number(mde_mcnemar(n, discordance), 3),
                         "words up / down (word-level p)": "each word once: as p (accuracy)"})
    return rows


def _pooled_rows(pooled: dict, source: str = "cross-fitted pool") -> list[dict]:
    rows = []
    for split, by in pooled.items():
        for direction, cell in by.items():
            c = cell["correct"]
            signs = cell["seed_signs"]
            agree = ("same sign in every seed" if signs["same_sign_everywhere"] else
                     "no change in any seed" if not (signs["n_positive"] or signs["n_negative"]) else
                     "signs differ across seeds")
            rows.append({"source": source, "split": split, "direction": direction, "n": c["n"],
                         "accuracy": _ba(cell.get("accuracy_before"), cell.get("accuracy_after")),
                         "gold log-prob (mean)": _graded(cell.get("gold_logprob")),
                         "chrF (mean)": _graded(cell.get("chrf")),
                         "p (accuracy)": f"stratified exact {fmt_p(c['exact_p'])}"
                                         + (f", Holm {fmt_p(c['holm_p'])}" if "holm_p" in c else "") + f" ({agree})",
                         "MDE (accuracy)": fmt_number(c["mde"], 3),
                         "words up / down (word-level p)": _words(cell.get("by_word"))})
    return rows


def _words(w: dict | None) -> str:
    """"up / down of n words (p)", then the words that fell most (a change concentrated in a few words shows here)."""
    if not w:
        return "n/a"
    fell = ", ".join(f"{word} {d:+.2f}" for word, d in w["down"][:3])
    return (f"{w['n_up']} / {w['n_down']} of {w['n_words']} ({fmt_p(w['p'])})"
            + (f"; fell most: {fell}" if fell else ""))


def behaviour_table(summary: dict[str, Any]) -> str:
    """Markdown: the behaviour table and the held-out NLL table ("" when the evaluation scored no behaviour)."""
    rows = _pooled_rows(summary["crossfit"]) if summary.get("crossfit") else []
    pooled = bool(rows)
    for name, recipe in (summary.get("recipes") or {}).items():  # each recipe's cross-fitted pool
        if recipe.get("crossfit"):
            rows += _pooled_rows(recipe["crossfit"], f"{name} (pool of {len(recipe['runs'])} runs)")
            pooled = True
    nn = (summary.get("nulls") or {}).get("nn_shots")
    if nn:  # the prompt-only null, on the same queries
        rows += _pooled_rows(nn["crossfit"], NN) if nn.get("crossfit") else _run_rows(NN, nn["translation"])
    if not pooled:  # each run (pooled figures, where they exist, stand for their runs here)
        for name, run in summary["runs"].items():
            rows += _run_rows(name, run.get("translation") or {})
    comparisons = (summary.get("comparisons") or {}).get("pairs") or {}
    for name, c in comparisons.items():  # recipe against recipe: the second's answers as "before"
        rows += _pooled_rows(c["translation"], name)
    nll = [{"source": name, "language": lang, "NLL (nats/token)": _ba(c["nll_before"], c["nll_after"]),
            "change": "n/a" if c["relative_change"] is None else f"{100 * c['relative_change']:+.1f}%",
            "p (rise)": fmt_p(c["wilcoxon_p"]), "flag": "**rise**" if c["rise"] else "ok"}
           for name, run in summary["runs"].items() for lang, c in (run.get("lm_loss") or {}).items()]
    if not rows and not nll:
        return ""
    q = summary["settings"].get("behaviour_quantization", summary["settings"]["quantization"])
    out = ["## Behaviour", "",
           f"Scored in quantization {q}. Accuracy before → after [95% CI of the change]; gold log-prob and chrF: mean "
           "before → after [95% CI of the mean change]. MDE: the smallest accuracy change the test detects at this "
           "n with power 0.8 (alpha 0.05), from the observed discordance. Words up / down: each word's accuracy change "
           "averaged over its scorings (seeds; every adapter for the control words) and tested over words (sign-flip "
           "permutation); the pooled p counts a word once per scoring, this one once.", ""]
    if rows:
        out += [markdown_table(rows, COLUMNS), ""]
    if nll:
        out += [markdown_table(nll, list(nll[0])), ""]
    return "\n".join(out)
