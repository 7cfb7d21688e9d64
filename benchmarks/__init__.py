"""Benchmarks of kmdagster against the baselines a user would otherwise write."""
