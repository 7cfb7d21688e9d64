"""The KISSmetrics JSON format: validate lines and split them into warehouse rows (pure)."""
