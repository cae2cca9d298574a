"""Do no harm: the language-modelling loss of held-out sentences before and after an adapter.

Each sentence is tokenised with the tokenizer's own special tokens (BOS for Llama and Gemma). Every token after the
first is scored given its prefix; added special tokens before the text (BOS) are context only, never a target. So a
single unpadded sentence gets exactly `model(input_ids, labels=input_ids).loss`. Batches are right-padded and the
padding is masked out of the loss, so the numbers do not depend on batch size. The loss of a language is the
token-weighted mean NLL (nats per token) over its sentences; perplexity is its exponential.

Before/after comparison and the rise flag: `tli.eval.lm_loss_stats`; the report section: `tli.eval.sections`.

Held-out sentences (`heldout_file`, the one resolver): a UTF-8 file, one sentence per line, or the bundled sample of
a language: English, Korean and Swahili, in `tli/lexicons/heldout/` (see its datasheet).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tli.errors import DataError
from tli.model.modes import eval_mode

HELDOUT_FILES = {"english": "en", "en": "en", "eng": "en", "korean": "ko", "ko": "ko", "kor": "ko",
                 "swahili": "sw", "kiswahili": "sw", "sw": "sw", "swa": "sw", "swh": "sw"}


def read_sentences(path: str | Path) -> list[str]:
    """Sentences of a UTF-8 text file, one per line; blank lines are skipped."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    sentences = [" ".join(line.split()) for line in lines if line.strip()]
    if not sentences:
        raise DataError(f"{path}: contains no sentences (expected one sentence per line)")
    return sentences


def bundled_heldout(lang: str, kind: str = "heldout") -> Path | None:
    """The bundled held-out file of a language (name such as "Korean" or ISO code "ko"), or None; `kind`
    "validation": its written validation sentences (`tli/lexicons/validation`, never the held-out ones) instead."""
    code = HELDOUT_FILES.get(lang.strip().casefold())
    return None if code is None else Path(str(resources.files("tli") / "lexicons" / kind / f"{code}.txt"))


def heldout_file(lang: str, path: str | Path | None = None, *, lang_name: str | None = None,
                 path_name: str | None = None, instead: str = "pass its path instead of the language name") -> Path:
    """The held-out sentence file: `path` when given (it must exist), else the bundled sample of `lang` (a name such
    as "Korean" or an ISO code such as "ko"). `lang_name` / `path_name` say where the language and the path were set
    (e.g. "data.src_lang", "eval.heldout_src") and `instead` what to do without a bundled sample, for the errors."""
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"{path_name or 'held-out file'}={str(path)!r}: no such file (UTF-8 text, one sentence "
                            "per line)")
        return file
    file = bundled_heldout(lang)
    if file is None:
        where = f"{lang_name}={lang!r}" if lang_name else f"language {lang!r}"
        raise DataError(
            f"no bundled held-out sentences for {where} (bundled: English, Korean, Swahili, or the codes "
            f"{', '.join(sorted(set(HELDOUT_FILES.values())))}): write your own UTF-8 file with one sentence per line "
            f"and {instead}")
    return file


def heldout_sentences(lang: str) -> list[str]:
    """The bundled held-out sample of a language (name such as "Korean" or ISO code "ko"), or a file path."""
    return read_sentences(heldout_file(lang, lang if Path(lang).expanduser().is_file() else None))


@torch.no_grad()
def sentence_nll(model, tokenizer, sentences: Sequence[str], *, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(summed NLL in nats, number of scored tokens) per sentence, in input order: two (N,) arrays."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    ids = tokenizer(list(sentences), add_special_tokens=True)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    sums, counts = np.zeros(len(ids)), np.zeros(len(ids), dtype=np.int64)
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, padding=True, padding_side="right",
                                  return_tensors="pt").to(device)
            input_ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, T), (B, T)
            logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
            labels = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (B, T-1): padding is no target
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels, reduction="none")  # (B, T-1)
            sums[rows] = nll.sum(1).double().cpu().numpy()
            counts[rows] = (labels != -100).sum(1).cpu().numpy()
    return sums, counts


def perplexity(nll: float) -> float:
    """exp(nll), inf where it overflows (e.g. a broken adapter's huge loss) and NaN for NaN, never an error."""
    return math.exp(nll) if nll < 700 else (math.inf if nll == nll else math.nan)


def lm_loss(model, tokenizer, sentences: Sequence[str], *, batch_size: int = 8) -> dict[str, Any]:
    """Token-weighted mean NLL and perplexity of `sentences`, with per-sentence mean NLLs for paired tests."""
    sums, counts = sentence_nll(model, tokenizer, sentences, batch_size=batch_size)
    if counts.sum() == 0:
        raise ValueError("no token to score: every sentence is a single token")
    nll = float(sums.sum() / counts.sum())
    return {"n_sentences": len(sentences), "n_tokens": int(counts.sum()), "nll": nll, "perplexity": perplexity(nll),
            "sentence_nll": (sums / np.maximum(counts, 1)).tolist(), "sentence_tokens": counts.tolist()}

