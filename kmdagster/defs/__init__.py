"""Thin Dagster wiring: one factory builds the partitions, assets, job, sensor, schedule."""
