"""Turn plain config mappings (what Hydra composes, as dicts) into the library's validated settings objects."""

from __future__ import annotations

from collections.abc import Mapping

from tli.audit import AuditResult, audit
from tli.embed import PoolingSpec
from tli.lexicon import read_lexicon
from tli.modeling import ModelSpec

MODEL_KEYS = ("name_or_path", "revision", "quantization", "dtype", "compute_dtype", "double_quant",
              "trust_remote_code", "cache_dir")


def model_spec(model: Mapping) -> ModelSpec:
    return ModelSpec(**{k: model[k] for k in MODEL_KEYS if k in model and (model[k] is not None or k == "revision")})


def pooling_spec(model: Mapping) -> PoolingSpec:
    return PoolingSpec(mode=model.get("pooling", "mean"), template=model.get("template", "{word}"))


def load_lexicons(data: Mapping, with_control: bool = True) -> AuditResult:
    """Read the training (and control) lexicon named by `data.*` and audit them with `data.audit` policies."""
    read = dict(
        src_field=data["src_field"], tgt_field=data["tgt_field"], fmt=data.get("format", "auto"),
        clean_glosses=data.get("clean_glosses", False), src_lang=data.get("src_lang"), tgt_lang=data.get("tgt_lang"),
    )
    train = read_lexicon(data["train_file"], **read)
    control = read_lexicon(data["control_file"], **read) if with_control and data.get("control_file") else None
    return audit(train, control, dict(data.get("audit") or {}))


def lexicon_info(result: AuditResult) -> dict:
    """File names and hashes for summaries and sidecars."""
    out = {}
    for split, lex in (("train", result.train), ("control", result.control)):
        if lex is not None:
            out[split] = {"file": str(lex.path), "sha256": lex.sha256, "pairs": len(lex)}
    return out
