"""Few-shot translation: prompts and shots, batched greedy generation, scoring, statistics and the report section.

The tiny model has random weights, so its translations are garbage: these tests check the mechanics."""

import copy
import unicodedata
from math import comb
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import GenerationConfig

from tli.data.lexicon import Lexicon, Pair, read_lexicon
from tli.errors import ConfigError, DataError
from tli.eval.sections import translation_section
from tli.eval.stats import bootstrap_ci
from tli.eval.translation import (
    CSV_COLUMNS,
    Query,
    StopAtNewline,
    answer_key,
    before_after_rows,
    build_queries,
    evaluate_translation,
    format_prompt,
    generate_answers,
    normalize_answer,
)
from tli.eval.translation_stats import aggregate_translation, compare_changes, mcnemar_exact, summarize_translation
from tli.model.loading import ModelSpec, load_model


def lexicon(pairs, src="Swahili", tgt="English") -> Lexicon:
    return Lexicon(Path("mem.json"), [Pair(s, t, f"entry {i}") for i, (s, t) in enumerate(pairs, 1)], src, tgt)


@pytest.fixture(scope="module")
def tiny_fp32(tiny_spec):
    """A plain (unquantized) copy of the tiny model that tests may modify."""
    return load_model(ModelSpec(name_or_path=tiny_spec.name_or_path, quantization="none"), device="cpu")


@pytest.fixture(scope="module")
def small_splits(small_lexicons):
    read = dict(src_field="swahili", tgt_field="english", src_lang="Swahili", tgt_lang="English")
    return {"train": read_lexicon(small_lexicons[0], **read), "control": read_lexicon(small_lexicons[1], **read)}


# --- normalisation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, gold", [
    ("The Dog.", "dog"), ("  dog  ", "dog"), ("to run", "run"), ("run", "to run"), ("an apple!", "apple"),
    ("a", "a"), ("“Dog”", "dog"), ("ice  cream", "ice cream"), ("DOG", "dog"),
])
def test_english_normalisation(prediction, gold):
    assert normalize_answer(prediction, "English") == normalize_answer(gold, "English")


@pytest.mark.parametrize("prediction, gold", [("dogs", "dog"), ("the dog house", "dog"), ("run away", "run")])
def test_english_normalisation_keeps_real_differences(prediction, gold):
    assert normalize_answer(prediction, "English") != normalize_answer(gold, "English")


def test_korean_is_untouched_except_whitespace_and_punctuation():
    assert normalize_answer(" 고양이. ", "Korean") == "고양이"
    assert normalize_answer("「고양이」", "Korean") == "고양이"
    assert normalize_answer("고양 이", "Korean") == "고양 이"  # inner space kept (collapsed only)
    assert normalize_answer(unicodedata.normalize("NFD", "고양이"), "Korean") == "고양이"
    assert normalize_answer("the 고양이", "Korean") == "the 고양이"  # articles only for English answers


def test_a_punctuation_only_gold_is_not_matched_by_an_empty_answer():
    q = Query("train", "Swahili->English", "alama", ("?!",), "English", (), "")
    assert normalize_answer("?!", "English") == ""  # what used to make "" (and ".", "!!") score correct
    for empty in ("", "   ", ".", "!!", "the"):
        assert not q.correct(empty), empty
    assert q.correct("?!") and q.correct(" ?! ") and not q.correct("?")
    assert not Query("train", "Swahili->English", "x", ("  ",), "English", (), "").correct("")  # blank gold
    mixed = Query("train", "Swahili->English", "x", ("...", "dog"), "English", (), "")
    assert mixed.correct("The dog.") and mixed.correct("...") and not mixed.correct("")
    assert answer_key("The Dog.", "English") == "dog" and answer_key("¿?", "English") == "¿?"
    # two punctuation-only words are different words when shots are drawn (both used to fold to "" and collide)
    train, control = lexicon([("a", "?!"), ("e", "z")]), lexicon([("b", "..."), ("c", "x")])
    got = build_queries({"train": train, "control": control}, k=2, seed=0)
    first = next(q for q in got if (q.split, q.direction, q.source) == ("train", "Swahili->English", "a"))
    assert sorted(first.shots) == [("b", "..."), ("c", "x")]


