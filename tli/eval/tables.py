"""Tabular outputs shared by the reports: atomic CSV, Markdown and console tables."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from tli.io import atomic_write_text


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Rows of dicts to CSV (columns: `columns` first, then any others in first-seen order)."""
    cols = list(columns or [])
    for row in rows:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str = "") -> None:
    """A readable console table (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    for c in columns:
        table.add_column(c, justify="left" if c in ("model", "split") else "right")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in columns))
    Console(width=200).print(table)
