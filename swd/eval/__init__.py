"""Evaluation and benchmarks: FLOP counts, latency, quality metrics."""
