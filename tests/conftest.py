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


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small_lexicons(tmp_path_factory):
    """(train, control) files: the first 48 training and 12 control pairs of the bundled Swahili-English lexicon."""
    import json

    from tli.lexicon import bundled

    out = tmp_path_factory.mktemp("lexicons")
    files = []
    for name, n in (("train", 48), ("control", 12)):
        pairs = json.loads(bundled(f"sw_en/{name}.json").read_text(encoding="utf-8"))[:n]
        path = out / f"{name}.json"
        path.write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
        files.append(path)
    return tuple(files)


def compose(config_name: str, overrides: list[str]) -> dict:
    """Compose a real entry config (conf/<config_name>.yaml) with overrides, resolved to plain containers."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture
def train_cfg(tmp_path, tiny_dir, small_lexicons):
    """Compose conf/train.yaml for a fast CPU run on the tiny model and small lexicons, outputs in tmp_path."""

    def make(*overrides: str, out=None) -> dict:
        base = [
            f"paths.output_dir={out or tmp_path}", f"model.name_or_path={tiny_dir}",
            f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}",
            "data.batch_size=8", "data.val_fraction=0.25", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
            "trainer.log_every_n_steps=1", "trainer.accelerator=cpu", "callbacks.rich_progress_bar=false",
            "callbacks.progress_bar=false", "logger=none", "optim.warmup_steps=2", "lora.r=4",
        ]
        return compose("train", base + list(overrides))

    return make
