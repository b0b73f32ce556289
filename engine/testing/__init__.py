"""Deterministic test weights and tiny models, shared by tests, benchmarks and `--self-test`."""
