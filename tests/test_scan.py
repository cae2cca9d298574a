"""The layer-wise scan end to end (`tli.jobs.scan.scan_job` on Hydra-composed configs, and `python scan.py`).

Scans run on the tiny model with small lexicons (40 training and 10 control pairs from the bundled files). Most use
`model.quantization=none`: the fp32 forward pass on CPU is several times faster than NF4's, and the scan code does
not depend on the quantization (the CLI test runs the default NF4).
"""

import csv
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, compose

from tli.errors import AdapterError, ConfigError, DataError
from tli.eval.metrics import alignment
from tli.eval.pairs import GoldPairs
from tli.jobs.scan import scan_job
from tli.model.adapter import save_adapter
from tli.model.embed import Probe, embed_words
from tli.model.loading import ModelSpec, load_model
from tli.model.lora import LoraConfig, apply_lora

LEXICONS = ROOT / "tli" / "lexicons" / "sw_en"
N_LAYERS = 32  # the tiny model's decoder blocks: hidden-state indices 0..32
SUBSET = [0, 1, 2, 3, 31, 32]
METRIC_COLUMNS = ["cosine", "cosine_ci_low", "cosine_ci_high", "baseline_cosine", "margin", "margin_z", "p_at_1", "mrr",
                  "s2t_p_at_1", "s2t_p_at_5", "s2t_mrr", "t2s_p_at_1", "t2s_p_at_5", "t2s_mrr", "csls_p_at_1",
                  "pool_p_at_1", "pool_mrr", "bos_norm_ratio"]
COUNT_COLUMNS = ["layer", "n_pairs", "n_sources", "n_targets", "retrieval_pool", "pool_size"]
REQUIRED_COLUMNS = ["model", "split", "vectors", *COUNT_COLUMNS, *METRIC_COLUMNS]


