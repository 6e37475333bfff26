"""Metric tables: Markdown for reading, CSV (one row per model/condition) for scripts."""

from __future__ import annotations

import csv
import math
import os
from typing import Iterable, Mapping, Sequence

from avrep.evaluation.metrics import summarize


def summarize_rows(per_item: Sequence[Mapping[str, float]], metrics: Sequence[str]) -> dict[str, float]:
    """Mean and std over items for each metric; non-finite values are counted, never averaged silently."""
    out: dict[str, float] = {"n": len(per_item)}
    for m in metrics:
        out[m], out[f"{m}_std"], bad = summarize([item[m] for item in per_item])
        if bad:
            out[f"{m}_nonfinite"] = bad
    return out


def _cell(row: Mapping, metric: str, digits: int) -> str:
    mean = row.get(metric, math.nan)
    text = f"{mean:.{digits}f}"
    if f"{metric}_std" in row:  # a single value (no spread) is shown alone
        text += f" ± {row[f'{metric}_std']:.{digits}f}"
    bad = row.get(f"{metric}_nonfinite")
    return text + (f" ({bad} non-finite excluded)" if bad else "")


def write_csv(path: str, rows: Iterable[Mapping], columns: Sequence[str]) -> None:
    """Rows as CSV with ``columns``; NaN written as an empty cell."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if isinstance(row.get(k), float) and math.isnan(row[k]) else row.get(k, "")) for k in columns}
            )


def write_table(
    out_dir: str,
    name: str,
    title: str,
    rows: Sequence[Mapping],
    key_columns: Sequence[str],
    metrics: Sequence[tuple[str, str, int]],
    notes: Sequence[str] = (),
) -> tuple[str, str]:
    """Writes ``name.md`` and ``name.csv``.

    ``metrics`` is [(column, header, digits)]: the CSV gets ``column`` (mean) and ``column_std``;
    the Markdown shows ``mean ± std``.
    """
    os.makedirs(out_dir, exist_ok=True)
    md_path, csv_path = os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.csv")
    header = [*key_columns, "n", *(h for _, h, _ in metrics)]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[k]) for k in key_columns] + [str(row.get("n", ""))]
        cells += [_cell(row, m, d) for m, _, d in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *notes]
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    fields = [*key_columns, "n"] + [c for m, _, _ in metrics for c in (m, f"{m}_std")]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})
    return md_path, csv_path
