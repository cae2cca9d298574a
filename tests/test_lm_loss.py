"""Do no harm: held-out sentences, the language-modelling loss and its before/after rise flag."""

import copy
import math
import unicodedata

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

from tli.errors import TLIError
from tli.eval.lm_loss import heldout_sentences, lm_loss, perplexity, read_sentences, sentence_nll
from tli.eval.lm_loss_stats import aggregate_lm_loss, compare_lm_loss
from tli.eval.sections import lm_loss_aggregate_section, lm_loss_section
from tli.model.loading import ModelSpec, load_model


@pytest.fixture(scope="module")
def tiny_fp32(tiny_spec):
    """A plain (unquantized) copy of the tiny model that tests may modify."""
    return load_model(ModelSpec(name_or_path=tiny_spec.name_or_path, quantization="none"), device="cpu")


@pytest.mark.parametrize("lang, code", [("English", "en"), ("korean", "ko"), ("Swahili", "sw"), ("swh", "sw")])
def test_bundled_samples(lang, code):
    sentences = heldout_sentences(lang)
    assert sentences == heldout_sentences(code) and len(sentences) == len(set(sentences)) >= 25
    assert all(s == s.strip() and s == unicodedata.normalize("NFC", s) for s in sentences)


def test_unknown_language_and_own_file(tmp_path):
    with pytest.raises(ValueError, match="no bundled held-out sentences for language 'French'.*one sentence per line"):
        heldout_sentences("French")
    own = tmp_path / "fr.txt"
    own.write_text("Il pleut.\n\n  Le  chat dort. \n", encoding="utf-8")
    assert heldout_sentences(str(own)) == read_sentences(own) == ["Il pleut.", "Le chat dort."]
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="contains no sentences"):
        read_sentences(tmp_path / "empty.txt")


def test_single_sentence_equals_the_models_own_loss(tiny_nf4):
    model, tok = tiny_nf4
    sentence = heldout_sentences("sw")[0]
    ids = tok(sentence, return_tensors="pt")["input_ids"]  # (1, T), BOS first
    assert ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss.item()
    got = lm_loss(model, tok, [sentence])
    assert got["nll"] == pytest.approx(expected, rel=1e-5)
    assert got["n_tokens"] == ids.shape[1] - 1 and got["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_independent_of_batch_size_and_padding(tiny_nf4):
    model, tok = tiny_nf4
    sentences = heldout_sentences("ko")[:10]
    assert len({len(tok(s)["input_ids"]) for s in sentences}) > 3  # batches really are padded
    sums1, counts1 = sentence_nll(model, tok, sentences, batch_size=1)
    for bs in (3, 10):
        sums, counts = sentence_nll(model, tok, sentences, batch_size=bs)
        np.testing.assert_array_equal(counts, counts1)
        np.testing.assert_allclose(sums, sums1, rtol=1e-5)
    whole = lm_loss(model, tok, sentences, batch_size=4)
    assert whole["nll"] == pytest.approx(sums1.sum() / counts1.sum(), rel=1e-6)  # token-weighted, not per sentence


def test_rise_flag_on_a_damaged_model(tiny_fp32):
    model, tok = tiny_fp32
    sentences = heldout_sentences("en")
    before = lm_loss(model, tok, sentences, batch_size=8)
    same = compare_lm_loss(before, lm_loss(model, tok, sentences, batch_size=8))
    assert same["rise"] is False and same["change"] == pytest.approx(0.0, abs=1e-6)
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        w = damaged.lm_head.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 3 * w.std())
    after = lm_loss(damaged, tok, sentences, batch_size=8)
    got = compare_lm_loss(before, after)
    assert got["rise"] is True and got["relative_change"] > 0.02 and got["wilcoxon_p"] < 0.05
    assert "RISE" in got["reading"]
    md = lm_loss_section({"English": got, "Korean": same})
    assert "| English | 28 |" in md and "**rise**" in md and "rose in English" in md


def fake(nlls, tokens=10):
    nlls = np.asarray(nlls, dtype=float)
    mean = float(nlls.mean())
    return {"n_sentences": len(nlls), "n_tokens": tokens * len(nlls), "nll": mean, "perplexity": math.exp(mean),
            "sentence_nll": nlls.tolist(), "sentence_tokens": [tokens] * len(nlls)}