def test_any_listed_translation_counts():
    train = lexicon([("mbwa", "dog"), ("mbwa", "hound"), ("paka", "cat")])
    control = lexicon([("maji", "water"), ("moto", "fire"), ("jua", "sun")])
    queries = build_queries({"train": train, "control": control}, k=2)
    fwd = [q for q in queries if q.split == "train" and q.direction == "Swahili->English"]
    assert [q.source for q in fwd] == ["mbwa", "paka"]  # one query per distinct word
    assert fwd[0].targets == ("dog", "hound")
    assert fwd[0].correct("Hound.") and fwd[0].correct("the dog") and not fwd[0].correct("cat")
    back = [q for q in queries if q.split == "train" and q.direction == "English->Swahili"]
    assert [(q.source, q.targets) for q in back] == [("dog", ("mbwa",)), ("hound", ("mbwa",)), ("cat", ("paka",))]


# --- prompts and shots -----------------------------------------------------------------------------------------


def test_prompt_format():
    prompt = format_prompt([("물", "water"), ("불", "fire")], "집", "Korean", "English")
    assert prompt == "Korean: 물\nEnglish: water\n\nKorean: 불\nEnglish: fire\n\nKorean: 집\nEnglish:"


def test_shots_come_from_the_other_split_never_share_the_query_strings_and_are_fixed():
    train = lexicon([(f"s{i}", f"t{i}") for i in range(12)] + [("mbwa", "dog")])
    # control shares "dog" (another translation) and "s3" with train: such shots must be skipped for those queries
    control = lexicon([("jibwa", "dog"), ("s3", "other")] + [(f"c{i}", f"d{i}") for i in range(8)])
    splits = {"train": train, "control": control}
    queries = build_queries(splits, k=5, seed=3)
    assert queries == build_queries(splits, k=5, seed=3)  # same seed, same prompts: identical before and after
    assert [q.shots for q in queries] != [q.shots for q in build_queries(splits, k=5, seed=4)]
    for q in queries:
        from_lang, to_lang = q.direction.split("->")
        assert q.prompt.endswith(f"{from_lang}: {q.source}\n{to_lang}:") and q.prompt.count("\n\n") == 5
        other = [p for name, lex in splits.items() if name != q.split for p in lex.pairs]
        fwd = q.direction == "Swahili->English"
        assert set(q.shots) <= {(p.source, p.target) if fwd else (p.target, p.source) for p in other}
        assert all(s != q.source and t not in q.targets for s, t in q.shots)
        assert len({s for s, _ in q.shots}) == len({t for _, t in q.shots}) == 5
    dog = next(q for q in queries if q.source == "dog" and q.split == "train")
    assert dog.targets == ("mbwa", "jibwa")  # both listed translations; ("dog", "jibwa") is no shot for it
    # queries sharing no string with the other split all see one shot set per split and direction
    shared = {"s3", "t3", "other", "mbwa", "dog", "jibwa"}
    for split in splits:
        for direction in ("Swahili->English", "English->Swahili"):
            cell = [q for q in queries if (q.split, q.direction) == (split, direction)]
            free = {q.shots for q in cell if q.source not in shared and not set(q.targets) & shared}
            assert len(free) == 1 and len(cell) > 5


def test_too_few_shots_and_single_split_raise():
    train, control = lexicon([("a", "x"), ("b", "y")]), lexicon([("c", "z"), ("d", "w")])
    with pytest.raises(DataError, match="only 2 shot pairs usable .* need k=3") as err:
        build_queries({"train": train, "control": control}, k=3)
    assert not isinstance(err.value, ConfigError)  # the lexicons, not a config key (eval.shots is named by the job)
    with pytest.raises(DataError, match="needs shots from another split"):
        build_queries({"train": train}, k=1)
    assert len(build_queries({"train": train}, k=0)) == 4  # zero-shot needs no pool
    with pytest.raises(DataError, match="splits disagree on languages"):
        build_queries({"train": train, "control": lexicon([("c", "z")], src="Korean")}, k=1)