def _q(value) -> str:
    """A Hydra override value, quoted (tmp paths may hold characters the override grammar reserves)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pairs(file: Path, n: int, skip: set[str] = frozenset()) -> list[dict]:
    """The first n pairs whose words are all distinct (so unique words == pairs) and not in `skip`."""
    seen, out = set(skip), []
    for rec in json.loads(file.read_text(encoding="utf-8")):
        words = {rec["swahili"].casefold(), rec["english"].casefold()}
        if len(words) == 2 and not words & seen and " " not in rec["swahili"] + rec["english"]:
            seen |= words
            out.append({"swahili": rec["swahili"], "english": rec["english"]})
        if len(out) == n:
            return out
    raise AssertionError(f"{file} has fewer than {n} usable pairs")


@pytest.fixture(scope="module")
def lex(tmp_path_factory):
    """Small lexicon files: {"train": path, "control": path, "pairs": {split: [(src, tgt)]}}."""
    d = tmp_path_factory.mktemp("lex")
    train = _pairs(LEXICONS / "train.json", 40)
    control = _pairs(LEXICONS / "control.json", 10, skip={w.casefold() for p in train for w in p.values()})
    out = {"pairs": {}}
    for split, recs in (("train", train), ("control", control)):
        (d / f"{split}.json").write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
        out[split] = d / f"{split}.json"
        out["pairs"][split] = [(r["swahili"], r["english"]) for r in recs]
    return out


def _cfg(out_dir, tiny_dir, lex, *overrides):
    base = [f"paths.output_dir={_q(out_dir)}", f"model.name_or_path={_q(tiny_dir)}", "model.quantization=none",
            f"data.train_file={_q(lex['train'])}", f"data.control_file={_q(lex['control'])}", "scan.n_boot=200"]
    return compose("scan", base + list(overrides))


def _scan(out_dir, tiny_dir, lex, *overrides) -> tuple[dict, Path]:
    """Run a scan; returns (summary, scan output directory)."""
    summary = scan_job(_cfg(out_dir, tiny_dir, lex, *overrides))
    return summary, Path(out_dir) / "scan"


def _rows(scan_dir: Path) -> list[dict]:
    """layers.csv with numbers parsed (csv writes floats with repr, so they round-trip exactly)."""
    with open(scan_dir / "layers.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for c in COUNT_COLUMNS:
            r[c] = int(r[c])
        for c in METRIC_COLUMNS:
            r[c] = float(r[c])
    return rows


def _row(rows, split, layer, model="base", vectors="raw") -> dict:
    (row,) = [r for r in rows if (r["model"], r["split"], r["layer"], r["vectors"]) == (model, split, layer, vectors)]
    return row


@pytest.fixture(scope="module")
def full(tmp_path_factory, tiny_dir, lex):
    """One scan over every hidden-state index, mean pooling: (summary, scan dir, rows)."""
    summary, scan_dir = _scan(tmp_path_factory.mktemp("full"), tiny_dir, lex)
    return summary, scan_dir, _rows(scan_dir)


@pytest.fixture(scope="module")
def subset(tmp_path_factory, tiny_dir, lex):
    """A scan of SUBSET, given unsorted and with a duplicate: (summary, scan dir, rows)."""
    summary, scan_dir = _scan(tmp_path_factory.mktemp("subset"), tiny_dir, lex, "scan.layers=[32,3,0,31,2,1,3]")
    return summary, scan_dir, _rows(scan_dir)


def _check_table(rows, layers, lex, models=("base",)):
    assert set(REQUIRED_COLUMNS) <= set(rows[0])
    keys = [(r["model"], r["split"], r["vectors"], r["layer"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(models) * 2 * 2 * len(layers)  # one row per model, split, vectors, layer
    assert set(keys) == {(m, s, v, j) for m in models for s in ("train", "control") for v in ("raw", "centred")
                         for j in layers}
    for r in rows:
        assert r["n_pairs"] == r["retrieval_pool"] == len(lex["pairs"][r["split"]])
        assert r["pool_size"] == min(20, r["n_pairs"])
        assert all(math.isfinite(r[c]) for c in METRIC_COLUMNS), r
        assert r["margin"] == pytest.approx(r["cosine"] - r["baseline_cosine"], abs=1e-6)
        assert r["cosine_ci_low"] <= r["cosine"] <= r["cosine_ci_high"]
        assert r["p_at_1"] == pytest.approx((r["s2t_p_at_1"] + r["t2s_p_at_1"]) / 2)
        for c in ("p_at_1", "mrr", "s2t_p_at_5", "t2s_p_at_5", "csls_p_at_1", "pool_p_at_1", "pool_mrr"):
            assert 0.0 <= r[c] <= 1.0
        assert r["s2t_p_at_1"] <= r["s2t_mrr"] and r["s2t_p_at_1"] <= r["s2t_p_at_5"]


def test_csv_has_one_row_per_split_and_every_layer(full, lex):
    _, _, rows = full
    _check_table(rows, range(N_LAYERS + 1), lex)
    # the tiny model's BOS embedding is ~40x an ordinary token's: the diagnostic must see it at index 0
    assert _row(rows, "train", 0)["bos_norm_ratio"] > 10


def test_csv_has_one_row_per_split_and_requested_layer(subset, full, lex):
    summary, _, rows = subset
    _check_table(rows, SUBSET, lex)
    assert summary["settings"]["layers"] == SUBSET
    # a subset scan gives exactly the numbers of the full scan at those indices
    for r in rows:
        assert r == _row(full[2], r["split"], r["layer"], vectors=r["vectors"])


def test_identical_embeddings_retrieve_perfectly(tmp_path, tiny_dir, lex):
    # direct: targets are the sources themselves (distinct random vectors)
    emb = torch.randn(30, 64, generator=torch.Generator().manual_seed(0))
    words = [f"w{i}" for i in range(30)]
    report = alignment(emb, emb.clone(), GoldPairs.from_pairs(words, words))
    for key in ("cosine", "p_at_1", "mrr", "s2t_p_at_1", "t2s_p_at_1", "s2t_p_at_5", "t2s_p_at_5", "csls_p_at_1",
                "pool_p_at_1"):
        assert report[key] == pytest.approx(1.0, abs=1e-6), key
    # the whole scan path: a lexicon mapping each word to itself embeds both sides identically
    files = {}
    for split in ("train", "control"):
        recs = [{"swahili": s, "english": s} for s, _ in lex["pairs"][split]]
        files[split] = tmp_path / f"same_{split}.json"
        files[split].write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    _, scan_dir = _scan(tmp_path / "out", tiny_dir, {**lex, **files}, f"scan.layers=[{','.join(map(str, SUBSET))}]")
    rows = [r for r in _rows(scan_dir) if r["vectors"] == "raw"]
    assert len(rows) == 2 * len(SUBSET)
    for r in rows:
        for key in ("cosine", "p_at_1", "mrr", "s2t_p_at_5", "t2s_p_at_5", "csls_p_at_1", "pool_p_at_1"):
            assert r[key] == pytest.approx(1.0, abs=1e-6), (r["split"], r["layer"], key)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_metrics(src: np.ndarray, tgt: np.ndarray) -> dict:
    """Reference metrics for pair-aligned, one-to-one (N, D) embeddings: pair i is (src[i], tgt[i])."""
    src, tgt = _unit(src), _unit(tgt)
    sim = src @ tgt.T  # (N, N)
    n = len(sim)
    off = ~np.eye(n, dtype=bool)

    def ranks(s):  # rank of the gold item (same index) when row i's candidates are sorted by score
        return np.array([int(np.where(np.argsort(-s[i], kind="stable") == i)[0][0]) + 1 for i in range(n)])

    r_s2t, r_t2s = ranks(sim), ranks(sim.T)
    return {
        "cosine": np.diag(sim).mean(),
        "baseline_cosine": sim[off].mean(),
        "margin_z": (np.diag(sim).mean() - sim[off].mean()) / sim[off].std(),
        "s2t_p_at_1": (r_s2t == 1).mean(), "t2s_p_at_1": (r_t2s == 1).mean(),
        "s2t_p_at_5": (r_s2t <= 5).mean(), "t2s_p_at_5": (r_t2s <= 5).mean(),
        "p_at_1": ((r_s2t == 1).mean() + (r_t2s == 1).mean()) / 2,
        "mrr": ((1 / r_s2t).mean() + (1 / r_t2s).mean()) / 2,
    }


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_metrics_agree_with_independent_numpy(full, tiny_dir, lex):
    _, _, rows = full
    model, tok = load_model(ModelSpec(name_or_path=str(tiny_dir), quantization="none"), device="cpu")
    layers = [0, 1, 16, 32]
    checked = 0
    vectors = {}
    for split, pairs in lex["pairs"].items():
        src = embed_words(model, tok, [s for s, _ in pairs], Probe(), layers=layers, batch_size=7)
        tgt = embed_words(model, tok, [t for _, t in pairs], Probe(), layers=layers, batch_size=3)
        vectors[split] = (src.vectors.double().numpy(), tgt.vectors.double().numpy())
    means = [_unit_rows(v).mean(0) for v in vectors["train"]]  # centring: the training words' mean, per layer
    for split, (src, tgt) in vectors.items():
        for slot, layer in enumerate(layers):
            s, t = src[:, slot], tgt[:, slot]
            centred = (_unit(s) - means[0][slot], _unit(t) - means[1][slot])
            for variant, (a, b) in (("raw", (s, t)), ("centred", centred)):
                ref = _numpy_metrics(a, b)
                row = _row(rows, split, layer, vectors=variant)
                for key, value in ref.items():
                    assert row[key] == pytest.approx(value, abs=1e-5), (split, layer, variant, key)
                assert row["margin"] == pytest.approx(ref["cosine"] - ref["baseline_cosine"], abs=1e-5)
                checked += 1
    assert checked == 2 * 2 * len(layers)
    # the comparison is not vacuous: retrieval is better than chance somewhere but not perfect everywhere
    assert 0 < max(r["p_at_1"] for r in rows) and min(r["p_at_1"] for r in rows) < 1


def _without_timestamps(obj):
    if isinstance(obj, dict):
        return {k: _without_timestamps(v) for k, v in obj.items()
                if not any(t in k.lower() for t in ("time", "date", "started", "finished"))}
    if isinstance(obj, list):
        return [_without_timestamps(v) for v in obj]
    return obj


def test_scan_is_deterministic_for_a_fixed_seed(tmp_path, tiny_dir, lex, subset):
    summary1, dir1, _ = subset
    summary2, dir2 = _scan(tmp_path, tiny_dir, lex, "scan.layers=[32,3,0,31,2,1,3]")
    assert (dir1 / "layers.csv").read_bytes() == (dir2 / "layers.csv").read_bytes()
    assert _without_timestamps(summary1) == _without_timestamps(summary2)
    on_disk = [json.loads((d / "summary.json").read_text(encoding="utf-8")) for d in (dir1, dir2)]
    assert _without_timestamps(on_disk[0]) == _without_timestamps(on_disk[1]) == _without_timestamps(summary2)


def test_bos_inclusive_pooling_raises_the_early_baseline(tmp_path, tiny_dir, lex, full):
    _, scan_dir = _scan(tmp_path, tiny_dir, lex, "model.pooling=mean_all", "scan.layers=[1,2,3]")
    mean_all = _rows(scan_dir)
    for split in ("train", "control"):
        for layer in (1, 2, 3):
            # measured: mean_all 0.994-0.998 (every word is dominated by the huge BOS state), mean 0.39-0.58
            high, low = _row(mean_all, split, layer)["baseline_cosine"], _row(full[2], split, layer)["baseline_cosine"]
            assert high > 0.95 and low < 0.7 and high - low > 0.3, (split, layer, high, low)
            assert abs(_row(mean_all, split, layer)["margin"]) < 0.01  # the raw cosine is nearly all shift
    assert json.loads((scan_dir / "summary.json").read_text(encoding="utf-8"))["settings"]["pooling"] == "mean_all"


def test_summary_recommendation_settings_and_files(full, tiny_dir, lex):
    summary, scan_dir, rows = full
    assert json.loads((scan_dir / "summary.json").read_text(encoding="utf-8")) == summary
    base = summary["base"]
    assert base["criterion"] == "mrr" and base["criterion_split"] == "train" and base["vectors"] == "raw"
    train = [r for r in rows if r["split"] == "train" and r["vectors"] == "raw"]
    trainable = [r for r in train if r["layer"] >= 1]
    best = max(r["mrr"] for r in trainable)
    assert 1 <= base["recommended_layer"] <= N_LAYERS
    assert base["recommended_layer"] == min(r["layer"] for r in trainable if r["mrr"] == best)
    assert base["recommended_value"] == best
    assert f"index {base['recommended_layer']} has the highest retrieval MRR" in base["why"]
    top = max(r["cosine"] for r in train)
    raw = min(r["layer"] for r in train if r["cosine"] == top)
    assert base["raw_cosine_argmax_layer"] == raw and base["raw_cosine_max"] == top
    assert base["baseline_at_raw_argmax"] == _row(rows, "train", raw)["baseline_cosine"]

    settings = summary["settings"]
    assert settings["model"] == str(tiny_dir) and settings["revision"] is None
    assert settings["quantization"] == "none" and settings["pooling"] == "mean"
    assert settings["layers"] == list(range(N_LAYERS + 1))
    for split in ("train", "control"):
        info = settings["lexicons"][split]
        assert info["sha256"] == hashlib.sha256(lex[split].read_bytes()).hexdigest()
        assert Path(info["file"]) == lex[split] and info["pairs"] == len(lex["pairs"][split])
    assert "adapted" not in summary

    png = (scan_dir / "layers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    audit = json.loads((scan_dir / "audit.json").read_text(encoding="utf-8"))
    assert audit
    assert not [p for p in scan_dir.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_criterion_and_seed_options(tmp_path, tiny_dir, lex, full):
    summary, scan_dir = _scan(tmp_path, tiny_dir, lex, "scan.criterion=margin_z", "scan.criterion_split=control",
                              "scan.criterion_centred=true", "scan.layers=[0,1,2,3,4,5,6]", "metrics.seed=1")
    rec = summary["base"]
    control = [r for r in full[2] if r["split"] == "control" and r["vectors"] == "centred" and 1 <= r["layer"] <= 6]
    best = max(r["margin_z"] for r in control)
    assert rec["criterion"] == "margin_z" and rec["criterion_split"] == "control" and rec["vectors"] == "centred"
    assert rec["recommended_layer"] == min(r["layer"] for r in control if r["margin_z"] == best)
    # the seed drives the bootstrap CI and the pools (so the determinism test could fail); the rest does not move
    rows = _rows(scan_dir)
    seed0 = [_row(full[2], r["split"], r["layer"], vectors=r["vectors"]) for r in rows]
    assert [r["cosine"] for r in rows] == [r["cosine"] for r in seed0]
    assert [r["mrr"] for r in rows] == [r["mrr"] for r in seed0]
    ci = [(r["cosine_ci_low"], r["cosine_ci_high"]) for r in rows]
    assert ci != [(r["cosine_ci_low"], r["cosine_ci_high"]) for r in seed0]


@pytest.fixture
def no_weights(monkeypatch):
    """Bad settings must fail before any weights load."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad setting was reported")

    monkeypatch.setattr("tli.jobs.scan.load_model", refuse)


