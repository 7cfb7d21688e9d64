"""The dynamic partitions definition of a source: one partition per S3 key."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

from kmdagster.config import SourceConfig
from kmdagster.defs.naming import SourceNames

# Dagster refuses partition keys containing these; such S3 keys are reported, not imported.
INVALID_PARTITION_KEY_PARTS = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")


def files_partitions(source: SourceConfig) -> DynamicPartitionsDefinition:
    """``<source>_files``: partition key = the S3 key of one file at the bucket root."""
    return DynamicPartitionsDefinition(name=SourceNames.of(source).partitions)


def is_valid_partition_key(key: str) -> bool:
    return not any(part in key for part in INVALID_PARTITION_KEY_PARTS)