def test_function_arguments_raise_value_error_not_config_error():
    train = lexicon([("a", "x"), ("b", "y")])
    for call, match in ((lambda: build_queries({"train": train}, k=-1), "k=-1"),
                        (lambda: build_queries({}, k=1), "no splits"),
                        (lambda: build_queries({"train": train}, k=0, directions=["sideways"]), "sideways"),
                        (lambda: generate_answers(None, None, ["x"], batch_size=0), "batch_size=0")):
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert not isinstance(err.value, (ConfigError, DataError))


# --- generation ------------------------------------------------------------------------------------------------


def varied_prompts() -> list[str]:
    words = ["maji", "kichwa", "water", "mbwa", "dog", "kula", "mtu", "mother", "jua", "kubwa"]
    shots = [("maji", "water"), ("mama", "mother"), ("moto", "fire")]
    return [format_prompt(shots[: i % 4], w, "Swahili", "English") for i, w in enumerate(words)]


def reference_answers(model, tok, prompts) -> list[str]:
    """Plain `generate` on one unpadded prompt at a time: no padding, no shared prefix cache."""
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]  # (1, T)
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id)  # (1, T + n)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).split("\n", 1)[0].strip())
    return out


@pytest.mark.slow
def test_left_padded_batches_equal_one_at_a_time(tiny_nf4):
    model, tok = tiny_nf4
    prompts = varied_prompts()
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 3  # batches really are padded
    single = generate_answers(model, tok, prompts, batch_size=1)
    assert len(set(single)) >= 2  # the outputs differ between prompts, so a mix-up would show
    assert single == reference_answers(model, tok, prompts)
    for bs in (3, 10):
        assert generate_answers(model, tok, prompts, batch_size=bs) == single
    assert tok.padding_side == "right"  # the tokenizer is left as it was


def test_batches_without_a_common_prefix(tiny_fp32):
    """No BOS and prompts in both directions: a batch shares no prefix and is plainly left-padded."""
    from tokenizers import processors

    model, tok = tiny_fp32
    no_bos = copy.deepcopy(tok)
    no_bos.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    prompts = varied_prompts()[:5] + [format_prompt([], w, "English", "Swahili") for w in ("dog", "water", "eat")]
    assert no_bos(prompts[0])["input_ids"][0] != tok.bos_token_id
    expected = reference_answers(model, no_bos, prompts)
    assert len(set(expected)) >= 2
    assert generate_answers(model, no_bos, prompts, batch_size=8) == expected
    assert generate_answers(model, no_bos, prompts, batch_size=3) == expected


def test_generation_stops_at_the_first_newline(tiny_fp32):
    model, tok = tiny_fp32
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    ids = tok(["ab\ncd", "abcd"], add_special_tokens=False, padding=True, return_tensors="pt")["input_ids"]
    assert StopAtNewline(tok, 1)(ids, None).tolist() == [True, False]
    forced = copy.deepcopy(model)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[newline[0]] = 1e4  # the newline always wins
    forced.lm_head = head
    enc = tok(varied_prompts()[:3], padding=True, padding_side="left", return_tensors="pt")
    out = forced.generate(**enc, generation_config=GenerationConfig(do_sample=False, max_new_tokens=8,
                                                                    pad_token_id=tok.pad_token_id),
                          stopping_criteria=[StopAtNewline(tok, enc["input_ids"].shape[1])])
    assert out.shape[1] == enc["input_ids"].shape[1] + 1  # stopped after the newline, not after 8 tokens
    assert generate_answers(forced, tok, varied_prompts()[:3]) == ["", "", ""]


