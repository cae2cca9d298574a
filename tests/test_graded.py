"""Graded behavioural scores (tli.eval.graded): the gold translation's log-probability and first-token rank against a
plain unbatched forward pass, chrF against the formula by hand, and their statistics, sections and console lines."""

from collections import Counter

import numpy as np
import pytest
import torch

from tli.eval.behaviour import behaviour_lines, behaviour_metrics
from tli.eval.graded import _sequences, chrf, score_gold
from tli.eval.sections import translation_aggregate_section, translation_section
from tli.eval.stats import difference_in_differences, paired_stats
from tli.eval.translation import CSV_COLUMNS, Query, answer_key, before_after_rows, evaluate_translation, format_prompt
from tli.eval.translation_stats import aggregate_translation, summarize_translation
from tli.model.loading import ModelSpec, load_model

SHOTS = [("maji", "water"), ("mama", "mother"), ("moto", "fire"), ("kichwa", "head")]
WORDS = [("mbwa", ("dog",)), ("kula", ("eat", "to eat")), ("mtu", ("person", "man", "human")), ("jua", ("sun",)),
         ("kubwa", ("big", "large")), ("paka", ("cat",)), ("nyumba", ("house", "home")), ("", ("",))]


@pytest.fixture(scope="module")
def tiny_fp32(tiny_spec):
    return load_model(ModelSpec(name_or_path=tiny_spec.name_or_path, quantization="none"), device="cpu")


def queries() -> list[Query]:
    """Single- and multi-translation queries with 0 to 3 shots (so batches mix prefixes); the last has a blank gold."""
    return [Query("train", "Swahili->English", w, t, "English", tuple(SHOTS[:i % 4]),
                  format_prompt(SHOTS[:i % 4], w, "Swahili", "English")) for i, (w, t) in enumerate(WORDS)]


@torch.no_grad()
def reference(model, tok, q: Query) -> tuple[float | None, int | None]:
    """One unpadded sequence at a time, the whole logits: mean log-prob of the answer tokens, rank by argsort."""
    best_lp, best_rank = None, None
    for t in q.targets:
        if not t.strip():
            continue
        prompt, full = tok(q.prompt)["input_ids"], tok(q.prompt + " " + t)["input_ids"]
        assert full[:len(prompt)] == prompt  # the tiny tokenizer does not merge across the boundary
        P = len(prompt)
        logits = model(torch.tensor([full])).logits[0].float()  # (T, V)
        logp = torch.log_softmax(logits, -1)[P - 1:len(full) - 1]  # position j predicts token j + 1
        lp = logp.gather(1, torch.tensor(full[P:])[:, None]).mean().item()
        rank = int((torch.argsort(logits[P - 1], descending=True) == full[P]).nonzero()) + 1
        best_lp = lp if best_lp is None else max(best_lp, lp)
        best_rank = rank if best_rank is None else min(best_rank, rank)
    return best_lp, best_rank


def test_gold_logprob_and_rank_equal_a_plain_forward_at_any_batch_size(tiny_fp32):
    model, tok = tiny_fp32
    qs = queries()
    expected = [reference(model, tok, q) for q in qs]
    assert expected[-1] == (None, None)  # a blank gold is not scored
    assert len({r for _, r in expected[:-1]}) > 3  # ranks vary, so a mix-up would show
    for bs in (1, 3, 64):
        got = score_gold(model, tok, qs, batch_size=bs)
        for g, (lp, rank) in zip(got, expected, strict=True):
            assert g["gold_rank"] == rank
            assert g["gold_logprob"] == (None if lp is None else pytest.approx(lp, abs=1e-5))
    assert tok.padding_side == "right"


def test_multi_translation_query_takes_the_best_of_its_translations(tiny_fp32):
    model, tok = tiny_fp32
    q = queries()[2]  # three listed translations
    singles = [score_gold(model, tok, [Query(q.split, q.direction, q.source, (t,), q.answer_lang, q.shots,
                                             q.prompt)])[0] for t in q.targets]
    both = score_gold(model, tok, [q])[0]
    assert both["gold_logprob"] == pytest.approx(max(s["gold_logprob"] for s in singles), abs=1e-6)
    assert both["gold_rank"] == min(s["gold_rank"] for s in singles)