def _tiny_adapter(tiny_dir, out: Path, base_model: str, perturb: bool = False) -> Path:
    model, _ = load_model(ModelSpec(name_or_path=str(tiny_dir), quantization="none"), device="cpu")
    peft_model = apply_lora(model, LoraConfig(r=2), target_layer=2)
    if perturb:  # LoRA B starts at zero (a no-op adapter): make it change the model
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    from tli.model.card import AdapterCard

    card = AdapterCard(base_model=base_model, target_layer=2, pooling="mean", lora={"r": 2})
    return save_adapter(peft_model, out, card)


def test_bad_layers(tmp_path, tiny_dir, lex, no_weights):
    with pytest.raises(ConfigError, match=r"scan.layers=\[0, 40\] is outside this model's range 0\.\.32"):
        _scan(tmp_path, tiny_dir, lex, "scan.layers=[0,40]")
    with pytest.raises(ConfigError, match=r"\[-1\].*0\.\.32"):
        _scan(tmp_path, tiny_dir, lex, "scan.layers=[-1]")
    with pytest.raises(ConfigError, match=r"\[\].*0\.\.32"):
        _scan(tmp_path, tiny_dir, lex, "scan.layers=[]")


def test_empty_lexicon(tmp_path, tiny_dir, lex, no_weights):
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="contains no pairs") as err:
        _scan(tmp_path, tiny_dir, {**lex, "train": empty})
    assert str(empty) in str(err.value)
    with pytest.raises(DataError, match="contains no pairs") as err:
        _scan(tmp_path, tiny_dir, {**lex, "control": empty})
    assert str(empty) in str(err.value)


