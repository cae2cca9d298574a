"""A saved evaluation read back from disk: its summary.json and its per-row tables (translation.csv, pairs.csv), each
cell in the type evaluate.py wrote. What `tli.eval.combine` pools and `tli.eval.front` plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tli.errors import TLIError
from tli.eval.tables import read_csv
from tli.eval.translation import CSV_COLUMNS


class EvaluationError(TLIError, ValueError):
    """An evaluation directory that cannot be read or combined (names the directory and what is wrong)."""


@dataclass
class Evaluation:
    """One evaluation's summary.json and its per-row tables."""

    path: Path
    summary: dict
    translation: list[dict]
    pairs: list[dict]


def eval_dir_of(path: str | Path) -> Path:
    """`<path>` when it holds summary.json, else `<path>/eval` when that does."""
    path = Path(path)
    if not (path / "summary.json").is_file() and (path / "eval" / "summary.json").is_file():
        return path / "eval"
    return path


def read_summary(eval_dir: Path, error: type[TLIError] = EvaluationError) -> dict:
    path = eval_dir / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise error(f"cannot read {path} ({getattr(err, 'strerror', None) or err}): give an evaluation's directory "
                    "(<run dir>/eval, written by evaluate.py)") from err


def _value(text: str) -> Any:
    """A CSV cell back to the type evaluate.py wrote: "" -> None, True/False, numbers."""
    if text in ("", "None"):
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _typed(row: dict, text_columns: Sequence[str]) -> dict:
    return {k: (v if k in text_columns else _value(v)) for k, v in row.items()}


TEXT_COLUMNS = ("run", "split", "direction", "source", "target", "prediction_before", "prediction_after")


def read_translation_csv(path: str | Path) -> list[dict]:
    """An evaluation's translation.csv with each cell back in the type evaluate.py wrote (words stay text)."""
    return [_typed(r, TEXT_COLUMNS) for r in read_csv(path)]


def read_evaluation(path: str | Path) -> Evaluation:
    eval_dir = eval_dir_of(path)
    summary = read_summary(eval_dir)
    translation = []
    if summary.get("translation"):
        if not (eval_dir / "translation.csv").is_file():
            raise EvaluationError(f"{eval_dir}: summary.json has translation figures but translation.csv is missing")
        translation = read_translation_csv(eval_dir / "translation.csv")
        missing = [c for c in CSV_COLUMNS if translation and c not in translation[0]]
        if missing:
            raise EvaluationError(f"{eval_dir / 'translation.csv'}: columns {missing} missing (an older tli?)")
    pairs_csv = eval_dir / "pairs.csv"
    pairs = [_typed(r, TEXT_COLUMNS) for r in read_csv(pairs_csv)] if pairs_csv.is_file() else []
    return Evaluation(eval_dir, summary, translation, pairs)
