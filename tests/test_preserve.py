"""Behaviour-preserving terms, anchor, centring, schedules and the translation-LM baseline (tli.training.preserve,
tli.training.objective, tli.training.translation_lm, tli.training.text, tli.eval.base_text) on the tiny model."""

import json

import pytest
import torch
from helpers import HARM_TEXT, CrashAt, SimulatedCrash
from safetensors.torch import load_file

from tli.errors import ConfigError, DataError
from tli.eval.base_text import check_disjoint, preservation_text
from tli.jobs.train import train_job
from tli.model.embed import Probe, collate, tokenize_words
from tli.model.loading import ModelSpec
from tli.model.lora import LoraConfig
from tli.training.losses import build_loss
from tli.training.module import TLIModule
from tli.training.objective import RunningCentre, active_groups
from tli.training.optim import OptimConfig
from tli.training.preserve import PreserveConfig, forward_text, kl_cached, kl_live, retain_distance, topk_reference
from tli.training.run_config import TrainConfig
from tli.training.text import tokenize_text
from tli.training.translation_lm import tokenize_sequences, translation_sequences

SENTENCES = ["Maji ni uhai kwa kila kiumbe.", "The book is on the table.", "Mwalimu anafundisha watoto.",
             "We walked home"]


@pytest.fixture
def train_cfg(train_cfg):
    """conftest's, with the validation-text scoring and harm budget this file tests (debug=test turns them off)."""
    return lambda *overrides, out=None: train_cfg(*HARM_TEXT, *overrides, out=out)


@pytest.fixture(scope="module")
def fp32_spec(tiny_dir):
    return ModelSpec(name_or_path=str(tiny_dir), quantization="none")


def make_module(spec, k: int = 2, loss: dict | None = None, preserve: PreserveConfig | None = None) -> TLIModule:
    module = TLIModule(spec, Probe(target_layer=k), LoraConfig(r=4, alpha=8, dropout=0.0, blocks="all"),
                       build_loss({"name": "infonce", "temperature": 0.1, **(loss or {})}), OptimConfig(lr=1e-3),
                       TrainConfig(), preserve=preserve)
    module.configure_model()
    return module


def perturb(module, std: float = 0.3, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in module.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(std=std)


def text_batch(tokenizer):
    return tokenize_text(tokenizer, SENTENCES)


def lora_grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad and p.grad is not None}


def test_kl_and_retain_are_zero_with_zero_gradient_for_a_zero_initialised_adapter(tiny_spec, tiny_nf4):
    module = make_module(tiny_spec)  # NF4, LoRA B = 0: the adapter is the identity
    batch = text_batch(tiny_nf4[1])
    logp, states = forward_text(module.backbone, batch, [3, 32])
    with torch.no_grad(), module.backbone.disable_adapter():
        base_logp, base_states = forward_text(module.backbone, batch, [3, 32])
    kl = kl_live(base_logp, logp)
    cached = kl_cached(*topk_reference(base_logp, 16), logp)
    retain = retain_distance(states, base_states, batch["attention_mask"].bool(), "mse")
    assert kl.item() == 0.0 and cached.item() == 0.0 and retain.item() == 0.0
    (kl + cached + retain).backward()
    grads = lora_grads(module)  # analytically 0 (softmax(q) - p at q = p); float rounding leaves ~1e-10
    assert grads and all(g.abs().max() < 1e-8 for g in grads.values())


def test_kl_matches_a_hand_computation(fp32_spec, tiny_nf4):
    module = make_module(fp32_spec)
    perturb(module)
    batch = text_batch(tiny_nf4[1])
    with torch.no_grad():
        logp, _ = forward_text(module.backbone, batch)
        adapted = module.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with module.backbone.disable_adapter():
            base_logp, _ = forward_text(module.backbone, batch)
            base = module.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    scored = batch["scored"]
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=base[scored].double()),
                                                 torch.distributions.Categorical(logits=adapted[scored].double()))
    full = kl_live(base_logp, logp)
    assert full.item() > 1e-3
    torch.testing.assert_close(full.double(), expected.mean(), rtol=1e-4, atol=1e-6)
    # the cached top-k term: the full KL when k covers the vocabulary, a lower bound below it
    V = base_logp.shape[-1]
    torch.testing.assert_close(kl_cached(*topk_reference(base_logp, V), logp), full, rtol=1e-4, atol=1e-6)
    coarse = kl_cached(*topk_reference(base_logp, 8), logp)
    assert 0 < coarse.item() <= full.item() + 1e-6


