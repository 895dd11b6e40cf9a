"""How rows reach the terminal: one printer for `query`, `plan` and `why`, as an aligned table, CSV or JSON."""

import csv
import json
import sys
from collections.abc import Sequence
from typing import TextIO

FORMATS = ("table", "csv", "json")


def cell(value: object) -> str:
    """A table cell: floats to 4 decimals (trailing zeros dropped), None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def print_rows(columns: Sequence[str], rows: Sequence[Sequence[object]], form: str = "table", *,
               header: bool = True, indent: str = "", file: TextIO | None = None) -> None:
    """`rows` under `columns` in `form`: a table (numbers right-aligned; `header` and `indent` apply to it only),
    CSV or a JSON list of objects."""
    file = file or sys.stdout
    if form == "json":
        print(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str, indent=2), file=file)
    elif form == "csv":
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        cells = [[cell(value) for value in row] for row in rows]
        widths = [max([len(column) if header else 0, *(len(row[i]) for row in cells)])
                  for i, column in enumerate(columns)]
        numeric = [bool(rows) and all(isinstance(row[i], int | float) and not isinstance(row[i], bool)
                                      for row in rows if row[i] is not None) for i in range(len(columns))]
        lines = [list(columns), ["-" * width for width in widths]] if header else []
        for line in lines + cells:
            print(indent + "  ".join(value.rjust(width) if right else value.ljust(width)
                                     for value, width, right in zip(line, widths, numeric, strict=True)).rstrip(),
                  file=file)
