"""Model families, proven: tiny random Llama, Gemma 3, Qwen 2, Qwen 3 and Mistral models built locally (and the real
Gemma 3 270M), each checked for what TLI relies on: the truncated training forward (loss and gradients equal the full
forward's, blocks after k really skipped), hidden-state indexing (0 = embedding output, Gemma's sqrt(hidden) scaling
included; i = block i; L = final norm), pooling against a plain-transformers computation (padding side and batch size
do not matter, also where Gemma's sliding window does), LoRA on blocks 1..k only, 4-bit NF4 on the CPU, validation,
exact resume and DDP. A decoder that ignores the truncation fails loudly instead of silently running the full depth.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import FAST_CPU, CrashAt, SimulatedCrash, compose
from safetensors.torch import load_file
from torch import nn

from tli.errors import ModelError
from tli.jobs.train import train_job
from tli.model.embed import Probe, collate, decoder_of, embed_words, hidden_states, pool, tokenize_words
from tli.model.loading import ModelSpec, load_model, load_tokenizer, truncated
from tli.model.lora import LoraConfig
from tli.training.losses import InfoNCE
from tli.training.module import TLIModule
from tli.training.optim import OptimConfig
from tli.training.run_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
N_LAYERS = 6
SLIDING, FULL = "sliding_attention", "full_attention"
# Shared by every family: widths are multiples of 64 (the bitsandbytes 4-bit block size), GQA (2 query heads per KV
# head), 6 blocks. The tokenizer is the tiny model's (vocabulary 768, BOS added), so words split into several tokens.
ARCH = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=N_LAYERS, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=256)
FAMILIES = {  # family: (model_type, what differs)
    "llama": ("llama", dict(tie_word_embeddings=False)),
    # sliding-window (4 tokens) and global layers mixed as in the real model (there every sixth block is global, here
    # every third), embeddings scaled by sqrt(hidden) inside the model, tied output head, its own query scaling
    "gemma3": ("gemma3_text", dict(tie_word_embeddings=True, sliding_window=4, query_pre_attn_scalar=32,
                                   layer_types=[SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL])),
    # full attention in blocks 1..3, a 4-token window after (max_window_layers). transformers gives a qwen2 model
    # directory the Qwen2Tokenizer, which adds <|endoftext|> (id 768) as its pad token: the table must hold it.
    "qwen2": ("qwen2", dict(tie_word_embeddings=False, use_sliding_window=True, sliding_window=4, max_window_layers=3,
                            vocab_size=832)),
    "qwen3": ("qwen3", dict(tie_word_embeddings=True)),  # per-head q/k RMSNorm, tied head
    "mistral": ("mistral", dict(tie_word_embeddings=False, sliding_window=4)),  # every layer a 4-token window
}
SLIDING_FAMILIES = ("gemma3", "qwen2", "mistral")
# sources, then translations; one to five tokens each
WORDS = ["maji", "mwanafunzi", "sikio", "ng'ombe", "water", "student", "ear", "cow"]
# Longer than the 4-token sliding window before and after the word: the window decides what the word's tokens see.
LONG_TEMPLATE = "In the old story the word {word} was written on the wall of the house"


def write_family(family: str, out: Path, tokenizer_dir: Path) -> Path:
    """A tiny random model directory of `family` (config, safetensors, the tiny model's tokenizer files)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, extra = FAMILIES[family]
    tiny = AutoConfig.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(model_type, **{
        "vocab_size": tiny.vocab_size, "bos_token_id": tiny.bos_token_id, "eos_token_id": tiny.eos_token_id,
        "pad_token_id": None, **ARCH, **extra})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms start as the identity (Gemma's 1 + w at w = 0): give them weights that matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def family_dirs(tiny_dir, tmp_path_factory):
    """family -> its tiny model directory, each built once per session (on first use)."""
    root, built = tmp_path_factory.mktemp("families"), {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = write_family(family, root / family, tiny_dir)
        return built[family]

    return get


@pytest.fixture(scope="session", params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def family_nf4(family, family_dirs):
    """(family, model, tokenizer) in 4-bit NF4 on the CPU; shared read-only (tests that train load their own)."""
    model, tok = load_model(ModelSpec(name_or_path=str(family_dirs(family))), device="cpu")
    return family, model, tok


def make_module(path, k: int, quantization: str = "nf4", lora: LoraConfig | None = None, **options) -> TLIModule:
    module = TLIModule(ModelSpec(name_or_path=str(path), quantization=quantization), Probe(target_layer=k),
                       lora or LoraConfig(r=4, alpha=8, dropout=0.0), InfoNCE(0.1), OptimConfig(lr=1e-3),
                       TrainConfig(**options))
    module.configure_model()
    return module


def module_tokenizer(module):
    return load_tokenizer(module.spec)


def randomise_lora_b(module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in module.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.2)  # B = 0 at init would hide A's gradient


def pair_batch(tok, words=WORDS, template="{word}") -> dict:
    B = len(words) // 2
    return {"words": collate(tokenize_words(tok, words, template), tok.pad_token_id),
            "src_ids": torch.arange(B), "tgt_ids": torch.arange(B)}


def block_number(name: str) -> int:
    return int(name.split(".layers.")[1].split(".")[0]) + 1  # 1-based


def output_of(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def step(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Loss and gradients (None where none arrived) of one training step."""
    module.zero_grad(set_to_none=True)
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {n: None if p.grad is None else p.grad.clone()
                           for n, p in module.named_parameters() if p.requires_grad}


def reached(grads: dict) -> set[str]:
    return {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}


# ---- the truncated forward ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["nf4", "none"])
def test_truncated_step_equals_full_step(family, family_dirs, quantization):
    """One training step at k = 3 (Gemma: sliding, sliding, global) on words in a template longer than the sliding
    window: the truncated forward gives the loss and every LoRA gradient of the full forward, and block 4 never
    runs."""
    k = 3
    module = make_module(family_dirs(family), k, quantization)
    randomise_lora_b(module)
    batch = pair_batch(module_tokenizer(module), template=LONG_TEMPLATE)
    layers = decoder_of(module.backbone).layers
    calls = []
    hook = layers[k].register_forward_hook(lambda *a: calls.append(1))  # block k + 1
    results = {}
    try:
        for truncate in (True, False):
            module.options.truncate = truncate
            calls.clear()
            results[truncate] = (*step(module, batch), len(calls))
    finally:
        hook.remove()
    (t_loss, t_grads, t_calls), (f_loss, f_grads, f_calls) = results[True], results[False]
    assert (t_calls, f_calls) == (0, 1)  # blocks after k skipped only when truncating
    torch.testing.assert_close(t_loss, f_loss)
    assert len(t_grads) == 2 * 2 * k and reached(t_grads) == t_grads.keys()  # q, v x A, B x blocks 1..k
    for n, g in t_grads.items():
        torch.testing.assert_close(g, f_grads[n], msg=n)


def test_at_k_equal_to_L_training_reads_the_final_normed_state(family, family_dirs):
    """At k = L nothing is cut: the trained representation is the full model's index L, the final norm's output
    (what validation and evaluation score), not block L's raw output."""
    module = make_module(family_dirs(family), N_LAYERS)
    batch = pair_batch(module_tokenizer(module), template=LONG_TEMPLATE)["words"]
    decoder = decoder_of(module.backbone)
    seen = {}
    hooks = [decoder.layers[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("block", output_of(out))),
             decoder.norm.register_forward_hook(lambda m, a, out: seen.__setitem__("norm", out))]
    module.eval()
    try:
        with torch.no_grad():
            trained = module.layer_k(batch)  # (B, D), train.truncate=true
            full = module.embed(batch, [N_LAYERS])[0]  # validation's view
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(trained, full)
    torch.testing.assert_close(trained, pool(seen["norm"], batch, "mean"))
    assert not torch.allclose(trained, pool(seen["block"], batch, "mean"), atol=1e-3)


# ---- hidden-state indexing ----------------------------------------------------------------------------------------


def test_hidden_states_are_embedding_blocks_and_final_norm(family_nf4):
    """L + 1 states: index 0 the embedding output (Gemma: the table row times sqrt(hidden), the model's own scaling),
    index i block i's output, index L the final norm's output; inside truncated(model, k) the first k + 1 of them."""
    family, model, tok = family_nf4
    decoder = decoder_of(model)
    batch = collate(tokenize_words(tok, WORDS[:4], LONG_TEMPLATE), tok.pad_token_id)
    seen = {}
    hooks = [layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, output_of(out)))
             for i, layer in enumerate(decoder.layers, start=1)]
    hooks.append(decoder.norm.register_forward_hook(lambda m, a, out: seen.__setitem__("norm", out)))
    try:
        with torch.no_grad():
            states = hidden_states(model, batch)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad(), truncated(model, 2):
        short = hidden_states(model, batch)
    assert len(states) == N_LAYERS + 1 and len(short) == 3
    table = decoder.embed_tokens.weight  # embeddings are never quantized
    scale = model.config.hidden_size ** 0.5 if family == "gemma3" else 1.0
    torch.testing.assert_close(states[0], F.embedding(batch["input_ids"], table) * scale)
    if family == "gemma3":
        assert not torch.allclose(states[0], F.embedding(batch["input_ids"], table))  # the scaling is in index 0
    for i in range(1, N_LAYERS):
        torch.testing.assert_close(states[i], seen[i], msg=f"index {i}")
    torch.testing.assert_close(states[N_LAYERS], seen["norm"])
    assert not torch.allclose(states[N_LAYERS], seen[N_LAYERS], atol=1e-3)
    for i in range(3):
        torch.testing.assert_close(short[i], states[i], msg=f"truncated, index {i}")


# ---- pooling ------------------------------------------------------------------------------------------------------


def word_span(tok, word: str, template: str) -> tuple[list[int], int, int]:
    """(ids, start, end) of `word` inside `template`, found without offsets: the ids of the whole text, minus those of
    the template's text before and after the word (BOS and the template's tokens are never the word's)."""
    before, after = (part.strip() for part in template.split("{word}"))
    ids = tok(template.replace("{word}", word)).input_ids
    n_bos = len(tok("").input_ids)  # the special tokens the tokenizer adds in front (BOS)
    n_before = len(tok(before, add_special_tokens=False).input_ids) if before else 0
    n_after = len(tok(" " + after, add_special_tokens=False).input_ids) if after else 0
    start, end = n_bos + n_before, len(ids) - n_after
    assert tok.decode(ids[start:end]).strip() == word, (word, tok.convert_ids_to_tokens(ids))
    return ids, start, end


@torch.no_grad()
def reference_vectors(model, tok, words, template: str, pooling: str) -> torch.Tensor:
    """(N, L + 1, D): each word alone through the plain transformers model (no padding, no position ids, the LM
    head included), its own tokens (or all tokens, or its last) averaged by hand, L2-normalised."""
    rows = []
    for word in words:
        ids, start, end = word_span(tok, word, template)
        states = torch.stack(model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states)[:, 0]
        span = {"mean": slice(start, end), "mean_all": slice(0, len(ids)), "last": slice(end - 1, end)}[pooling]
        rows.append(F.normalize(states[:, span].float().mean(1), dim=-1))  # (L + 1, D)
    return torch.stack(rows)


@pytest.mark.parametrize("template", ["{word}", LONG_TEMPLATE])
def test_pooled_vectors_match_plain_transformers(family_nf4, template):
    """embed_words equals the plain computation word by word, for batches of 1, 3 and all words, padded right or
    left (the words differ in length). With the long template the sliding window cuts what the word's tokens see
    (Gemma 3, Qwen 2, Mistral), and the padded batches still agree."""
    family, model, tok = family_nf4
    assert len({len(word_span(tok, w, template)[0]) for w in WORDS}) > 2  # ragged batches: padding matters
    for pooling in ("mean", "mean_all", "last"):
        expected = reference_vectors(model, tok, WORDS, template, pooling)
        for batch_size in (1, 3, len(WORDS)):
            for side in ("right", "left"):
                got = embed_words(model, tok, WORDS, Probe(pooling=pooling, template=template),
                                  batch_size=batch_size, padding_side=side)
                assert got.layers == list(range(N_LAYERS + 1))
                torch.testing.assert_close(got.vectors, expected, rtol=1e-4, atol=1e-5,
                                           msg=f"{pooling}, batch {batch_size}, {side} padding")
    if template == LONG_TEMPLATE and family in SLIDING_FAMILIES:
        # the window is in force here: without it the words' states at the last index differ
        config = model.config
        saved = config.sliding_window
        config.sliding_window = 4096
        try:
            unwindowed = reference_vectors(model, tok, WORDS, template, "mean")
        finally:
            config.sliding_window = saved
        assert not torch.allclose(unwindowed[:, -1], expected[:, -1], atol=1e-3)


# ---- LoRA on blocks 1..k, and validation then training ----------------------------------------------------------


def test_lora_on_blocks_up_to_k_all_trained_after_a_validation_pass(family, family_dirs):
    """Adapters sit on q/v of blocks 1..k only (found by structure), over 4-bit weights; after a validation pass
    (eval mode, no grad: where bnb's CPU kernel would repack the 4-bit weights in place), one training step still
    gives every adapter a gradient. Adapters put on every block get none after k: the loss cannot reach them."""
    import bitsandbytes as bnb

    k = 3
    module = make_module(family_dirs(family), k)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert {block_number(n) for n in trainable} == set(range(1, k + 1))
    assert all("lora_" in n for n in trainable) and {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    decoder = decoder_of(module.backbone)
    assert isinstance(decoder.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in module.modules())
    batch = pair_batch(module_tokenizer(module))
    module.eval()
    with torch.no_grad():  # what Lightning's (sanity-check) validation does: the full model, every block
        module.embed(batch["words"], module.eval_layers)
    module.train()
    randomise_lora_b(module)
    _, grads = step(module, batch)
    assert grads.keys() == trainable and reached(grads) == trainable, sorted(trainable - reached(grads))

    everywhere = make_module(family_dirs(family), k, lora=LoraConfig(r=4, alpha=8, dropout=0.0, blocks="all"),
                             truncate=False)
    randomise_lora_b(everywhere)
    _, grads = step(everywhere, batch)
    assert {block_number(n) for n in grads} == set(range(1, N_LAYERS + 1))
    assert {block_number(n) for n in reached(grads)} == set(range(1, k + 1))


# ---- a family that ignores the truncation -------------------------------------------------------------------------


class FullDepthDecoder(nn.Module):
    """A decoder of the older kind (`for layer in self.layers`), deaf to config.num_hidden_layers."""

    def __init__(self, n_layers: int = 4, width: int = 16, vocab: int = 768):
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=n_layers)
        self.embed_tokens = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(n_layers))

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states=False, use_cache=False):
        h = self.embed_tokens(input_ids)  # (B, T, D)
        states = [h]
        for layer in self.layers:
            h = torch.tanh(layer(h))
            states.append(h)
        return SimpleNamespace(last_hidden_state=h, hidden_states=tuple(states))


class FullDepthForCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = FullDepthDecoder()
        self.config = self.model.config

    def get_decoder(self):
        return self.model


def test_a_decoder_that_ignores_the_truncation_fails_loudly(tiny_spec):
    """A decoder that runs every block whatever config.num_hidden_layers says returns more states than the truncated
    config asks for: hidden_states and the training step raise ModelError naming its class and the way out
    (train.truncate=false) instead of silently running the full depth; the config is restored."""
    tok = load_tokenizer(tiny_spec)
    torch.manual_seed(0)
    model = FullDepthForCausalLM()
    batch = pair_batch(tok)
    assert len(hidden_states(model, batch["words"])) == 5  # the full depth is fine
    message = r"FullDepthDecoder returned 5 hidden states where its config asks for 3 .*set train\.truncate=false"
    with pytest.raises(ModelError, match=message), truncated(model, 2):
        hidden_states(model, batch["words"])
    assert model.config.num_hidden_layers == 4  # restored after the error

    module = TLIModule(ModelSpec(name_or_path="tli-tiny"), Probe(target_layer=2), LoraConfig(r=4), InfoNCE(0.1),
                       OptimConfig(lr=1e-3))
    module.backbone = model  # the module as configure_model leaves it, with this decoder
    with pytest.raises(ModelError, match=message):
        module.training_step(batch, 0)
    module.options.truncate = False  # what the message suggests: the full forward, read at index k
    torch.testing.assert_close(module.layer_k(batch["words"]),
                               pool(hidden_states(model, batch["words"])[2], batch["words"], "mean"))


def test_a_real_decoder_patched_to_ignore_the_truncation_fails_loudly(family_dirs, monkeypatch):
    """The same through PEFT and a real Gemma 3 decoder, made to run every block whatever the config says."""
    module = make_module(family_dirs("gemma3"), 2)
    decoder = decoder_of(module.backbone)
    forward = decoder.forward

    def full_depth(*args, **kwargs):
        saved, decoder.config.num_hidden_layers = decoder.config.num_hidden_layers, len(decoder.layers)
        try:
            return forward(*args, **kwargs)
        finally:
            decoder.config.num_hidden_layers = saved

    monkeypatch.setattr(decoder, "forward", full_depth)
    batch = pair_batch(module_tokenizer(module))
    with pytest.raises(ModelError, match=r"Gemma3TextModel returned 7 hidden states where its config asks for 3 "
                                         r".*train\.truncate=false"):
        module.training_step(batch, 0)
    module.options.truncate = False
    assert torch.isfinite(module.training_step(batch, 0))


# ---- end to end on a tiny Gemma 3: validation, exact resume, DDP --------------------------------------------------


def test_gemma3_trains_validates_and_resumes_exactly(train_cfg, family_dirs, tmp_path):
    """train.py's job on the tiny Gemma 3 at k = 3: validation scores index 3 and index 6 (the final norm); a crash
    mid-epoch and `ckpt_path=last` give bit-identical adapters (LoRA dropout on) and the same validation metrics."""
    settings = [f"model.name_or_path={family_dirs('gemma3')}", "model.target_layer=3", "trainer.max_steps=6",
                "trainer.max_epochs=-1", "callbacks.every_n_train_steps=1", "lora.dropout=0.1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = train_job(train_cfg(*settings, out=straight))
    with pytest.raises(SimulatedCrash):
        train_job(train_cfg(*settings, out=resumed), extra_callbacks=[CrashAt(2)])
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    second = train_job(train_cfg(*settings, "ckpt_path=last", out=resumed))
    assert first["global_step"] == second["global_step"] == 6
    val = sorted(k for k in first["metrics"] if k.startswith("val/"))
    assert {"val/loss", "val/cosine@3", "val/mrr@3", "val/margin@6", "val/mrr@6"} <= set(val)
    assert all(torch.isfinite(torch.tensor(first["metrics"][k])) for k in val)
    assert val == sorted(k for k in second["metrics"] if k.startswith("val/"))
    torch.testing.assert_close(torch.tensor([second["metrics"][k] for k in val]),
                               torch.tensor([first["metrics"][k] for k in val]), rtol=0, atol=1e-6)
    a, b = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (straight, resumed))
    assert a.keys() == b.keys() and {block_number(n) for n in a} == {1, 2, 3}
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    sidecar = json.loads((straight / "adapter" / "tli_adapter.json").read_text())
    assert sidecar["base_model"] == str(family_dirs("gemma3")) and sidecar["target_layer"] == 3


def _run_outputs(run_dir: Path) -> tuple[dict, dict, dict]:
    """(train/loss by step, adapter tensors, metrics.json) of a finished run."""
    import csv

    with (run_dir / "csv" / "metrics.csv").open() as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]}
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    return losses, adapter, json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_gemma3_ddp_two_processes_match_one_process(family_dirs, small_lexicons, tmp_path):
    """`python train.py trainer=ddp` with 2 gloo processes x 4 pairs and loss.gather=true equals 1 process x 8 pairs
    (the same job in this process) on the tiny Gemma 3: the loss of each of 3 steps, the adapter, and the validation
    metrics after them (every process scores the whole validation set)."""
    settings = [f"model.name_or_path={family_dirs('gemma3')}", "model.target_layer=3",
                f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}",
                FAST_CPU, "trainer.limit_train_batches=3", "logger=csv", "lora.r=4", "lora.dropout=0",
                "loss.gather=true", "optim.lr=5e-3", "optim.warmup_steps=0", "optim.scheduler=constant"]
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    train_job(compose("train", [*settings, f"paths.output_dir={single_dir}", "data.batch_size=8"]))
    cmd = [sys.executable, str(ROOT / "train.py"), "model=tiny", "data=sw_en",
           *settings, f"hydra.run.dir={ddp_dir}", "trainer=ddp",
           "trainer.devices=2", "data.batch_size=4"]
    res = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "All distributed processes registered. Starting with 2 processes" in res.stdout + res.stderr
    (single_loss, single, one), (ddp_loss, ddp, two) = _run_outputs(single_dir), _run_outputs(ddp_dir)
    assert sorted(single_loss) == sorted(ddp_loss) == [0, 1, 2]
    torch.testing.assert_close(torch.tensor([ddp_loss[i] for i in range(3)]),
                               torch.tensor([single_loss[i] for i in range(3)]), rtol=1e-5, atol=0)
    assert single.keys() == ddp.keys()
    for name in single:
        assert single[name].abs().max() > 1e-2, name  # the adapters moved far beyond the tolerance
        # Adam normalises every element's step, so where a gradient is near zero (lora_A, just after lora_B left
        # zero) the rounding of DDP's gradient average is amplified: one element of 512 differed by 6e-5 here, 1% of
        # one step at lr 5e-3; all others by < 1e-6
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-4)
    val = sorted(k for k in one["metrics"] if k.startswith("val/"))
    assert {"val/mrr@3", "val/mrr@6"} <= set(val) and val == sorted(k for k in two["metrics"] if k.startswith("val/"))
    torch.testing.assert_close(torch.tensor([two["metrics"][k] for k in val]),
                               torch.tensor([one["metrics"][k] for k in val]), rtol=0, atol=1e-5)