class MergingTokenizer:
    """Characters as ids, except that ':' followed by ' ' becomes one token (id 1000): the prompt "…:" and the
    answer " x" merge across the boundary. A BOS (1) first and an EOS (2) appended, like some tokenizers."""

    all_special_ids = [1, 2]

    def __call__(self, texts, add_special_tokens=True):
        out = []
        for text in texts:
            ids, i = [1], 0
            while i < len(text):
                if text[i:i + 2] == ": ":
                    ids.append(1000)
                    i += 2
                else:
                    ids.append(ord(text[i]))
                    i += 1
            out.append(ids + [2])
        return {"input_ids": out}


def test_a_merge_across_the_boundary_scores_the_merged_token_and_never_the_eos():
    q = Query("train", "a->b", "x", ("ok",), "b", (), "A: x\nB:")
    [(qi, ids, P)] = _sequences(MergingTokenizer(), [q])
    prompt = MergingTokenizer()([q.prompt])["input_ids"][0]
    assert qi == 0 and ids[-1] != 2  # the appended EOS is not part of the answer
    assert ids[P:] == [1000, ord("o"), ord("k")]  # ": " merged: scored from the merged token on
    assert ids[:P] == prompt[:P] and P == len(prompt) - 2  # the prompt's ':' (and its EOS) are not context


def chrf_by_hand(hyp: str, ref: str) -> float:
    """chrF (beta 2) over character n-gram orders 1..min(6, len), spaces removed, x 100 (sacrebleu's convention)."""
    h, r = "".join(hyp.split()), "".join(ref.split())
    order = min(6, len(h), len(r))
    if not order:
        return 0.0
    scores = []
    for n in range(1, order + 1):
        hc, rc = (Counter(s[i:i + n] for i in range(len(s) - n + 1)) for s in (h, r))
        m = sum((hc & rc).values())
        p, rec = m / sum(hc.values()), m / sum(rc.values())
        scores.append(5 * p * rec / (4 * p + rec) if m else 0.0)
    return 100 * sum(scores) / order


def test_chrf_hand_checked():
    assert chrf("dog", ["dog"], "English") == pytest.approx(100.0)  # short identical word: 100, not 50
    assert chrf("The Dog.", ["dog"], "English") == pytest.approx(100.0)  # on the exact-match keys
    assert chrf("elephant", ["elephant"], "English") == pytest.approx(100.0)
    assert chrf("cat", ["dog"], "English") == 0.0
    assert chrf("", ["dog"], "English") == 0.0
    assert chrf("dog", ["", "  "], "English") is None  # no usable gold
    # "dogs" vs "dog": orders 1-3; F_1 = 5(3/4)(1)/(4(3/4)+1) = 15/16, F_2 = 5(2/3)/(4(2/3)+1) = 10/11,
    # F_3 = 5(1/2)/(4(1/2)+1) = 5/6: chrF = 100 (15/16 + 10/11 + 5/6) / 3
    assert chrf("dogs", ["dog"], "English") == pytest.approx(100 * (15 / 16 + 10 / 11 + 5 / 6) / 3)
    assert chrf("dogs", ["cat", "dog"], "English") == pytest.approx(100 * (15 / 16 + 10 / 11 + 5 / 6) / 3)
    for hyp, ref in [("waters", "water"), ("ice cream", "icecream"), ("kitabu", "vitabu"), ("mothers", "brother"),
                     ("a big house", "house")]:
        expected = chrf_by_hand(answer_key(hyp, "Swahili"), answer_key(ref, "Swahili"))
        assert chrf(hyp, [ref], "Swahili") == pytest.approx(expected, abs=1e-4)


def graded_rows(rng, split: str, n: int, shift: float) -> list[dict]:
    rows = []
    for i in range(n):
        lp, c, rank = rng.normal(-5, 1), rng.uniform(0, 100), int(rng.integers(1, 50))
        rows.append({"split": split, "direction": "Swahili->English", "source": f"w{i}", "target": "t",
                     "prediction_before": "a", "prediction_after": "b", "correct_before": bool(i % 2),
                     "correct_after": bool(i % 3), "gold_logprob_before": lp, "gold_logprob_after": lp + shift
                     + rng.normal(0, 0.1), "chrf_before": c, "chrf_after": min(100.0, c + 10 * shift),
                     "gold_rank_before": rank, "gold_rank_after": max(1, rank - int(10 * shift)), "fold": None,
                     "seed": None})
    return rows


