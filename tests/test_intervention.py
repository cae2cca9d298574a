"""Inference-time interventions (tli.intervention): the closed-form maps, the hooks that apply them at exactly the
positions they should (checked against plain forwards with a hand-made hook), save/load, the deranged null, the
config checks, and evaluate.py intervention=... end to end on the tiny model."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import compose_raw

from tli.errors import AdapterError, ConfigError, DataError
from tli.intervention.hooks import intervened, state_module
from tli.intervention.maps import Intervention, mean_difference, procrustes_map, ridge_map
from tli.intervention.positions import for_queries, for_sentences, for_words
from tli.model.embed import decoder_of

LAYER = 2  # the tiny model's target index


@pytest.fixture(scope="module")
def full(tiny_spec):
    """The tiny model in full precision (exact comparisons) and its tokenizer."""
    from tli.model.loading import load_model

    return load_model(replace(tiny_spec, quantization="none"), device="cpu")


@pytest.fixture(scope="module")
def queries(small_lexicons):
    from tli.data.lexicon import read_lexicon
    from tli.eval.translation import build_queries

    train, control = (read_lexicon(f, src_field="swahili", tgt_field="english", src_lang="Swahili",
                                   tgt_lang="English") for f in small_lexicons)
    return build_queries({"train": train, "control": control}, k=3, seed=0)


def _random_map(dim, layers=(LAYER,), alpha=1.0, kind="linear_map", position="query", seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (dim, dim) if kind == "linear_map" else (dim,)
    return Intervention(kind, {i: torch.randn(*shape, generator=g) / dim ** 0.5 for i in layers}, alpha,
                        position=position)


class HandHook:
    """The reference: a forward hook on the module of hidden-state index `layer` that updates positions `pos` of
    row 0 of an unbatched, uncached forward (in place: `output_hidden_states` records the output tensor itself)."""

    def __init__(self, model, iv, pos):
        self.handles = [state_module(decoder_of(model), i).register_forward_hook(self._hook(i)) for i in iv.layers]
        self.iv, self.pos = iv, sorted(pos)

    def _hook(self, layer):
        def hook(module, args, out):
            out[0, self.pos] = self.iv.apply(layer, out[0, self.pos].float())
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_procrustes_and_ridge_recover_a_known_rotation():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 16))
    R = np.linalg.qr(rng.standard_normal((16, 16)))[0]  # a random orthogonal map
    Y = X @ R
    np.testing.assert_allclose(procrustes_map(X, Y), R, atol=1e-10)
    np.testing.assert_allclose(ridge_map(X, Y, 0.0), R, atol=1e-10)  # least squares (INCLINE's lstsq)
    noisy = Y + 0.05 * rng.standard_normal(Y.shape)
    np.testing.assert_allclose(procrustes_map(X, noisy), R, atol=0.02)
    M = ridge_map(X, noisy, 3.0)
    # the ridge solution's optimality condition: X^T (X M - Y) + lambda M = 0
    np.testing.assert_allclose(X.T @ (X @ M - noisy) + 3.0 * M, 0, atol=1e-9)
    assert np.abs(M - R).max() < 0.05
    Q = procrustes_map(X, noisy)
    np.testing.assert_allclose(Q.T @ Q, np.eye(16), atol=1e-10)  # orthogonal
    np.testing.assert_allclose(mean_difference(X, Y), Y.mean(0) - X.mean(0))


def test_update_formulas():
    g = torch.Generator().manual_seed(1)
    h, M, v = torch.randn(5, 8, generator=g), torch.randn(8, 8, generator=g), torch.randn(8, generator=g)
    add = Intervention("linear_map", {3: M}, 0.5)
    torch.testing.assert_close(add.apply(3, h), h + 0.5 * h @ M)
    torch.testing.assert_close(replace(add, update="towards").apply(3, h), h + 0.5 * (h @ M - h))
    shift = Intervention("mean_shift", {3: v}, -0.3).apply(3, h)
    expect = h - 0.3 * h.norm(dim=1, keepdim=True) * v / v.norm()
    torch.testing.assert_close(shift, expect * h.norm(dim=1, keepdim=True) / expect.norm(dim=1, keepdim=True))
    torch.testing.assert_close(shift.norm(dim=1), h.norm(dim=1))  # ReCoVeR's restore_norm
    for iv in (add, replace(add, update="towards"), Intervention("mean_shift", {3: v}, 0.5)):
        assert torch.equal(iv.with_alpha(0).apply(3, h), h)  # alpha 0: exactly the base state


def test_alpha_zero_reproduces_the_base_model_exactly(full, queries):
    from tli.eval.lm_loss import heldout_sentences, lm_loss
    from tli.eval.translation import evaluate_translation

    model, tok = full
    dim = model.config.hidden_size
    iv = _random_map(dim, layers=(0, LAYER, 32), alpha=0.0)  # embeddings, a block, the final norm
    fwd = [q for q in queries if q.direction == "Swahili->English"][:12]
    batch = tok([q.prompt for q in fwd[:4]], return_tensors="pt", padding=True)
    with torch.no_grad():
        base_logits = model(**batch).logits
        base_rows = evaluate_translation(model, tok, fwd, batch_size=5)
        sentences = heldout_sentences("Swahili")[:10]
        base_nll = lm_loss(model, tok, sentences)
        targets = for_queries(tok, fwd, "query")
        for_sentences(tok, sentences, targets)
        with intervened(model, iv, targets):
            assert torch.equal(model(**batch).logits, base_logits)
            assert evaluate_translation(model, tok, fwd, batch_size=5) == base_rows
            assert lm_loss(model, tok, sentences) == base_nll


@pytest.mark.parametrize("position", ["query", "last"])
def test_the_hook_changes_only_its_positions(full, queries, position):
    """Generation (batched, shared prefix cached, then decoding) and gold scoring through `intervened` equal plain
    uncached forwards with a hand-made hook on exactly the query word's tokens (or the prompt's last token)."""
    from tli.eval.graded import _sequences, score_gold
    from tli.eval.translation import generate_answers

    model, tok = full
    iv = _random_map(model.config.hidden_size, alpha=3.0, position=position)
    fwd = [q for q in queries if q.direction == "Swahili->English"][:10]
    targets = for_queries(tok, fwd, position)
    with torch.no_grad(), intervened(model, iv, targets):
        got = generate_answers(model, tok, [q.prompt for q in fwd], batch_size=4, max_new_tokens=4)
        gold = score_gold(model, tok, fwd, batch_size=3)
    base = generate_answers(model, tok, [q.prompt for q in fwd], batch_size=4, max_new_tokens=4)
    enc = tok([q.prompt for q in fwd], return_offsets_mapping=True)
    expected = []
    for q, ids, offsets in zip(fwd, enc["input_ids"], enc["offset_mapping"], strict=True):
        start = len(q.prompt) - len(f"{q.source}\n{q.answer_lang}:")
        word = [i for i, (a, b) in enumerate(offsets) if a < start + len(q.source) and b > start and b > a]
        pos = word if position == "query" else [len(ids) - 1]
        assert targets.positions(ids) == frozenset(pos)
        seq = torch.tensor([ids])
        with torch.no_grad(), HandHook(model, iv, pos):  # greedy, no cache, the prompt's positions only
            for _ in range(4):
                nxt = model(seq).logits[0, -1].argmax()
                seq = torch.cat([seq, nxt.view(1, 1)], 1)
                if "\n" in tok.decode(seq[0, len(ids):]) or int(nxt) == tok.eos_token_id:
                    break
        expected.append(tok.decode(seq[0, len(ids):], skip_special_tokens=True).split("\n", 1)[0].strip())
        with torch.no_grad():  # the hidden state at the index: changed exactly at `pos`
            plain = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER][0]
            with intervened(model, iv, targets):
                hooked = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER][0]
        torch.testing.assert_close(hooked[pos], iv.apply(LAYER, plain[pos]))
        assert torch.equal(hooked[:min(pos)], plain[:min(pos)])  # the positions before the first: untouched
    assert got == expected
    assert got != base or position == "query"  # the tiny model's greedy answers hang on the last token alone
    best = {}
    for (qi, ids, context) in _sequences(tok, fwd):  # the scored answers: the same positions, by hand
        pos = sorted(targets.positions(ids))
        assert pos == (sorted(targets.positions(tok(fwd[qi].prompt)["input_ids"])) if position == "query"
                       else [context - 1])
        with torch.no_grad(), HandHook(model, iv, pos):
            lp = model(torch.tensor([ids])).logits[0, context - 1:-1].log_softmax(-1)
        mean = float(lp.gather(1, torch.tensor(ids[context:])[:, None]).mean())
        best[qi] = max(best.get(qi, -np.inf), mean)  # the best listed translation's
    assert [g["gold_logprob"] for g in gold] == pytest.approx([best[i] for i in range(len(fwd))], rel=1e-5)
    ref = [g["gold_logprob"] for g in score_gold(model, tok, fwd, batch_size=3)]
    assert [g["gold_logprob"] for g in gold] != pytest.approx(ref, rel=1e-4)


def test_nll_intervenes_on_every_source_token_but_bos(full):
    from tli.eval.lm_loss import heldout_sentences, sentence_nll

    model, tok = full
    iv = _random_map(model.config.hidden_size, kind="mean_shift", alpha=0.5)
    sentences = heldout_sentences("Swahili")[:4]
    with torch.no_grad(), intervened(model, iv, for_sentences(tok, sentences)):
        sums, counts = sentence_nll(model, tok, sentences, batch_size=3)
    for s, total in zip(sentences, sums, strict=True):
        ids = tok(s)["input_ids"]
        assert ids[0] == tok.bos_token_id
        with torch.no_grad(), HandHook(model, iv, range(1, len(ids))):
            out = model(torch.tensor([ids]), labels=torch.tensor([ids]))
        assert total == pytest.approx(float(out.loss) * (len(ids) - 1), rel=1e-5)
    assert not for_sentences(tok, sentences).positions(tok("Hello there")["input_ids"])  # other text: untouched


def test_word_vectors_are_embedded_with_the_intervention_on_the_word(full):
    from tli.model.embed import Probe, embed_words

    model, tok = full
    iv = _random_map(model.config.hidden_size, alpha=1.0)
    words, probe = ["maji", "mti"], Probe(target_layer=LAYER, template="neno: {word}")
    with intervened(model, iv, for_words(tok, words, probe.template)):
        got = embed_words(model, tok, words, probe, layers=[LAYER]).vectors[:, 0]
    for w, vec in zip(words, got, strict=True):
        enc = tok(probe.template.format(word=w), return_offsets_mapping=True)
        start = probe.template.index("{word}")
        pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < start + len(w) and b > start and b > a]
        with torch.no_grad(), HandHook(model, iv, pos):
            h = model(torch.tensor([enc["input_ids"]]), output_hidden_states=True).hidden_states[LAYER][0]
        torch.testing.assert_close(vec, torch.nn.functional.normalize(h[pos].mean(0), dim=0), rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_and_damaged_maps(full, tmp_path):
    from tli.intervention.artifact import InterventionCard, read_intervention, save_intervention

    model, tok = full
    iv = _random_map(model.config.hidden_size, layers=(1, LAYER), alpha=0.5)
    card = InterventionCard(base_model="m", target_layer=LAYER, split={"crossfit": 3, "fold": 1}, seed=2,
                            intervention={"type": "linear_map", "layers": [1, LAYER], "alpha": 0.5, "update": "add",
                                          "position": "query"})
    out = save_intervention(iv, card, tmp_path / "map")
    assert sorted(p.name for p in out.iterdir()) == ["intervention.json", "map.safetensors"]
    back_card, back = read_intervention(out)
    assert back_card == card and back.alpha == 0.5 and back.layers == [1, LAYER]
    assert all(torch.equal(back.tensors[i], iv.tensors[i]) for i in iv.layers)
    ids = tok(["Maji ni uhai"], return_tensors="pt")
    targets = for_sentences(tok, ["Maji ni uhai"])
    with torch.no_grad():
        with intervened(model, iv, targets):
            a = model(**ids).logits
        with intervened(model, back, targets):
            b = model(**ids).logits
    assert torch.equal(a, b)
    bad = tmp_path / "bad"
    for damage, message in (
            (lambda d: (d / "map.safetensors").unlink(), r"bad/map.safetensors is missing"),
            (lambda d: (d / "map.safetensors").write_bytes(b"junk"), r"bad/map.safetensors is damaged"),
            (lambda d: (d / "intervention.json").write_text("{"), r"bad/intervention.json is not valid JSON"),
            (lambda d: (d / "intervention.json").unlink(), r"'.*bad' has no intervention.json"),
            (lambda d: _edit(d, layers=[1]), r"holds \['layer.1', 'layer.2'\] but intervention.json lists"),
            (lambda d: _edit(d, type="steer"), r"intervention.type must be one of linear_map, mean_shift")):
        save_intervention(iv, card, bad)
        damage(bad)
        with pytest.raises(AdapterError, match=message) as err:
            read_intervention(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(AdapterError, match="intervention.load='/nope': no such directory"):
        read_intervention("/nope")


def _edit(directory, **changes):
    data = json.loads((directory / "intervention.json").read_text())
    data["intervention"].update(changes)
    (directory / "intervention.json").write_text(json.dumps(data))


def test_fit_on_deranged_fits_the_deranged_pairs(eval_cfg, full, tmp_path):
    from tli.data.config import load_lexicons
    from tli.data.crossfit import derange
    from tli.data.splits import split_pairs
    from tli.intervention.artifact import InterventionCard
    from tli.intervention.fit import fit_map, plan_fit
    from tli.model.embed import embed_words

    model, tok = full
    for fit_on, extra in (("pairs", []), ("deranged", []), ("pairs", ["data.derange=true"])):
        cfg = eval_cfg("intervention=linear_map", f"intervention.fit_on={fit_on}", "data.crossfit=3", "data.fold=1",
                       "data.val_fraction=0.25", *extra)
        lex = load_lexicons(cfg.data)
        plan = plan_fit(cfg, lex, InterventionCard(base_model="m", target_layer=LAYER), 32)
        train, val, held = split_pairs(lex.train, replace(cfg.data, derange=False), cfg.seed)
        deranged = fit_on == "deranged" or bool(extra)
        assert plan.fit_pairs == (derange(train, cfg.seed) if deranged else train)
        assert plan.card.split == {"crossfit": 3, "fold": 1, "derange": deranged, "val_fraction": 0.25}
        assert {q.source for q in plan.val_queries} == {p.source for p in val}  # alpha's words: validation only
        seen = {p.source for p in plan.fit_pairs} | {q.source for q in plan.val_queries}
        assert held and not {p.source for p in held} & seen  # the held-out fold: never touched
        assert all(s[0] in {p.source for p in train} for q in plan.val_queries for s in q.shots)  # true pairs
    if deranged:
        assert sum(p.target != t.target for p, t in zip(plan.fit_pairs, train, strict=True)) == len(train)
    iv, timing = fit_map(model, tok, plan, cfg)
    X = embed_words(model, tok, [p.source for p in plan.fit_pairs], layers=[LAYER]).vectors[:, 0].double().numpy()
    Y = embed_words(model, tok, [p.target for p in plan.fit_pairs], layers=[LAYER]).vectors[:, 0].double().numpy()
    np.testing.assert_allclose(iv.tensors[LAYER].numpy(), ridge_map(X, Y, 1.0), atol=1e-5)
    assert timing["n_fit_pairs"] == len(train)


def test_alpha_is_the_best_validation_score_within_the_harm_budget(eval_cfg, full):
    from tli.data.config import load_lexicons
    from tli.eval.graded import score_gold
    from tli.eval.lm_loss import heldout_sentences, lm_loss
    from tli.intervention.artifact import InterventionCard
    from tli.intervention.fit import choose_alpha, plan_fit

    model, tok = full
    text = heldout_sentences("Swahili")[:6]  # any text: the job uses the base model's own samples
    iv = _random_map(model.config.hidden_size, alpha=0.0)
    for budget in ("null", "0.001"):
        cfg = eval_cfg("intervention=linear_map", "intervention.alphas=[-4,4]", f"objective.max_harm={budget}",
                       "data.val_fraction=0.25")
        plan = plan_fit(cfg, load_lexicons(cfg.data), InterventionCard(base_model="m", target_layer=LAYER), 32)
        table = choose_alpha(model, tok, iv, plan, text, cfg)
        assert [r["alpha"] for r in table] == [0.0, -4.0, 4.0]
        for r in table:  # each row by hand
            with torch.no_grad(), intervened(model, iv.with_alpha(r["alpha"]), for_queries(tok, plan.val_queries,
                                                                                         "query")):
                gold = [g["gold_logprob"] for g in score_gold(model, tok, plan.val_queries)]
            with torch.no_grad(), intervened(model, iv.with_alpha(r["alpha"]), for_sentences(tok, text)):
                nll = lm_loss(model, tok, text)["nll"]
            assert r["gold_logprob"] == pytest.approx(sum(gold) / len(gold), rel=1e-6)
            assert r["nll"] == pytest.approx(nll, rel=1e-9) and r["rise"] == pytest.approx(nll / table[0]["nll"] - 1)
            assert r["within_budget"] == (budget == "null" or r["alpha"] == 0 or r["rise"] <= float(budget))
        allowed = [r for r in table if r["within_budget"]]
        assert [r for r in table if r["chosen"]] == [max(allowed, key=lambda r: r["gold_logprob"])]
    assert not all(r["within_budget"] for r in table)  # the tight budget rules an alpha out


def test_bad_config_values_are_one_line_errors(eval_cfg, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tli.jobs.evaluate import evaluate_job

    for override, message in (
            ("intervention.type=steer", "intervention.type='steer' is not one of none, linear_map, mean_shift"),
            ("intervention.solver=svd", "intervention.solver='svd' is not one of ridge, procrustes"),
            ("intervention.position=first", "intervention.position='first' is not one of query, last"),
            ("intervention.fit_on=random", "intervention.fit_on='random' is not one of pairs, deranged"),
            ("intervention.select_on=nll", "intervention.select_on='nll' is not one of gold_logprob, accuracy"),
            ("intervention.update=mul", "intervention.update='mul' is not one of add, towards"),
            ("intervention.ridge=-1", "intervention.ridge=-1.0 must be a finite lambda >= 0"),
            ("intervention.alphas=[]", "intervention.alphas=[] must be a non-empty list of finite numbers"),
            ("intervention.layers=[]", "intervention.layers=[] must be target, all or a non-empty list"),
            ("intervention.layers=[2,2]", "intervention.layers=[2, 2] lists an index twice"),
            ("intervention.val_text=-1", "intervention.val_text=-1 must be an integer >= 0"),
            ("intervention.fit_only=true", "intervention.fit_only=true fits a map: set intervention=linear_map")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")) as err:
            eval_cfg(override)
        assert "\n" not in str(err.value)
    calls = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(lambda cls, *a, **k: calls.append(a)))
    for overrides, error, message in (
            (["intervention.layers=[40]"], ConfigError,
             r"intervention.layers=\[40\]: index 40 is out of range for this model's hidden-state indices 0..32"),
            (["model.target_layer=33"], ConfigError, r"model.target_layer=33 \(intervention.layers=target\)"),
            (["data.val_fraction=0.05"], DataError, r"leaves \d validation pair\(s\): intervention alpha"),
            (["adapter=/some/adapter"], ConfigError, "fits .* one map for the bare base model: give no adapter"),
            (["intervention.load=/nope"], AdapterError, "intervention.load='/nope': no such directory")):
        with pytest.raises(error, match=message):
            evaluate_job(eval_cfg("intervention=linear_map", *overrides))
    assert calls == [] and not (tmp_path / "eval").exists()


def test_the_intervention_config_group_composes():
    raw = compose_raw("evaluate", ["intervention=mean_shift"])
    assert (raw.intervention.type, raw.intervention.alphas[0]) == ("mean_shift", -0.5)
    raw = compose_raw("evaluate", ["intervention=linear_map", "crossfit=5fold", "intervention.fit_on=deranged"])
    assert (raw.intervention.type, raw.intervention.fit_on, raw.data.crossfit) == ("linear_map", "deranged", 5)
    assert compose_raw("evaluate", []).intervention.type == "none"


def test_mean_shift_is_the_mean_difference_and_blind_to_the_derangement(eval_cfg, full):
    from tli.data.config import load_lexicons
    from tli.intervention.artifact import InterventionCard
    from tli.intervention.fit import fit_map, plan_fit
    from tli.model.embed import embed_words

    model, tok = full
    fitted = []
    for fit_on in ("pairs", "deranged"):
        cfg = eval_cfg("intervention=mean_shift", f"intervention.fit_on={fit_on}", "intervention.layers=[1,3]")
        plan = plan_fit(cfg, load_lexicons(cfg.data), InterventionCard(base_model="m", target_layer=LAYER), 32)
        fitted.append(fit_map(model, tok, plan, cfg)[0])
    X = embed_words(model, tok, [p.source for p in plan.fit_pairs], layers=[1, 3]).vectors
    Y = embed_words(model, tok, [p.target for p in plan.fit_pairs], layers=[1, 3]).vectors
    for slot, layer in enumerate((1, 3)):
        torch.testing.assert_close(fitted[1].tensors[layer], Y[:, slot].mean(0) - X[:, slot].mean(0))
        # a derangement permutes the targets: the means, and so the shift, stay (it is the null of linear_map)
        torch.testing.assert_close(fitted[0].tensors[layer], fitted[1].tensors[layer])


def test_evaluate_fits_saves_and_scores_the_map(eval_cfg, full, tiny_nf4, tmp_path):
    """evaluate.py intervention=linear_map: the report, summary.json and the saved map; the after-state rows equal
    the base model with the reloaded map applied by hand; English (prompts: not scored; text) untouched."""
    import csv

    from tli.data.config import load_lexicons
    from tli.eval.lm_loss import heldout_sentences, lm_loss
    from tli.eval.translation import build_queries, evaluate_translation
    from tli.intervention.artifact import read_intervention
    from tli.jobs.evaluate import evaluate_job

    summary = evaluate_job(eval_cfg("intervention=linear_map", "eval.translation=true", "eval.nn_shots=false",
                                    "data.val_fraction=0.25", "intervention.alphas=[-2,2]",
                                    f"paths.cache_dir={tmp_path / 'cache'}"))
    out = tmp_path / "eval"
    assert {"report.md", "summary.json", "translation.csv", "pairs.csv"} <= {p.name for p in out.iterdir()}
    card, iv = read_intervention(out / "intervention")
    info = summary["runs"]["run"]["intervention"]
    table = info["validation"]
    assert [r["alpha"] for r in table] == [0.0, -2.0, 2.0] and card.intervention == info
    best = max((r for r in table if r["within_budget"]), key=lambda r: (r["gold_logprob"], -abs(r["alpha"])))
    assert [r["alpha"] for r in table if r["chosen"]] == [best["alpha"]] == [iv.alpha]
    assert all(r["rise"] <= 0.02 for r in table if r["within_budget"] and r["alpha"])
    assert card.split == {"crossfit": 0, "fold": 0, "derange": False, "val_fraction": 0.25} and card.seed == 0
    assert "### Intervention" in (out / "report.md").read_text()
    rows = list(csv.DictReader((out / "translation.csv").open(encoding="utf-8")))
    model, tok = full
    fwd_rows = [r for r in rows if r["direction"] == "Swahili->English"]
    lex = load_lexicons(eval_cfg().data)  # the evaluation's queries, with the reloaded map applied by hand
    fwd = [q for q in build_queries({"train": lex.train, "control": lex.control}, k=5, seed=0)
           if q.direction == "Swahili->English"]
    with torch.no_grad(), intervened(model, iv, for_queries(tok, fwd, "query")):
        by_hand = evaluate_translation(model, tok, fwd)
    assert [r["prediction_after"] for r in fwd_rows] == [r["prediction"] for r in by_hand]
    assert [float(r["gold_logprob_after"]) for r in fwd_rows] == pytest.approx(
        [r["gold_logprob"] for r in by_hand], rel=1e-5)
    assert len(fwd_rows) == len(rows)  # English prompts are not scored: the map acts on source-language input
    nll = summary["runs"]["run"]["lm_loss"]
    assert nll["English"]["nll_after"] == nll["English"]["nll_before"]
    sw = heldout_sentences("Swahili")
    with torch.no_grad(), intervened(model, iv, for_sentences(tok, sw)):
        assert nll["Swahili"]["nll_after"] == pytest.approx(lm_loss(model, tok, sw)["nll"], rel=1e-6)
    if iv.alpha:
        assert nll["Swahili"]["nll_after"] != nll["Swahili"]["nll_before"]
    # reloading the saved map evaluates it again: the same after-state
    again = evaluate_job(eval_cfg(f"intervention.load={out / 'intervention'}", "eval.translation=true",
                                  "eval.nn_shots=false", out=tmp_path / "again"))
    assert again["runs"]["run"]["lm_loss"]["Swahili"]["nll_after"] == nll["Swahili"]["nll_after"]
    assert again["runs"]["run"]["translation"]["train"] == summary["runs"]["run"]["translation"]["train"]
    nf4, _ = tiny_nf4  # the representation figures: source words embedded with the map on (NF4, as the adapters)
    pairs = [r for r in csv.DictReader((out / "pairs.csv").open()) if r["split"] == "control" and r["layer"] == "2"]
    from tli.model.embed import Probe, embed_words

    words = [pairs[0]["source"]]
    with intervened(nf4, iv, for_words(tok, words)):
        src = embed_words(nf4, tok, words, Probe(target_layer=LAYER), layers=[LAYER]).vectors[0, 0]
    tgt = embed_words(nf4, tok, [pairs[0]["target"]], Probe(target_layer=LAYER), layers=[LAYER]).vectors[0, 0]
    assert float(pairs[0]["cos_after"]) == pytest.approx(float(src @ tgt), abs=1e-5)


def test_cross_fitted_maps_and_their_null_are_recipes_of_one_evaluation(eval_cfg, tmp_path):
    """`evaluate.py -m intervention=... crossfit=...` fits one map per fold (fit_only); the sweep's callback then
    evaluates them as recipes: every training word scored once per direction as unseen, by the map of its fold, the
    deranged null after its recipe, the nn_shots null, the comparisons Holm-adjusted."""
    import csv

    from omegaconf import OmegaConf

    from tli.data.config import load_lexicons
    from tli.eval.translation import build_queries
    from tli.jobs.evaluate import evaluate_job
    from tli.jobs.intervention_report import InterventionReport, recipes, saved_maps

    common = ["intervention=linear_map", "intervention.solver=procrustes", "intervention.position=last",
              "intervention.alphas=[0.5]", "data.crossfit=2", "data.val_fraction=0.25",
              f"paths.cache_dir={tmp_path / 'cache'}"]
    job = 0
    for fit_on in ("pairs", "deranged"):
        for fold in (0, 1):
            card = evaluate_job(eval_cfg(*common, f"data.fold={fold}", f"intervention.fit_on={fit_on}",
                                         "intervention.fit_only=true", out=tmp_path / "sweep" / str(job)))
            assert card["split"]["fold"] == fold and card["split"]["derange"] == (fit_on == "deranged")
            job += 1
    assert not (tmp_path / "sweep" / "0" / "eval" / "summary.json").exists()  # fit only: no report
    maps = saved_maps(tmp_path / "sweep")
    assert recipes(maps) == {"linear_map": [str(m) for m in maps[:2]],
                             "linear_map-deranged": [str(m) for m in maps[2:]]}
    raw = compose_raw("evaluate", [*common[:-1], "eval.translation=true", "eval.n_boot=500",
                                   f"model.name_or_path={eval_cfg().model.name_or_path}",
                                   f"data.train_file={eval_cfg().data.train_file}",
                                   f"data.control_file={eval_cfg().data.control_file}"])
    OmegaConf.set_struct(raw, False)
    raw.hydra = {"sweep": {"dir": str(tmp_path / "sweep")}}
    InterventionReport().on_multirun_end(raw)
    summary = json.loads((tmp_path / "sweep" / "eval" / "summary.json").read_text())
    assert list(summary["recipes"]) == ["linear_map", "linear_map-deranged"]
    assert set(summary["comparisons"]["pairs"]) == {"linear_map vs linear_map-deranged", "linear_map vs nn_shots",
                                                    "linear_map-deranged vs nn_shots"}
    assert all("holm_p" in cell["correct"] for c in summary["comparisons"]["pairs"].values()
               for by in c["translation"].values() for cell in by.values())
    assert set(summary["recipes"]["linear_map"]["crossfit"]) == {"unseen", "control"}
    rows = list(csv.DictReader((tmp_path / "sweep" / "eval" / "translation.csv").open(encoding="utf-8")))
    lex = load_lexicons(eval_cfg().data)
    built = build_queries({"train": lex.train, "control": lex.control}, k=5)
    train_words = sorted((q.direction, q.source) for q in built if q.split == "train" and q.direction[0] == "S")
    back_words = sorted((q.direction, q.source) for q in built if q.split == "train" and q.direction[0] == "E")
    for recipe in ("linear_map", "linear_map-deranged"):  # each training word once (forward prompts), as unseen
        assert sorted((r["direction"], r["source"]) for r in rows
                      if r["run"].startswith(recipe + "/") and r["split"] == "unseen") == train_words
    assert sorted((r["direction"], r["source"]) for r in rows if r["run"] == "nn_shots" and r["split"] == "unseen") \
        == sorted(train_words + back_words)  # the prompt-only null: both directions


@pytest.mark.parametrize("kind,src_lang,written", [
    ("auto", "Swahili", True), ("auto", "Zulu", False), ("samples", "Swahili", False), ("written", "Swahili", True),
    ("both", "Swahili", True)])
def test_the_harm_budget_scores_written_sentences_or_samples(eval_cfg, kind, src_lang, written):
    """intervention.harm_text, as preserve.val_text: the bundled written sentences of the source language (read and
    checked when the fit is planned, before weights load) and/or base-model samples; auto takes written text where
    there is some."""
    from tli.data.config import load_lexicons
    from tli.eval.base_text import written_validation
    from tli.intervention.artifact import InterventionCard
    from tli.intervention.fit import harm_text, plan_fit

    cfg = eval_cfg("intervention=linear_map", f"intervention.harm_text={kind}", f"data.src_lang={src_lang}",
                   "data.val_fraction=0.25")
    lexicons = load_lexicons(cfg.data)
    plan = plan_fit(cfg, lexicons, InterventionCard(base_model="m", target_layer=LAYER), 32)
    assert plan.harm_written == (written_validation(src_lang, None, "k") if written else [])
    assert plan.card.intervention["harm_text"] == kind
    if kind in ("auto", "written") and written:  # no samples: the model is never asked for any
        assert harm_text_of(cfg, lexicons, plan, speaker=None) == plan.harm_written
    no_budget = eval_cfg("intervention=linear_map", f"intervention.harm_text={kind}", "objective.max_harm=null")
    assert harm_text(None, None, no_budget, lexicons, no_budget.model.loading(), plan.harm_written) == []


def harm_text_of(cfg, lexicons, plan, speaker, tokenizer=None):
    from tli.intervention.fit import harm_text

    return harm_text(speaker, tokenizer, cfg, lexicons, cfg.model.loading(), plan.harm_written)


def test_both_adds_the_base_models_samples_to_the_written_sentences(eval_cfg, full, tmp_path):
    from tli.data.config import load_lexicons
    from tli.eval.base_text import preservation_text
    from tli.intervention.artifact import InterventionCard
    from tli.intervention.fit import plan_fit

    model, tok = full
    mine = tmp_path / "mine.txt"
    mine.write_text("Habari za asubuhi.\nNinapenda kusoma vitabu.\n", encoding="utf-8")
    cfg = eval_cfg("intervention=linear_map", "intervention.harm_text=both", f"intervention.harm_file={mine}",
                   "intervention.val_text=3", "intervention.max_new_tokens=4", "data.val_fraction=0.25",
                   f"model.cache_dir={tmp_path / 'cache'}")
    lexicons = load_lexicons(cfg.data)
    plan = plan_fit(cfg, lexicons, InterventionCard(base_model="m", target_layer=LAYER), 32)
    assert plan.harm_written == ["Habari za asubuhi.", "Ninapenda kusoma vitabu."]
    text = harm_text_of(cfg, lexicons, plan, model, tok)
    samples = preservation_text(model, tok, ["Swahili"], seed=cfg.seed, n_train=0, n_val=3, max_new_tokens=4,
                                fallback={"Swahili": sorted({p.source for p in lexicons.train.pairs})[:32]})
    assert text == samples["Swahili"].val + plan.harm_written and len(text) == 5


def test_bad_harm_text_settings_fail_before_weights_load(eval_cfg, tmp_path):
    from tli.data.config import load_lexicons
    from tli.eval.lm_loss import heldout_sentences
    from tli.intervention.artifact import InterventionCard
    from tli.intervention.fit import plan_fit

    with pytest.raises(ConfigError, match="intervention.harm_text='all' is not one of auto, samples, written, both"):
        eval_cfg("intervention=linear_map", "intervention.harm_text=all")
    with pytest.raises(ConfigError, match=r"intervention.harm_file='.*missing.txt': no such file"):
        eval_cfg("intervention=linear_map", f"intervention.harm_file={tmp_path / 'missing.txt'}")
    leaky = tmp_path / "leaky.txt"
    leaky.write_text(f"Habari za asubuhi.\n{heldout_sentences('sw')[2]}\n", encoding="utf-8")
    card = InterventionCard(base_model="m", target_layer=LAYER)
    for overrides, message in (([f"intervention.harm_file={leaky}"], r"intervention.harm_file: .*leaky.txt shares 1"),
                               (["intervention.harm_text=written", "data.src_lang=Zulu"],
                                r"'Zulu'.*intervention.harm_file=FILE.*or intervention.harm_text=samples")):
        cfg = eval_cfg("intervention=linear_map", "data.val_fraction=0.25", *overrides)
        with pytest.raises(DataError, match=message):
            plan_fit(cfg, load_lexicons(cfg.data), card, 32)