def test_adapter_for_another_base_model(tmp_path, tiny_dir, lex, no_weights):
    adapter = _tiny_adapter(tiny_dir, tmp_path / "adapter", base_model="some-other/model")
    with pytest.raises(AdapterError) as err:
        _scan(tmp_path / "out", tiny_dir, lex, f"adapter={_q(adapter)}")
    message = str(err.value)
    assert "'some-other/model'" in message and repr(str(tiny_dir)) in message and str(adapter) in message
    assert not (tmp_path / "out" / "scan").exists()


def test_unknown_pooling(tmp_path, tiny_dir, lex, no_weights):
    with pytest.raises(ConfigError, match=r"model.pooling='max'.*valid: mean, mean_all, last"):
        _scan(tmp_path, tiny_dir, lex, "model.pooling=max")


def test_missing_adapter(tmp_path, tiny_dir, lex, no_weights):
    missing = tmp_path / "no-such-adapter"
    with pytest.raises(AdapterError, match="no such directory") as err:
        _scan(tmp_path, tiny_dir, lex, f"adapter={_q(missing)}")
    assert str(missing) in str(err.value)
    not_peft = tmp_path / "plain-dir"
    not_peft.mkdir()
    with pytest.raises(AdapterError, match="adapter_config.json") as err:
        _scan(tmp_path, tiny_dir, lex, f"adapter={_q(not_peft)}")
    assert str(not_peft) in str(err.value)


