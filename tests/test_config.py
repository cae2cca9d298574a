"""The typed config schema: every entry config and preset composes into a TLIConfig; unknown keys, wrong types and
out-of-range values fail before any weights load; entry points print a tli error as one line."""

import os
import subprocess
import sys

import pytest
from helpers import ROOT, compose, compose_raw
from hydra.errors import ConfigCompositionException

from tli.config import ModelConfig, TLIConfig
from tli.data.config import DataConfig
from tli.errors import ConfigError, TLIError
from tli.jobs.train import validate
from tli.model.embed import Probe
from tli.model.loading import ModelSpec
from tli.training.losses import LOSSES, ContrastiveLoss, build_loss
from tli.training.objective import AlignOptions

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("entry", ["train", "scan", "evaluate"])
@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_entry_and_preset_composes_into_the_typed_schema(tmp_path, entry, experiment):
    overrides = [f"paths.output_dir={tmp_path}"] + ([f"experiment={experiment}"] if experiment else [])
    cfg = compose(entry, overrides)
    assert isinstance(cfg, TLIConfig) and isinstance(cfg.model, ModelConfig) and isinstance(cfg.data, DataConfig)
    assert isinstance(cfg.model.loading(), ModelSpec) and isinstance(cfg.model.probe(), Probe)
    assert cfg.model.cache_dir == cfg.paths.cache_dir  # interpolations are resolved
    if experiment == "paper":
        assert cfg.model.pooling == "mean_all" and cfg.loss["name"] == "triplet" and cfg.optim.warmup_steps == 50


@pytest.mark.parametrize("override,key,hint", [
    ("+model.target_laye=4", "model.target_laye", "did you mean model.target_layer?"),
    ("+optim.learning_rate=1", "optim.learning_rate", "valid keys here:"),
    ("+data.bach_size=4", "data.bach_size", "did you mean data.batch_size?"),
    ("+data.audit.leaked_pairs=drop", "data.audit.leaked_pairs", "did you mean data.audit.leaked_pair?"),
    ("+seeed=3", "seeed", "did you mean seed?"),
])
def test_unknown_keys_are_errors_even_with_plus(tmp_path, override, key, hint):
    with pytest.raises(ConfigError, match=f"unknown config key {key}: {hint}"):
        compose("train", [f"paths.output_dir={tmp_path}", override])


def test_wrong_types_fail_at_composition(tmp_path):
    with pytest.raises(ConfigCompositionException, match="target_layer"):
        compose_raw("train", [f"paths.output_dir={tmp_path}", "model.target_layer=abc"])
    with pytest.raises(ConfigCompositionException, match="truncate"):
        compose_raw("train", [f"paths.output_dir={tmp_path}", "train.truncate=maybe"])


@pytest.mark.parametrize("override,message", [
    ("data.src_field=english", r"data.src_field and data.tgt_field are both 'english'"),
    ("optim.warmup_ratio=1.5", r"optim.warmup_ratio=1.5 must be in \[0, 1\)"),
    ("optim.scheduler=steps", r"optim.scheduler='steps' is not one of linear"),
    ("objective.metric=cosine", r"objective.metric='cosine' is not a metric|descriptive"),
    ("objective.keep=first", r"objective.keep='first' must be last or best"),
    ("metrics.pool_size=1", r"metrics.pool_size=1 must be >= 2"),
    ("logger.offline=sometimes", r"logger.offline='sometimes' must be auto, true or false"),
])
def test_out_of_range_values_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        compose("train", [f"paths.output_dir={tmp_path}", override])


def test_settings_needing_the_model_are_checked_before_its_weights(tmp_path, tiny_dir):
    base = [f"paths.output_dir={tmp_path}", f"model.name_or_path={tiny_dir}"]
    with pytest.raises(ConfigError, match="trainer.max_stepz is not an argument of lightning's Trainer"):
        validate(compose("train", [*base, "+trainer.max_stepz=3"]))
    with pytest.raises(ConfigError, match=r"loss.temperature='warm' must be a float"):
        validate(compose("train", [*base, "loss.temperature=warm"]))
    with pytest.raises(ConfigError, match=r"loss.tempreature is not an option of loss 'infonce'"):
        validate(compose("train", [*base, "+loss.tempreature=0.1"]))
    with pytest.raises(ConfigError, match=r"objective.layer=5: validation reports the target index 2 and the last"):
        validate(compose("train", [*base, "objective.layer=5"]))


def test_a_loss_is_one_class_one_registry_entry():
    class Cosine(ContrastiveLoss):
        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale

        def forward(self, src, tgt, src_ids, tgt_ids):
            return -self.scale * (src * tgt).sum(-1).mean()

    LOSSES["cosine"] = Cosine
    try:
        loss = build_loss({"name": "cosine", "scale": 2})
        assert isinstance(loss, Cosine) and loss.scale == 2 and not loss.gather and loss.logged() == {}
        # the options every loss shares (anchor, centring, weights) are recorded with the loss's own
        assert loss.settings == {"name": "cosine", "scale": 2, **AlignOptions().settings()}
        assert loss.options == AlignOptions()
        with pytest.raises(ConfigError, match="loss.scale=True must be a float"):
            build_loss({"name": "cosine", "scale": True})
    finally:
        del LOSSES["cosine"]
    assert set(build_loss({"name": "infonce", "learnable_temperature": True}).logged()) == {"temperature"}


@pytest.mark.slow
def test_entry_points_print_one_line_for_a_tli_error(tmp_path, tiny_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for script, override, needle in (
        ("train.py", "model.target_layer=99", "error: model.target_layer=99 is outside this model's range 1..32"),
        ("scan.py", "+scan.layer=3", "error: unknown config key scan.layer: did you mean scan.layers?"),
        ("evaluate.py", "adapter=/nope", "error: adapter='/nope': no such directory"),
    ):
        res = subprocess.run([sys.executable, str(ROOT / script), "model=tiny", "data=sw_en",
                              f"model.name_or_path={tiny_dir}",
                              f"hydra.run.dir={tmp_path / script}", override], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr[-2000:]
        assert needle in res.stderr and "Traceback" not in res.stderr + res.stdout, res.stderr[-2000:]


def test_scan_and_evaluate_never_import_lightning():
    # Lightning costs about 3 s of every entry point's start; only training needs it (tli.data.splits,
    # tli.training.run_config hold what the others share with it).
    code = "import sys, tli.jobs.scan, tli.jobs.evaluate; print('lightning' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stdout + res.stderr[-2000:]


def test_every_tli_error_shares_one_base():
    import tli.errors as errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) >= 6 and all(issubclass(c, TLIError) for c in classes)


def test_the_evaluate_command_keeps_the_overrides_evaluate_reads():
    from tli.config import overrides_for, read_by

    assert {"model", "data", "metrics", "eval", "seed"} <= read_by("evaluate")
    assert not {"lora", "loss", "optim", "trainer", "train", "objective"} & read_by("evaluate")
    run = ["experiment=gemma_ko", "model.target_layer=12", "+data.val_fraction=0.3", "lora.r=8", "loss=triplet",
           "loss.temperature=0.05", "trainer.max_epochs=3", "hydra.run.dir=x", "multiseed=default", "seed=2",
           "optim.lr=1e-3", "paths.output_dir=y", "logger=wandb", "eval.translation=true", "~callbacks.lr_monitor"]
    assert overrides_for("evaluate", run) == ["experiment=gemma_ko", "model.target_layer=12", "+data.val_fraction=0.3",
                                              "seed=2", "eval.translation=true"]
