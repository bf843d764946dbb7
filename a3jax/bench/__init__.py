"""Benchmarks run as `a3jax bench NAME`: each prints a table measured side by side in one run."""
