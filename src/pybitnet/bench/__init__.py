"""Benchmarks: the runner, receipts (and their JSON Schema), verify, the regression gate."""