# ---- the real Gemma 3 270M ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_gemma(gemma3_270m):
    """A TLIModule at k = 6 on the real Gemma 3 270M in NF4 (loaded once for these tests), LoRA B moved off zero, its
    tokenizer, and four real Korean-English pairs from the bundled lexicon (words, batch)."""
    from tli.data.lexicon import bundled

    module = make_module(gemma3_270m, 6)
    randomise_lora_b(module)
    tok = module_tokenizer(module)
    pairs = json.loads(bundled("ko_en/train.json").read_text(encoding="utf-8"))[:4]
    words = [p["korean"] for p in pairs] + [p["english"] for p in pairs]
    return SimpleNamespace(module=module, tok=tok, words=words, batch=pair_batch(tok, words))


@pytest.mark.slow
def test_real_gemma3_hidden_states_in_nf4(real_gemma):
    """19 states from the full model, the first 7 of them inside truncated(model, 6); index 0 is the embedding row
    times sqrt(640) (Gemma's scaling); the blocks are 4-bit."""
    import bitsandbytes as bnb

    model, words = real_gemma.module.backbone, real_gemma.batch["words"]
    decoder = decoder_of(model)
    assert type(decoder).__name__ == "Gemma3TextModel" and real_gemma.module.n_layers == 18
    assert isinstance(decoder.layers[0].mlp.down_proj, bnb.nn.Linear4bit)
    with torch.no_grad():
        states = hidden_states(model, words)
        with truncated(model, 6):
            short = hidden_states(model, words)
    assert len(states) == 19 and len(short) == 7
    table = decoder.embed_tokens.weight  # (262144, 640), tied to the output head
    torch.testing.assert_close(states[0], F.embedding(words["input_ids"], table) * 640 ** 0.5)
    for i in range(7):
        torch.testing.assert_close(short[i], states[i], msg=f"index {i}")