def test_graded_statistics_sections_and_lines():
    rng = np.random.default_rng(0)
    rows = graded_rows(rng, "train", 30, 1.0) + graded_rows(rng, "control", 20, 0.0)
    rows[0]["chrf_after"] = None  # a missing score is left out of that score only
    summary = summarize_translation(rows, n_boot=300)
    for split in ("train", "control"):
        cell = [r for r in rows if r["split"] == split]
        graded = summary[split]["Swahili->English"]["graded"]
        for g in ("gold_logprob", "chrf", "gold_rank"):
            before = [np.nan if r[f"{g}_before"] is None else r[f"{g}_before"] for r in cell]
            after = [np.nan if r[f"{g}_after"] is None else r[f"{g}_after"] for r in cell]
            assert graded[g] == paired_stats(before, after, n_boot=300)
    assert summary["train"]["Swahili->English"]["graded"]["chrf"]["n"] == 29
    tr, c = ([r for r in rows if r["split"] == s] for s in ("train", "control"))
    did = summary["targeted"]["Swahili->English"]["graded"]
    expected = difference_in_differences([r["gold_logprob_before"] for r in tr], [r["gold_logprob_after"] for r in tr],
                                         [r["gold_logprob_before"] for r in c], [r["gold_logprob_after"] for r in c],
                                         n_boot=300)
    assert did["gold_logprob"] == expected and did["gold_logprob"]["targeted"]
    assert did["gold_rank"]["did"] < 0 and did["gold_rank"]["targeted"]  # ranks fell on trained words only
    assert summary["targeted"]["Swahili->English"]["difference"] is not None  # the accuracy comparison stays
    text = translation_section(summary)
    assert "Graded scores, per word" in text and "| train | Swahili->English | gold_rank | 30 |" in text
    assert "difference in differences" in text
    lines = behaviour_lines({"translation": summary})
    assert any("graded: gold_logprob" in line for line in lines)
    assert any("trained vs control, Swahili->English, graded" in line for line in lines)
    metrics = behaviour_metrics({"run": {"translation": summary}})
    assert metrics["eval/translation/train/Swahili->English/chrf_delta"] == did["chrf"]["train_delta"]
    assert metrics["eval/translation/targeted/Swahili->English/gold_rank_did"] == did["gold_rank"]["did"]
    other = summarize_translation(graded_rows(rng, "train", 30, 0.5) + graded_rows(rng, "control", 20, 0.0),
                                  n_boot=300)
    agg = aggregate_translation([summary, other])
    deltas = [s["train"]["Swahili->English"]["graded"]["gold_logprob"]["delta"] for s in (summary, other)]
    got = agg["train"]["Swahili->English"]["graded"]["gold_logprob"]["delta"]
    assert got["mean"] == pytest.approx(np.mean(deltas)) and got["std"] == pytest.approx(np.std(deltas, ddof=1))
    dids = [s["targeted"]["Swahili->English"]["graded"]["chrf"]["did"] for s in (summary, other)]
    assert agg["targeted"]["Swahili->English"]["graded"]["chrf"]["did"]["mean"] == pytest.approx(np.mean(dids))
    assert "Graded scores across runs" in translation_aggregate_section(agg)


def test_rows_without_graded_scores_keep_their_summary():
    rows = [{k: v for k, v in r.items() if not k.startswith(("gold", "chrf"))}
            for r in graded_rows(np.random.default_rng(1), "train", 10, 0.0)]
    assert "graded" not in summarize_translation(rows, n_boot=100)["train"]["Swahili->English"]


def test_evaluate_translation_rows_carry_the_graded_scores(tiny_fp32):
    model, tok = tiny_fp32
    qs = queries()
    rows = evaluate_translation(model, tok, qs, batch_size=4, max_new_tokens=3)
    gold = score_gold(model, tok, qs, batch_size=2)
    for r, g, q in zip(rows, gold, qs, strict=True):
        assert r["gold_rank"] == g["gold_rank"]
        assert r["gold_logprob"] == (None if g["gold_logprob"] is None else pytest.approx(g["gold_logprob"], abs=1e-5))
        assert r["chrf"] == chrf(r["prediction"], q.targets, "English")
    joined = before_after_rows([{**r, "fold": 2, "seed": 7} for r in rows], rows)
    assert list(joined[0]) == CSV_COLUMNS and CSV_COLUMNS[-8:] == [
        "gold_logprob_before", "gold_logprob_after", "chrf_before", "chrf_after", "gold_rank_before",
        "gold_rank_after", "fold", "seed"]
    assert joined[0]["fold"] == 2 and joined[0]["seed"] == 7 and joined[0]["gold_rank_after"] == rows[0]["gold_rank"]
    assert before_after_rows(rows, rows)[0]["fold"] is None
