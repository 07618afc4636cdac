"""Benchmarks of fairseq-sage, run from the repository root as ``python -m benchmarks.<name>``."""
