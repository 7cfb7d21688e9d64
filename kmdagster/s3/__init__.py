"""The S3 side: list and match keys, read objects in ranged pieces, archive, permissions."""