@pytest.mark.slow
def test_peft_model_with_adapter_disabled_or_zero_equals_base(tiny_fp32):
    import peft

    model, tok = tiny_fp32
    prompts = varied_prompts()[:6]
    base = generate_answers(model, tok, prompts, batch_size=4)
    peft_model = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert generate_answers(peft_model, tok, prompts, batch_size=4) == base  # LoRA B starts at zero
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 5.0, generator=torch.Generator().manual_seed(0))
    changed = generate_answers(peft_model, tok, prompts, batch_size=4)
    with peft_model.disable_adapter():
        assert generate_answers(peft_model, tok, prompts, batch_size=4) == base
    assert changed != base  # the adapter is really used when enabled


@pytest.mark.slow
def test_evaluate_translation_rows_and_csv_join(tiny_nf4, small_splits):
    model, tok = tiny_nf4
    queries = build_queries(small_splits, k=5, seed=0)
    rows = evaluate_translation(model, tok, queries, batch_size=16)
    n_words = {s: len({p.source for p in lex.pairs}) + len({p.target for p in lex.pairs})
               for s, lex in small_splits.items()}
    assert {s: sum(r["split"] == s for r in rows) for s in small_splits} == n_words
    assert {r["direction"] for r in rows} == {"Swahili->English", "English->Swahili"}
    assert all(r["correct"] == q.correct(r["prediction"]) for r, q in zip(rows, queries, strict=True))
    joined = before_after_rows(rows, rows)
    assert list(joined[0]) == CSV_COLUMNS
    assert all(r["prediction_before"] == r["prediction_after"] for r in joined)
    with pytest.raises(ValueError, match="row mismatch") as err:
        before_after_rows(rows, rows[::-1])
    assert not isinstance(err.value, ConfigError)  # an internal mismatch, no user setting


# --- statistics --------------------------------------------------------------------------------------------------


def test_mcnemar_against_the_binomial_by_hand():
    before = [True] * 7 + [False] * 1 + [True] * 5 + [False] * 4  # 7 right->wrong, 1 wrong->right, 9 concordant
    after = [False] * 7 + [True] * 1 + [True] * 5 + [False] * 4
    got = mcnemar_exact(before, after)
    assert (got["b"], got["c"]) == (7, 1)
    assert got["p"] == pytest.approx(2 * (comb(8, 0) + comb(8, 1)) / 2**8)  # 0.0703125, textbook exact McNemar
    rng = np.random.default_rng(0)
    for _ in range(5):
        bef, aft = rng.random(40) < 0.5, rng.random(40) < 0.6
        b, c = int((bef & ~aft).sum()), int((~bef & aft).sum())
        expected = min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5))
        assert mcnemar_exact(bef, aft)["p"] == pytest.approx(expected)
    assert mcnemar_exact([True, False], [True, False]) == {"b": 0, "c": 0, "p": 1.0, "n_nonfinite": 0}


def test_translation_statistics_leave_nonfinite_words_out():
    nan, inf = float("nan"), float("inf")
    got = mcnemar_exact([1.0, 1.0, 0.0, nan, 0.0], [0.0, 1.0, 1.0, 1.0, inf])
    assert got == {"b": 1, "c": 1, "p": 1.0, "n_nonfinite": 2}
    rows = rows_for("train", [True] * 10 + [False] * 30 + [nan], [False] * 2 + [True] * 30 + [False] * 8 + [True])
    s = summarize_translation(rows, n_boot=200)["train"]["Swahili->English"]
    assert (s["n"], s["n_nonfinite"], s["accuracy_after"], s["mcnemar_b"], s["mcnemar_c"]) == (40, 1, 0.75, 2, 22)
    assert all(f["source"] != "train40" for f in s["right_to_wrong"] + s["wrong_to_right"])
    control = rows_for("control", [nan] * 5, [True] * 5)
    c = compare_changes(rows_for("train", [False] * 5, [True] * 5), control, n_boot=200)
    assert c["difference"] is None and c["n_nonfinite"] == 5 and "non-finite" in c["reading"]
    assert "non-finite" in translation_section(summarize_translation(rows_for("train", [False] * 5, [True] * 5)
                                                                     + control, n_boot=200))


