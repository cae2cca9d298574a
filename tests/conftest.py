"""Shared fixtures: everything offline, on the embedded tiny model, built once per session."""

import os

# Must precede any huggingface_hub import: the flag is read once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny model directory, built once per test session into a temporary cache."""
    from tli.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tli-cache"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_dir):
    from tli.modeling import ModelSpec

    return ModelSpec(name_or_path=str(tiny_dir))


@pytest.fixture(scope="session")
def tiny_nf4(tiny_spec):
    """(model, tokenizer) in 4-bit NF4. Shared: tests must not modify it (LoRA tests load their own)."""
    from tli.modeling import load_model

    return load_model(tiny_spec, device="cpu")