def test_rise_rule_needs_size_and_consistency():
    base = np.linspace(3.0, 4.0, 20)
    assert compare_lm_loss(fake(base), fake(base * 1.05))["rise"] is True  # +5%, every sentence
    assert compare_lm_loss(fake(base), fake(base * 1.01))["rise"] is False  # consistent but only +1%
    one = base.copy()
    one[0] += 10.0  # +14% on average, carried by one sentence
    got = compare_lm_loss(fake(base), fake(one))
    assert got["relative_change"] > 0.02 and got["rise"] is False
    assert compare_lm_loss(fake(base), fake(base * 0.9))["rise"] is False  # a fall is no harm
    with pytest.raises(ValueError, match="different tokens"):
        compare_lm_loss(fake(base), fake(base, tokens=11))


def test_batch_size_argument_is_a_value_error(tiny_nf4):
    model, tok = tiny_nf4
    with pytest.raises(ValueError, match="batch_size=0") as err:
        sentence_nll(model, tok, ["Hello there."], batch_size=0)
    assert not isinstance(err.value, TLIError)  # a function argument, not a config key


def test_nonfinite_losses_never_raise():
    base = np.linspace(3.0, 4.0, 20)
    broken = compare_lm_loss(fake(base), fake(np.full(20, np.nan)))  # an adapter with NaN weights
    assert broken["rise"] is True and broken["change"] is None and broken["wilcoxon_p"] is None
    assert broken["n_nonfinite"] == 20 and "non-finite" in broken["reading"]
    inf = base.copy()
    inf[4] = np.inf
    assert compare_lm_loss(fake(base), fake(inf))["rise"] is True
    assert compare_lm_loss(fake(np.full(20, np.nan)), fake(base))["rise"] is False  # the base model's fault
    some = base * 1.05
    some[[2, 9]] = np.nan
    got = compare_lm_loss(fake(base), {**fake(base * 1.05), "sentence_nll": some.tolist()})
    keep = np.isfinite(some)
    assert got["n_nonfinite"] == 2 and got["rise"] is True and "2 sentences" in got["reading"]
    assert got["wilcoxon_p"] == pytest.approx(wilcoxon(some[keep], base[keep], alternative="greater").pvalue)
    md = lm_loss_section({"English": broken})
    assert "| n/a |" in md and "**rise**" in md
    agg = aggregate_lm_loss([{"English": broken}, {"English": got}])
    assert agg["English"]["relative_change"]["n"] == 1 and agg["English"]["nll_after"]["n"] == 1
    assert "n/a" not in lm_loss_aggregate_section(agg)
    assert perplexity(1000.0) == math.inf and math.isnan(perplexity(math.nan)) and perplexity(1.0) == math.e


def test_aggregate_across_runs():
    base = np.linspace(3.0, 4.0, 20)
    runs = [{"English": compare_lm_loss(fake(base), fake(base * f)), "Korean": compare_lm_loss(fake(base), fake(base))}
            for f in (1.05, 1.01)]
    agg = aggregate_lm_loss(runs)
    assert agg["English"]["relative_change"]["mean"] == pytest.approx(0.03)
    assert agg["English"]["relative_change"]["std"] == pytest.approx(np.std([0.05, 0.01], ddof=1))
    assert agg["English"]["nll_before"] == {"mean": pytest.approx(3.5), "std": 0.0, "n": 2}
    assert (agg["English"]["rises"], agg["Korean"]["rises"]) == (1, 0)
    assert aggregate_lm_loss(runs[:1] + [{"Korean": runs[1]["Korean"]}]).keys() == {"Korean"}  # languages all have
    md = lm_loss_aggregate_section(agg)
    assert "| English | 2 | 3.500 ± 0.000 |" in md and "| +3.0% ± 2.8% | 1 |" in md


def test_the_comparison_states_its_minimum_detectable_effect():
    from scipy.stats import norm

    from tli.eval.lm_loss_stats import compare_lm_loss

    b = [3.0, 3.5, 4.0, 4.2, 2.8, 3.9]
    a = [3.1, 3.4, 4.3, 4.2, 3.0, 4.1]
    state = lambda nll: {"sentence_nll": nll, "sentence_tokens": [5] * 6, "n_sentences": 6, "n_tokens": 30,  # noqa: E731
                         "nll": sum(nll) / 6, "perplexity": 1.0}
    got = compare_lm_loss(state(b), state(a))
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / 6
    sd = (sum((d - mean) ** 2 for d in diffs) / 5) ** 0.5
    assert got["mde"] == pytest.approx((norm.ppf(0.975) + norm.ppf(0.8)) * sd / 6 ** 0.5)