def test_bootstrap_ci_contains_the_estimate_and_is_seeded():
    values = (np.random.default_rng(1).random(50) < 0.4).astype(float)
    low, high = bootstrap_ci(values, n_boot=2000, seed=5)
    assert low <= values.mean() <= high and low < high
    assert bootstrap_ci(values, n_boot=2000, seed=5) == (low, high)
    continuous = np.random.default_rng(1).random(50)  # binary data have few distinct quantiles; these do not
    assert bootstrap_ci(continuous, n_boot=500, seed=5) != bootstrap_ci(continuous, n_boot=500, seed=6)
    assert bootstrap_ci([], n_boot=10) == (None, None)


def rows_for(split, before, after, direction="Swahili->English"):
    return [{"split": split, "direction": direction, "source": f"{split}{i}", "target": "t", "prediction_before": "x",
             "prediction_after": "y", "correct_before": b, "correct_after": a}
            for i, (b, a) in enumerate(zip(before, after, strict=True))]


@pytest.mark.parametrize("gain_train, gain_control, verdict, exceeds", [
    (20, 0, "exceeds the control change", True), (0, 20, "below the control change", False),
    (2, 2, "does not exceed the control change", False),
])
def test_trained_vs_control_reading(gain_train, gain_control, verdict, exceeds):
    train = rows_for("train", [False] * 40, [True] * gain_train + [False] * (40 - gain_train))
    control = rows_for("control", [False] * 40, [True] * gain_control + [False] * (40 - gain_control))
    got = compare_changes(train, control, n_boot=2000)
    assert verdict in got["reading"] and got["exceeds"] is exceeds
    assert got["difference"] == pytest.approx((gain_train - gain_control) / 40)
    assert got["difference_ci_low"] <= got["difference"] <= got["difference_ci_high"]


def test_summary_aggregate_and_section():
    train = rows_for("train", [True] * 10 + [False] * 30, [False] * 2 + [True] * 30 + [False] * 8)
    control = rows_for("control", [True] * 5 + [False] * 15, [True] * 5 + [False] * 15)
    summary = summarize_translation(train + control, n_boot=1000)
    s = summary["train"]["Swahili->English"]
    assert (s["n"], s["correct_before"], s["correct_after"]) == (40, 10, 30)
    assert (s["accuracy_before"], s["accuracy_after"], s["change"]) == (0.25, 0.75, 0.5)
    assert (s["mcnemar_b"], s["mcnemar_c"]) == (2, 22) and len(s["right_to_wrong"]) == 2
    assert s["mcnemar_p"] == pytest.approx(stats.binomtest(22, 24).pvalue)
    assert s["change_ci_low"] <= 0.5 <= s["change_ci_high"]
    assert summary["control"]["Swahili->English"]["mcnemar_p"] == 1.0
    assert summary["targeted"]["Swahili->English"]["exceeds"] is True
    other = summarize_translation(rows_for("train", [False] * 40, [False] * 40) + control, n_boot=100)
    agg = aggregate_translation([summary, other])
    assert agg["train"]["Swahili->English"]["accuracy_after"]["mean"] == pytest.approx(0.375)
    assert agg["train"]["Swahili->English"]["change"]["std"] == pytest.approx(np.std([0.5, 0.0], ddof=1))
    assert agg["targeted"]["Swahili->English"]["difference"]["n"] == 2
    md = translation_section(summary, aggregate=agg, max_words=5)
    assert "| train | Swahili->English | 40 | 0.250 [" in md
    assert "wrong → right (22): train10 (x → y)" in md and "and 17 more" in md
    assert "exceeds the control change" in md and "Across runs" in md
