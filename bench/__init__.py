"""Benchmarks: `make bench` (python -m bench.run). Every figure comes with its baseline, measured in the same run."""