@pytest.mark.slow
def test_real_gemma3_truncated_step_equals_full_step(real_gemma):
    """Loss and all 24 LoRA gradients of one step at k = 6 (blocks 1..6: five sliding-window, one global) equal
    the full 18-block forward's; block 7 never runs."""
    module = real_gemma.module
    calls = []
    hook = decoder_of(module.backbone).layers[6].register_forward_hook(lambda *a: calls.append(1))  # block 7
    results = {}
    try:
        for truncate in (True, False):
            module.options.truncate = truncate
            calls.clear()
            results[truncate] = (*step(module, real_gemma.batch), len(calls))
    finally:
        hook.remove()
        module.options.truncate = True
    (t_loss, t_grads, t_calls), (f_loss, f_grads, f_calls) = results[True], results[False]
    assert (t_calls, f_calls) == (0, 1)
    torch.testing.assert_close(t_loss, f_loss)
    assert len(t_grads) == 2 * 2 * 6 and reached(t_grads) == t_grads.keys()
    for n, g in t_grads.items():
        torch.testing.assert_close(g, f_grads[n], msg=n)


@pytest.mark.slow
def test_real_gemma3_pooled_vectors_match_plain_transformers_at_any_batch_size(real_gemma):
    """Mean-pooled vectors at all 19 indices: the same for batches of 1, 3 and 8, padded right or left, and equal to
    the plain transformers computation word by word."""
    model, tok, words = real_gemma.module.backbone, real_gemma.tok, real_gemma.words
    expected = reference_vectors(model, tok, words, "{word}", "mean")
    for batch_size, side in ((1, "right"), (3, "right"), (8, "left"), (8, "right")):
        got = embed_words(model, tok, words, batch_size=batch_size, padding_side=side)
        torch.testing.assert_close(got.vectors, expected, rtol=1e-4, atol=1e-5, msg=f"batch {batch_size}, {side}")
