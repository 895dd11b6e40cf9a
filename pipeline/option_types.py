"""The values the command line's options take: numbers within a range, token counts (2.3T), sizes of memory."""

import argparse
import re
from collections.abc import Callable

from stages.settings import SEED_MAX, UINT64_MAX, Range, number_problem


def number(kind: type[int] | type[float], bounds: Range, units: dict[str, float] | None = None
           ) -> Callable[[str], float]:
    """An option's type: a number of `kind` within `bounds`, and finite and within 64 bits as every setting;
    with `units`, a suffix of them scales it (`2.3T`)."""

    def parse(text: str) -> float:
        digits, scale = text.strip(), 1.0
        if units and digits[-1:].lower() in units:
            digits, scale = digits[:-1], units[digits[-1].lower()]
        try:
            value = kind(digits) * scale if units else kind(digits)
        except ValueError:
            expected = "a whole number" if kind is int else "a number"
            if units:
                expected += f" with or without a unit ({', '.join(u.upper() for u in units)})"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        problem = number_problem(value) or (None if value in bounds else f"must be {bounds}")
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    return parse


positive_int = number(int, Range(ge=1))
seed = number(int, Range(ge=0, le=SEED_MAX))
phase_number = number(int, Range())  # the phases YAML says which exist
TOKEN_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}  # as budgets are spoken of: 2.3T, 600B, 50M
token_count = number(float, Range(gt=0), TOKEN_UNITS)


SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
              "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def byte_size(text: str) -> int:
    """`512MiB`, `2GiB`, `1.5G` or plain bytes: the memory of a task, at least MIN_TASK_MEMORY."""
    from pipeline.progress import MIN_TASK_MEMORY

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 512MiB or 2GiB, got {text!r}")
    size = float(match.group(1)) * SIZE_UNITS[unit]
    if not MIN_TASK_MEMORY <= size <= UINT64_MAX:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_TASK_MEMORY >> 20} MiB and fit in 64 bits, "
                                         f"got {text}")
    return int(size)
