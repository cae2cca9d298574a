import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from tli.data.lexicon import Lexicon
from tli.errors import ConfigError, DataError
from tli.eval.vectors import embed_split
from tli.model.embed import POOLINGS, Probe, embed_words, tokenize_words
from tli.model.loading import ModelSpec, load_model

WORDS = ["maji", "water", "kitabu", "book", "mwalimu", "teacher", "물", "먹다", "hospitali", "kuandika", "eat"]


@pytest.fixture(scope="module")
def tiny_fp32(tiny_spec):
    return load_model(ModelSpec(name_or_path=tiny_spec.name_or_path, quantization="none"), device="cpu")


def _reference(tiny_dir, words, mode, template="{word}"):
    """Independent computation: plain transformers, one word at a time, positions found by re-tokenising."""
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    prefix = template.split("{word}")[0]  # "the word " tokenises with a stray trailing-space token: strip it
    out = []
    for w in words:
        ids = tok(template.replace("{word}", w), return_tensors="pt")["input_ids"]
        start = len(tok(prefix.rstrip())["input_ids"]) if prefix else 1  # 1: skip BOS
        end = len(tok(prefix + w)["input_ids"])
        with torch.no_grad():
            hs = torch.stack(model(ids, output_hidden_states=True).hidden_states)[:, 0]  # (L+1, T, D)
        vec = {"mean": hs[:, start:end].mean(1), "mean_all": hs.mean(1), "last": hs[:, end - 1]}[mode]
        out.append(F.normalize(vec, dim=-1))
    return torch.stack(out)  # (N, L+1, D)


@pytest.mark.parametrize("mode", list(POOLINGS))
def test_matches_plain_transformers(tiny_dir, tiny_fp32, mode):
    model, tok = tiny_fp32
    got = embed_words(model, tok, WORDS, Probe(pooling=mode), batch_size=4)
    assert got.vectors.shape == (len(WORDS), 33, 64) and got.layers == list(range(33))
    torch.testing.assert_close(got.vectors, _reference(tiny_dir, WORDS, mode), atol=2e-5, rtol=1e-4)


def test_template_tokens_are_excluded(tiny_dir, tiny_fp32):
    model, tok = tiny_fp32
    spec = Probe(pooling="mean", template="the word {word}")
    got = embed_words(model, tok, WORDS[:6], spec)
    ref = _reference(tiny_dir, WORDS[:6], "mean", spec.template)
    torch.testing.assert_close(got.vectors, ref, atol=2e-5, rtol=1e-4)
    plain = embed_words(model, tok, WORDS[:6]).vectors
    assert (got.vectors[:, 5] - plain[:, 5]).abs().max() > 1e-3  # the context does change the word's states


def test_same_vectors_whatever_batching_padding_and_order(tiny_nf4):
    model, tok = tiny_nf4
    ref = embed_words(model, tok, WORDS, batch_size=len(WORDS)).vectors
    for batch_size in (1, 3):
        for side in ("left", "right"):
            got = embed_words(model, tok, WORDS, batch_size=batch_size, padding_side=side).vectors
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    perm = list(range(len(WORDS)))
    random.Random(0).shuffle(perm)
    shuffled = embed_words(model, tok, [WORDS[i] for i in perm], batch_size=4).vectors
    torch.testing.assert_close(shuffled, ref[perm], atol=1e-5, rtol=1e-4)


def test_layer_subset_normalised_and_bos_diagnostic(tiny_nf4):
    model, tok = tiny_nf4
    full = embed_words(model, tok, WORDS)
    sub = embed_words(model, tok, WORDS, layers=[0, 2, 32])
    torch.testing.assert_close(sub.vectors, full.vectors[:, [0, 2, 32]])
    torch.testing.assert_close(full.vectors.norm(dim=-1), torch.ones(len(WORDS), 33))
    assert full.bos_norm_ratio.shape == (33,)
    assert full.bos_norm_ratio[0] > 10  # the tiny model's BOS has a massive norm, like real LLMs


def test_bos_inclusive_pooling_makes_words_look_alike(tiny_nf4):
    model, tok = tiny_nf4
    def mean_offdiag(v):  # (N, L+1, D) -> (L+1,)
        sim = torch.einsum("nld,mld->lnm", v, v)
        n = v.shape[0]
        return (sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)) / (n * (n - 1))
    own = mean_offdiag(embed_words(model, tok, WORDS).vectors)
    with_bos = mean_offdiag(embed_words(model, tok, WORDS, Probe(pooling="mean_all")).vectors)
    assert with_bos[2] > 0.9 and own[2] < 0.6


def test_errors(tiny_nf4):
    model, tok = tiny_nf4
    with pytest.raises(ConfigError, match="model.pooling='max' is not a pooling mode; valid: mean, mean_all, last"):
        Probe(pooling="max")
    with pytest.raises(ConfigError, match="exactly once"):
        Probe(template="no placeholder")
    with pytest.raises(ConfigError, match=r"layers=\[0, 33\] is outside this model.s range 0..32"):
        embed_words(model, tok, WORDS, layers=[0, 33])
    with pytest.raises(ValueError, match="no words") as err:  # function arguments: not a config key
        embed_words(model, tok, [])
    assert not isinstance(err.value, ConfigError)
    with pytest.raises(ValueError, match="batch_size=0") as err:
        embed_words(model, tok, WORDS, batch_size=0)
    assert not isinstance(err.value, ConfigError)
    with pytest.raises(DataError, match="produced no tokens of its own"):  # an empty word: a lexicon problem
        tokenize_words(tok, [""], "Word: {word}")
    with pytest.raises(DataError, match="the lexicon has no pairs"):
        embed_split(model, tok, Lexicon(Path("empty.json"), [], "Swahili", "English"), Probe(), None, 8)
