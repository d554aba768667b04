"""Benchmarks and data generators. Run benchmarks from the repository root: python -m bench.<name>."""
