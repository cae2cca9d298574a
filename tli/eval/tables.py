"""Tabular outputs shared by the reports: atomic CSV, Markdown and console tables, and the one way numbers and
p-values are written in them (`fmt_number`, `fmt_p`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from tli.io import atomic_write_text


def fmt_number(x, digits: int = 4, sign: str = "") -> str:
    """A figure for a report: `digits` decimals (scientific below 1e-3 in magnitude); "n/a" for None and NaN. `sign`
    "+" writes the sign of positive numbers too."""
    if x is None or x != x:
        return "n/a"
    return f"{x:{sign}.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:{sign}.2e}"


def fmt_p(p, digits: int = 3) -> str:
    """A p-value, one style everywhere: "p < 0.001", else "p = " with `digits` significant digits; "p n/a" for None."""
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.{digits}g}"


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


def markdown_table(rows: Sequence[Mapping | Sequence], columns: Sequence[str], headers: Sequence[str] | None = None,
                   align: str | None = None) -> str:
    """A Markdown table. A row is a dict (read by `columns`) or a sequence of cells in column order; strings are
    written as they are, floats with 4 decimals, None as nothing. `align`: one letter per column, "l" or "r"
    (default: all left, `---`)."""
    headers = list(headers or columns)
    align = align or "l" * len(headers)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align={align!r} needs one of l, r per column ({len(headers)})")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    for r in rows:
        cells = [r.get(c) for c in columns] if isinstance(r, Mapping) else list(r)
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
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
