"""Benchmark harness for qoder_async: ``python -m benchmarks`` (see README.md)."""
