import json

import pytest

from tli.model.loading import ModelSpec, load_model
from tli.model.memory import main, parameter_counts, weight_bytes


def test_parameter_counts_and_nf4_footprint_match_the_loaded_tiny_model(tiny_dir, tiny_nf4):
    config = json.loads((tiny_dir / "config.json").read_text())
    full, _ = load_model(ModelSpec(name_or_path=str(tiny_dir), quantization="none"), device="cpu")
    linear = sum(p.numel() for n, p in full.named_parameters() if ".layers." in n and n.endswith("proj.weight"))
    total = sum(p.numel() for p in full.parameters())
    assert parameter_counts(config) == {"linear": linear, "other": total - linear}
    # transformers' footprint leaves out the 4-bit absmax constants, which the estimate includes (~3% here).
    footprint = tiny_nf4[0].get_memory_footprint()
    assert weight_bytes(config, "nf4", other_bytes=4) == pytest.approx(footprint, rel=0.05)
    assert weight_bytes(config, "nf4", other_bytes=4) > footprint


def test_cli_prints_the_estimate(tiny_dir, capsys):
    main([str(tiny_dir), "--quantization", "nf4"])
    out = capsys.readouterr().out
    assert "weights in nf4" in out and "GiB" in out