def test_retain_matches_a_hand_computation():
    torch.manual_seed(0)
    h, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    rows = [(0, 0), (0, 1), (1, 0)]
    num = sum(float(((h[i, t] - b[i, t]) ** 2).sum()) for i, t in rows)
    den = sum(float((b[i, t] ** 2).sum()) for i, t in rows)
    assert retain_distance([h], [b], mask, "mse").item() == pytest.approx(num / den, rel=1e-5)
    cos = [1 - float(h[i, t] @ b[i, t] / (h[i, t].norm() * b[i, t].norm())) for i, t in rows]
    assert retain_distance([h], [b], mask, "cosine").item() == pytest.approx(sum(cos) / 3, rel=1e-5)


def _word_batch(tokenizer, src, tgt):
    return {"words": collate(tokenize_words(tokenizer, src + tgt), tokenizer.pad_token_id),
            "src_ids": torch.arange(len(src)), "tgt_ids": torch.arange(len(tgt))}


def test_anchor_base_embeds_targets_with_the_base_model_and_gives_them_no_gradient(fp32_spec, tiny_nf4):
    module = make_module(fp32_spec, loss={"anchor": "base"})
    perturb(module)
    tok = tiny_nf4[1]
    src, tgt = ["maji", "kitabu", "mwalimu", "nyumba"], ["water", "book", "teacher", "house"]
    batch = _word_batch(tok, src, tgt)
    module.align_term(batch).backward()
    anchored = lora_grads(module)
    module.zero_grad()
    # independently: the adapted sources against the base model's targets, detached
    src_vecs = module.layer_k(collate(tokenize_words(tok, src), tok.pad_token_id))
    with torch.no_grad(), module.backbone.disable_adapter():
        base_tgt = module.layer_k(collate(tokenize_words(tok, tgt), tok.pad_token_id))
    assert not torch.allclose(base_tgt, module.layer_k(collate(tokenize_words(tok, tgt), tok.pad_token_id)))
    module.loss_fn(src_vecs, base_tgt, batch["src_ids"], batch["tgt_ids"]).backward()
    expected = lora_grads(module)
    assert anchored.keys() == expected.keys()
    for n in expected:
        torch.testing.assert_close(anchored[n], expected[n], msg=n)


def test_running_centre_matches_a_hand_computation():
    centre = RunningCentre(momentum=0.5)
    a, b = torch.tensor([[1.0, 0.0], [3.0, 2.0]]), torch.tensor([[0.0, 4.0], [2.0, 0.0]])
    torch.testing.assert_close(centre(a, "src"), a - torch.tensor([2.0, 1.0]))
    mean = 0.5 * torch.tensor([2.0, 1.0]) + 0.5 * torch.tensor([1.0, 2.0])
    torch.testing.assert_close(centre(b, "src"), b - mean)
    restored = RunningCentre(0.5)
    restored.load_state_dict(centre.state_dict())
    torch.testing.assert_close(restored.means["src"], mean)


def test_alternate_schedule_takes_turns():
    assert active_groups("alternate", 0, True) == ("align", "translation_lm")
    assert active_groups("alternate", 1, True) == ("kl", "retain")
    assert active_groups("alternate", 1, False) == active_groups("sum", 1, True)
    with pytest.raises(ConfigError, match="train.schedule='both'"):
        active_groups("both", 0, True)


def test_translation_lm_prompts_score_only_the_answer(tiny_nf4):
    tok = tiny_nf4[1]
    pairs = [("maji", "water"), ("kitabu", "book"), ("nyumba", "house")]
    seqs = translation_sequences(pairs, "Swahili", "English", shots=2)
    assert len(seqs) == 6
    assert seqs[0] == ("Swahili: kitabu\nEnglish: book\n\nSwahili: nyumba\nEnglish: house\n\nSwahili: maji\nEnglish:",
                       " water\n")
    assert seqs[3][0].endswith("English: water\nSwahili:") and seqs[3][1] == " maji\n"
    batch = tokenize_sequences(tok, seqs)
    for row, (_, answer) in enumerate(seqs):
        labels = batch["labels"][row]
        assert tok.decode(labels[labels != -100]) == answer
        n = int(batch["attention_mask"][row].sum())
        assert (batch["input_ids"][row, :n] != tok.pad_token_id).all()


