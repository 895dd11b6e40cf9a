"""Benchmarks: `make bench` (python -m bench.run). Every figure comes with its baseline, measured in the same run."""

import time


def say(message: str) -> float:
    """A line between a section's rows, so that a long measurement is never silent; returns the time now."""
    print(f"   .. {message}", flush=True)
    return time.perf_counter()
