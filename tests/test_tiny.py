import json
import subprocess
import sys
from pathlib import Path

import pytest

from tli.tiny import BOS, ensure_tiny_model

# Loads the written directory with plain transformers in a fresh interpreter that never imports tli.
LOAD_WITHOUT_TLI = r"""
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True)
tok = AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)
ids = tok("maji")["input_ids"]
print(json.dumps({
    "tli_imported": any(m == "tli" or m.startswith("tli.") for m in sys.modules),
    "arch": type(model).__name__, "blocks": len(model.model.layers),
    "heads": model.config.num_attention_heads, "kv_heads": model.config.num_key_value_heads,
    "tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
    "pad": tok.pad_token, "first_id": ids[0], "bos_id": tok.bos_token_id,
}))
"""


@pytest.mark.slow
def test_cli_writes_a_model_plain_transformers_loads(tmp_path, tiny_dir):
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "tli.tiny", str(out)], check=True, capture_output=True)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    res = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_TLI, str(out)], check=True, capture_output=True, text=True)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["tli_imported"] is False
    assert info["arch"] == "LlamaForCausalLM" and info["blocks"] == 32
    assert info["heads"] == 4 * info["kv_heads"]  # grouped-query attention, 4 query heads per KV head
    assert info["tied"] is False
    assert info["pad"] is None  # like Llama 3: the loader has to set one
    assert info["first_id"] == info["bos_id"]  # BOS prepended by default
    # Deterministic: the CLI's files equal, byte for byte, the ones the session fixture built in-process.
    for name in names - {"TLI_TINY.json"}:
        assert (out / name).read_bytes() == (Path(tiny_dir) / name).read_bytes(), name


def test_tokenizer_is_trained_on_the_lexicons(tiny_nf4):
    _, tok = tiny_nf4
    assert tok.convert_ids_to_tokens(tok("maji")["input_ids"])[0] == BOS
    for word in ["maji", "water", "물", "먹다", "kitabu"]:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == word
        assert len(ids) <= len(word.encode("utf-8"))  # merges learned: fewer tokens than bytes
    lengths = {len(tok(w, add_special_tokens=False)["input_ids"]) for w in ["maji", "kuandika", "mwalimu", "hospitali"]}
    assert max(lengths) > 1  # some words split into several tokens: pooling has work to do


def test_cache_builds_once(tmp_path):
    first = ensure_tiny_model(tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no leftover build directories
