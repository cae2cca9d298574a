"""Plain helpers the tests import (`from helpers import compose, ...`); the fixtures live in conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]

# The entry configs default to Gemma 3 270M and Korean-English; tests run on the tiny model and Swahili-English files
# unless they say otherwise (subprocess runs of the entry points pass `model=tiny data=sw_en` themselves).
TEST_DEFAULTS = ("model=tiny", "data=sw_en")

# The fast CPU run every training test starts from (conf/debug/test.yaml: CPU, one epoch, no sanity validation, a
# log line every step, no progress bars, no logger). A test's own `debug=X` is added to it: `debug=[test,X]`.
FAST_CPU = "debug=test"
# What debug=test turns off for speed, for the tests of the harm budget: validation text scored, the default budget.
HARM_TEXT = ("objective.score_text=true", "objective.max_harm=0.02")


def fast_cpu(overrides) -> list[str]:
    """`overrides` on top of conf/debug/test.yaml (another debug overlay the test names is applied after it)."""
    overrides = list(overrides)
    own = [o for o in overrides if o.startswith("debug=")]
    rest = [o for o in overrides if not o.startswith("debug=")]
    return [f"debug=[test,{own[-1].split('=', 1)[1]}]" if own else FAST_CPU, *rest]


def job_overrides(out, model_dir, lexicons) -> list[str]:
    """Outputs in `out`, the model in `model_dir`, the (train, control) lexicon files: any entry config."""
    return [f"paths.output_dir={out}", f"model.name_or_path={model_dir}", f"data.train_file={lexicons[0]}",
            f"data.control_file={lexicons[1]}"]


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


def dup_ids(n=120, n_src=15, n_tgt=20, seed=1):
    """Source and target ids with many duplicates (~8 pairs per source string, ~6 per target string), so conflicts
    make batches short and plans uneven."""
    import random

    rng = random.Random(seed)
    return [rng.randrange(n_src) for _ in range(n)], [rng.randrange(n_tgt) for _ in range(n)]


class SimulatedCrash(Exception):
    pass


class CrashAt(Callback):
    """Simulates a crash at the start of step `step` (after the previous step's checkpoint was written)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise SimulatedCrash


def RunIf(min_gpus: int = 0):  # noqa: N802 (a decorator, named like lightning-hydra-template's)
    """A `pytest.mark.skipif` for what the test needs: `@RunIf(min_gpus=1)`."""
    reasons = []
    if min_gpus and torch.cuda.device_count() < min_gpus:
        reasons.append(f"needs {min_gpus} CUDA GPU{'s' if min_gpus > 1 else ''}")
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "runs here")