def test_unknown_criterion_and_split(tmp_path, tiny_dir, lex, no_weights):
    with pytest.raises(ConfigError, match=r"scan.criterion='best' is not a metric; valid: margin, margin_z, p_at_1"):
        _scan(tmp_path, tiny_dir, lex, "scan.criterion=best")
    with pytest.raises(ConfigError, match=r"scan.criterion='cosine' is descriptive"):
        _scan(tmp_path, tiny_dir, lex, "scan.criterion=cosine")
    with pytest.raises(ConfigError, match=r"scan.criterion_split='dev' must be train or control"):
        _scan(tmp_path, tiny_dir, lex, "scan.criterion_split=dev")


def test_adapter_overlay_scans_base_and_adapted(tmp_path, tiny_dir, lex):
    adapter = _tiny_adapter(tiny_dir, tmp_path / "adapter", base_model=str(tiny_dir), perturb=True)
    summary, scan_dir = _scan(tmp_path / "out", tiny_dir, lex, f"adapter={_q(adapter)}", "scan.layers=[0,1,2,3,32]")
    rows = _rows(scan_dir)
    _check_table(rows, [0, 1, 2, 3, 32], lex, models=("base", "adapted"))
    for split in ("train", "control"):
        base0, adapted0 = _row(rows, split, 0), _row(rows, split, 0, "adapted")
        assert {c: adapted0[c] for c in METRIC_COLUMNS} == {c: base0[c] for c in METRIC_COLUMNS}  # embeddings
        for layer in (1, 2, 3, 32):
            base, adapted = _row(rows, split, layer), _row(rows, split, layer, "adapted")
            assert abs(adapted["cosine"] - base["cosine"]) > 1e-4, (split, layer)
            assert adapted["baseline_cosine"] != base["baseline_cosine"]
    assert {"base", "adapted", "adapter", "settings"} <= set(summary)
    assert 1 <= summary["adapted"]["recommended_layer"] <= N_LAYERS
    assert summary["adapter"]["path"] == str(adapter) and summary["adapter"]["base_model"] == str(tiny_dir)
    train = [r for r in rows if r["model"] == "adapted" and r["split"] == "train" and r["layer"] >= 1
             and r["vectors"] == "raw"]
    assert summary["adapted"]["recommended_value"] == max(r["mrr"] for r in train)


