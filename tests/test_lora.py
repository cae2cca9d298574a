import bitsandbytes as bnb
import pytest
import torch

from tli.errors import ConfigError, ModelError
from tli.model.embed import collate, hidden_states, pool, tokenize_words
from tli.model.loading import load_model
from tli.model.lora import LoraConfig, apply_lora, lora_parameters


@pytest.fixture
def nf4_lora(tiny_spec):
    model, tok = load_model(tiny_spec, device="cpu")
    return apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), target_layer=3), tok


def _block(name: str) -> int:
    return int(name.split(".layers.")[1].split(".")[0]) + 1  # 1-based block number


def test_only_lora_on_blocks_up_to_k_is_trainable(nf4_lora):
    model, _ = nf4_lora
    trainable = lora_parameters(model)
    assert trainable and all("lora_" in n for n in trainable)
    assert {_block(n) for n in trainable} == {1, 2, 3}  # blocks 1..k for target layer k = 3
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in n for n in frozen) and any("lm_head" in n for n in frozen)
    base_q = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base_q, bnb.nn.Linear4bit) and base_q.weight.quant_state.quant_type == "nf4"


def test_gradients_reach_every_adapter_after_a_validation_pass(nf4_lora):
    """Guards the bnb CPU pitfall: an eval forward without grad must not stop later gradients."""
    model, tok = nf4_lora
    batch = collate(tokenize_words(tok, ["maji", "water", "kitabu", "book"]), tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        hidden_states(model, batch)  # what Lightning's sanity-check validation does
    model.train()
    params = lora_parameters(model)
    with torch.no_grad():  # LoRA B starts at zero, so A would get no gradient: move B off zero first
        for n, p in params.items():
            if "lora_B" in n:
                p.normal_(std=0.1)
    v = pool(hidden_states(model, batch)[3], batch, "mean")  # (4, D) at layer k = 3
    loss = -(v[0] @ v[1] + v[2] @ v[3])
    loss.backward()
    for n, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {n}"


def test_explicit_blocks_and_errors(tiny_spec):
    assert LoraConfig(blocks="all").block_numbers(2, 32) == list(range(1, 33))
    assert LoraConfig(blocks=[3, 1]).block_numbers(2, 32) == [1, 3]
    with pytest.raises(ConfigError, match=r"lora.blocks=\[0, 40\].*1..32"):
        LoraConfig(blocks=[0, 40]).block_numbers(2, 32)
    with pytest.raises(ConfigError, match="lora.r=0 must be a positive integer"):
        LoraConfig(r=0)
    with pytest.raises(ConfigError, match="lora.dropout"):
        LoraConfig(dropout=1.5)
    model, _ = load_model(tiny_spec, device="cpu", num_layers_kept=2)
    with pytest.raises(ModelError, match=r"lora.target_modules=.*\['qproj'\] not found.*q_proj"):
        apply_lora(model, LoraConfig(target_modules=["qproj"]), target_layer=2)
