import shutil

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from tli.errors import ConfigError, ModelError
from tli.model.loading import ModelSpec, check_layer, find_decoder_layers, load_config, load_model


def test_nf4_linear_layers_are_bitsandbytes_4bit(tiny_nf4):
    model, tok = tiny_nf4
    name, layers = find_decoder_layers(model)
    assert name == "model.layers" and len(layers) == 32
    q = layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.quant_state.quant_type == "nf4"
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)  # the head stays unquantised, as in HF defaults
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("quantization", ["fp4", "int8", "none"])
def test_other_quantizations(tiny_spec, quantization):
    spec = ModelSpec(name_or_path=tiny_spec.name_or_path, quantization=quantization)
    model, _ = load_model(spec, device="cpu", num_layers_kept=1)
    q = model.model.layers[0].self_attn.q_proj
    expected = {"fp4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt, "none": torch.nn.Linear}[quantization]
    assert type(q) is expected
    if quantization == "fp4":
        assert q.weight.quant_state.quant_type == "fp4"


def test_truncated_load_matches_full_model(tiny_spec, tiny_nf4):
    full, tok = tiny_nf4
    short, _ = load_model(tiny_spec, device="cpu", num_layers_kept=3)
    assert len(short.model.layers) == 3
    batch = tok(["maji", "kitabu cha"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = full.model(**batch, output_hidden_states=True).hidden_states
        b = short.model(**batch, output_hidden_states=True).hidden_states
    assert len(a) == 33 and len(b) == 4
    for i in range(4):  # index 3 of the truncated model is the raw block-3 output, as in the full model
        torch.testing.assert_close(a[i], b[i])


def test_missing_and_unexpected_weights_are_errors(tmp_path, tiny_dir):
    for label, edit in [
        ("missing", lambda sd: sd.pop("lm_head.weight")),
        ("missing", lambda sd: sd.pop("model.layers.7.mlp.up_proj.weight")),
        ("unexpected", lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(2))),
    ]:
        broken = tmp_path / f"broken-{label}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_dir, broken)
        sd = load_file(broken / "model.safetensors")
        edit(sd)
        save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ModelError, match=label) as err:
            load_model(ModelSpec(name_or_path=str(broken), quantization="none"), device="cpu")
        assert str(broken) in str(err.value)


def test_bad_model_paths_and_ids(tmp_path):
    with pytest.raises(ModelError, match="model.name_or_path.*no such directory"):
        load_config(ModelSpec(name_or_path=str(tmp_path / "nope")))
    with pytest.raises(ModelError, match="model.name_or_path='nobody-xyz/no-model'.*hub"):
        load_config(ModelSpec(name_or_path="nobody-xyz/no-model"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        load_config(ModelSpec(name_or_path=str(tmp_path / "file.bin")))


def test_bad_settings(tiny_spec, monkeypatch):
    with pytest.raises(ConfigError, match="model.quantization='nf8' is not one of nf4, fp4, int8, none"):
        ModelSpec(quantization="nf8")
    with pytest.raises(ConfigError, match="model.dtype"):
        ModelSpec(dtype="float8")
    _, config = load_config(tiny_spec)
    assert check_layer(config, 32) == 32
    for bad in (0, 33, -1):
        with pytest.raises(ConfigError, match=r"model.target_layer=.* outside this model's range 1..32"):
            check_layer(config, bad)
    # bitsandbytes absent (simulated: find_spec says it is not installed)
    import tli.model.loading

    real = tli.model.loading.importlib.util.find_spec
    monkeypatch.setattr(
        tli.model.loading.importlib.util, "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(ModelError, match="model.quantization='nf4' needs bitsandbytes"):
        load_model(tiny_spec, device="cpu")


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma"])
def test_other_llama_family_models_load_and_expose_blocks(tmp_path, tiny_dir, family):
    """Any HF causal LM directory works: build a tiny random model of another family and load it in NF4."""
    base = AutoConfig.from_pretrained(tiny_dir)
    config = AutoConfig.for_model(
        family, vocab_size=base.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, bos_token_id=base.bos_token_id,
        eos_token_id=base.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    out = tmp_path / family
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / f, out / f)
    model, tok = load_model(ModelSpec(name_or_path=str(out)), device="cpu")
    name, layers = find_decoder_layers(model)
    assert len(layers) == 4 and isinstance(layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert tok.pad_token is not None


def test_a_multimodal_model_is_refused_with_a_clear_message(tmp_path):
    config = AutoConfig.for_model("gemma3", text_config={"hidden_size": 64, "num_hidden_layers": 2,
                                                         "intermediate_size": 128, "num_attention_heads": 2,
                                                         "num_key_value_heads": 1, "head_dim": 32},
                                  vision_config={"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 128,
                                                 "num_attention_heads": 2})
    config.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=r"is a multimodal model \(Gemma3Config\): tli works on text-only"):
        load_config(ModelSpec(name_or_path=str(tmp_path)))