def test_base_text_is_cached_keeps_the_rng_and_never_uses_the_heldout_sentences(fp32_spec, tiny_nf4, tmp_path):
    from tli.model.loading import load_model

    model, tok = load_model(fp32_spec, device="cpu")
    state = torch.get_rng_state()
    kwargs = dict(seed=3, n_train=5, n_val=3, max_new_tokens=6, fingerprint="f" * 32, cache_dir=tmp_path)
    first = preservation_text(model, tok, ["Swahili", "English"], **kwargs)
    assert torch.equal(state, torch.get_rng_state())
    files = sorted((tmp_path / "base_text" / ("f" * 32)).glob("*.json"))
    assert len(files) == 4  # train and validation, two languages
    assert json.loads(files[0].read_text())["samples"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = preservation_text(model, tok, ["Swahili", "English"], **kwargs)
    assert again == first and [f.stat().st_mtime_ns for f in files] == mtimes
    assert len(first["Swahili"].train) == 5 and not set(first["Swahili"].train) & set(first["Swahili"].val)
    assert all(s.startswith(("Leo", "Familia", "Jana", "Asubuhi", "Mji")) for s in first["Swahili"].train)
    from tli.eval.lm_loss import heldout_sentences

    with pytest.raises(DataError, match="shares 1 sentence"):
        check_disjoint(["hello", heldout_sentences("ko")[0]], "preserve.text_files: x.txt")


@pytest.mark.parametrize("override,message", [
    ("loss.anchor=english", r"loss.anchor='english' is not one of none, base"),
    ("preserve.kl=-1", r"preserve.kl=-1.* must be a weight >= 0"),
    ("preserve.reference=disk", r"preserve.reference='disk' is not one of live, cached"),
    ("train.schedule=alternate", r"train.schedule=alternate alternates .* set preserve.kl"),
    ("loss.weight=0", r"loss.weight=0 and loss.translation_lm=0: nothing to train"),
    ("objective.score_text=false", r"objective.max_harm needs objective.score_text=true"),
    ("preserve.retain_layers=[40]", r"preserve.retain_layers=\[40\] must be .* within 0..32"),
    ("preserve.val_text=all", r"preserve.val_text='all' is not one of auto, samples, written, both"),
])
def test_bad_preservation_settings_fail_before_weights_load(train_cfg, monkeypatch, override, message):
    import tli.training.module

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights were loaded before the settings were checked")

    monkeypatch.setattr(tli.training.module, "load_model", no_weights)
    with pytest.raises(ValueError, match=message):
        train_job(train_cfg(override))


@pytest.mark.slow
def test_resume_with_kl_retain_centring_and_alternation_is_bit_identical(train_cfg, tmp_path):
    settings = ["trainer.max_steps=6", "trainer.max_epochs=-1", "callbacks.every_n_train_steps=1", "lora.dropout=0.1",
                "preserve.kl=1", "preserve.retain=0.5", "preserve.n_text=6", "preserve.n_val_text=2",
                "preserve.max_new_tokens=6", "preserve.reference=cached", "loss.centred=true",
                "loss.translation_lm=0.5", "train.schedule=alternate"]
    straight = tmp_path / "straight"
    train_job(train_cfg(*settings, out=straight))
    resumed = tmp_path / "resumed"
    with pytest.raises(SimulatedCrash):
        train_job(train_cfg(*settings, out=resumed), extra_callbacks=[CrashAt(3)])
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["centre"]
    result = train_job(train_cfg(*settings, "ckpt_path=last", out=resumed))
    assert result["global_step"] == 6
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (straight, resumed))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_every_term_is_logged_and_the_harm_budget_disqualifies(train_cfg, tmp_path):
    settings = ["preserve.kl=1", "preserve.retain=1", "preserve.n_text=4", "preserve.n_val_text=3",
                "preserve.max_new_tokens=6", "loss.translation_lm=0.5", "optim.lr=0.5", "lora.blocks=all",
                "objective.max_harm=0", "logger=csv"]
    result = train_job(train_cfg(*settings))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for term in ("align", "translation_lm", "kl", "retain"):
        assert f"train/{term}" in metrics["metrics"], term
    changes = [v for k, v in metrics["metrics"].items() if k.startswith("val/nll_change/")]
    assert len(changes) == 2 and metrics["harm"] == pytest.approx(max(changes))
    assert metrics["harm"] > 0  # a large learning rate moves the model
    assert metrics["admissible"] is False and metrics["objective"] is None and result["objective"] is None
    assert metrics["alignment"] == metrics["metrics"][metrics["objective_name"]]
    assert metrics["metrics"]["val/objective"] is None  # -inf: over the budget
    card = json.loads((tmp_path / "adapter" / "tli_adapter.json").read_text())
    assert card["preserve"]["kl"] == 1 and card["preserve"]["schedule"] == "sum"
    assert card["loss"]["translation_lm"] == 0.5