@pytest.fixture
def no_network(monkeypatch):
    """Fail on any connection from this process that is not local (wandb talks to its service over loopback)."""
    attempts = []
    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test forbids network access to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", _local_getaddrinfo(socket.getaddrinfo, attempts))
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.invalid")  # anything the service tried would fail
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return attempts


def _local_getaddrinfo(real, attempts):
    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost", "127.0.0.1", "::1", "") and not str(host).startswith("/"):
            attempts.append(host)
            raise socket.gaierror(f"test forbids resolving {host}")
        return real(host, *args, **kwargs)

    return getaddrinfo


def test_wandb_offline_writes_run_files(tmp_path, tiny_dir, lex, no_network):
    summary, scan_dir = _scan(tmp_path, tiny_dir, lex, "logger=wandb", "logger.offline=true", "scan.layers=[0,1,2]")
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in (tmp_path / "wandb").iterdir())
    assert list(runs[0].glob("*.wandb")) and (runs[0] / "files").is_dir()
    assert not list((tmp_path / "wandb").glob("run-*"))  # no online run
    assert no_network == []
    assert (scan_dir / "layers.csv").is_file() and summary["base"]["recommended_layer"] in (1, 2)


def test_cli_run(tmp_path, tiny_dir, lex):
    """`python scan.py` with Hydra overrides, in a fresh process, on the default NF4 quantization."""
    run_dir = tmp_path / "run"
    small = {}
    for split, n in (("train", 12), ("control", 6)):
        small[split] = tmp_path / f"{split}.json"
        recs = [{"swahili": s, "english": t} for s, t in lex["pairs"][split][:n]]
        small[split].write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    args = [sys.executable, str(ROOT / "scan.py"), "model=tiny", "data=sw_en", f"hydra.run.dir={_q(run_dir)}",
            f"model.name_or_path={_q(tiny_dir)}", f"data.train_file={_q(small['train'])}",
            f"data.control_file={_q(small['control'])}", "scan.layers=[0,1,2,3]", "scan.n_boot=100"]
    env = {**os.environ, "TLI_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scan_dir = run_dir / "scan"
    for name in ("layers.csv", "summary.json", "layers.png", "audit.json"):
        assert (scan_dir / name).is_file(), name
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    summary = json.loads((scan_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["quantization"] == "nf4" and summary["settings"]["layers"] == [0, 1, 2, 3]
    assert len(_rows(scan_dir)) == 2 * 2 * 4
    rec = summary["base"]
    assert f"[base] recommended target layer {rec['recommended_layer']}: index" in proc.stdout
    assert f"wrote {scan_dir}" in proc.stdout