def test_a_kept_best_adapter_reports_its_own_validation(train_cfg, tmp_path):
    train_job(train_cfg("trainer.max_epochs=2", "objective.keep=best", "preserve.n_val_text=3",
                        "preserve.max_new_tokens=6", "optim.lr=0.05"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    own = torch.load(metrics["best"]["path"], weights_only=True)["validation"]
    assert metrics["alignment"] == own[metrics["objective_name"]] and metrics["harm"] == own["val/harm"]
    assert metrics["admissible"] == (own["val/harm"] <= 0.02)


def test_kl_positions_draws_that_many_scored_positions_per_step_the_same_on_every_call(tiny_nf4):
    from tli.training.text import PreservationText

    text = PreservationText.__new__(PreservationText)
    text.train = tokenize_text(tiny_nf4[1], SENTENCES)
    full = text.batch(5, 2, "cpu")
    some = text.batch(5, 2, "cpu", positions=7)
    assert int(some["scored"].sum()) == 7 and not (some["scored"] & ~full["scored"]).any()
    assert torch.equal(some["scored"], text.batch(5, 2, "cpu", positions=7)["scored"])  # resumed runs agree
    assert not torch.equal(some["scored"], text.batch(7, 2, "cpu", positions=7)["scored"])  # rows 0-1 again, new draw
    assert torch.equal(full["rows"], torch.tensor([2, 3])) and int(full["scored"].sum()) > 7


def test_written_validation_text_is_what_validation_scores(train_cfg, tiny_nf4):
    """preserve.val_text=written: val/nll_change/<lang> is measured against the base model's NLL on the bundled
    written sentences, computed independently here."""
    from tli.eval.lm_loss import bundled_heldout, lm_loss, read_sentences

    result = train_job(train_cfg("preserve.val_text=written"))
    model, tok = tiny_nf4
    for lang, code in (("Swahili", "sw"), ("English", "en")):
        sentences = read_sentences(bundled_heldout(code, "validation"))
        assert not set(sentences) & set(read_sentences(bundled_heldout(code)))  # never the held-out sentences
        expected = lm_loss(model, tok, sentences)["nll"]
        nll, change = (result["metrics"][f"val/{key}/{lang}"] for key in ("nll", "nll_change"))
        assert nll / (1 + change) == pytest.approx(expected, rel=1e-5)  # the base model's NLL the change is against
        assert result["val_text"][lang] == f"{len(sentences)} written sentences"  # what the summaries name


@pytest.mark.parametrize("val_text,src_lang,written,samples", [
    ("auto", "Swahili", (24, 24), (0, 0)), ("auto", "Zulu", (0, 24), (16, 0)), ("samples", "Swahili", (0, 0), (16, 16)),
    ("both", "Swahili", (24, 24), (16, 16)), ("written", "Swahili", (24, 24), (0, 0))])
def test_validation_text_plan_per_language(train_cfg, val_text, src_lang, written, samples):
    """What each language's harm is measured on: written sentences (bundled for English, Korean, Swahili), base
    samples (preserve.n_val_text), or both; auto takes written text where there is some, samples elsewhere."""
    from tli.data.config import load_lexicons
    from tli.jobs.train import harm_settings
    from tli.model.loading import load_tokenizer

    cfg = train_cfg(f"preserve.val_text={val_text}", f"data.src_lang={src_lang}")
    source = harm_settings(cfg, load_tokenizer(cfg.model.loading()), load_lexicons(cfg.data), "val/objective").text
    langs = (src_lang, "English")
    assert tuple(len(source.written[lang]) for lang in langs) == written
    assert tuple(source.n_val[lang] for lang in langs) == samples
    for lang, w, n in zip(langs, written, samples, strict=True):
        expected = " + ".join([f"{w} written sentences"] * bool(w) + [f"{n} base-model samples"] * bool(n))
        assert source.described()[lang] == expected


def test_bad_written_validation_files_fail_before_weights_load(train_cfg, monkeypatch, tmp_path):
    import tli.training.module
    from tli.eval.lm_loss import heldout_sentences

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights were loaded before the validation text was checked")

    monkeypatch.setattr(tli.training.module, "load_model", no_weights)
    with pytest.raises(DataError, match=r"preserve.val_src='.*missing.txt': no such file"):
        train_job(train_cfg("preserve.val_text=both", f"preserve.val_src={tmp_path / 'missing.txt'}"))
    leaky = tmp_path / "leaky.txt"
    leaky.write_text(f"Habari za asubuhi.\n{heldout_sentences('sw')[2]}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"preserve.val_src: .*leaky.txt shares 1 sentence"):
        train_job(train_cfg("preserve.val_text=written", f"preserve.val_src={leaky}"))
    with pytest.raises(DataError, match=r"no bundled validation sentences for language 'Zulu'.*preserve.val_src=FILE"):
        train_job(train_cfg("preserve.val_text=written", "data.src_lang=Zulu"))
