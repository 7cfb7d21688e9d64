"""The rejects file beside an archived copy: ``completed_imports/.../NAME.rejects.jsonl``.

One JSON object per rejected line, in line order: ``line_no``, ``byte_offset`` (where the
line starts in the uncompressed file), ``reason``, ``error_position`` (for a line that is
not JSON, the character where parsing stopped; else null), ``raw_line`` (its first
``MAX_RAW_LINE_CHARS`` characters, as the warehouse keeps it) and ``raw_chars`` (its full
length), so the file's author can find, fix and resend those lines.
Written once with ``If-None-Match: *`` and the source ETag in its metadata: a retry after
a crash finds its own file and moves on, and a different object at that name is never
overwritten.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from typing import Any

import polars as pl
from botocore.exceptions import ClientError

from kmdagster.s3.archive import SOURCE_ETAG_METADATA
from kmdagster.s3.objects import (
    S3AccessError,
    describe_client_error,
    head_object,
    is_precondition_failure,
)

REJECTS_SUFFIX = ".rejects.jsonl"
REJECTS_FILE_COLUMNS = (
    "line_no",
    "byte_offset",
    "reason",
    "error_position",
    "raw_line",
    "raw_chars",
)
# The body is spooled to disk past this size, so memory stays bounded by one batch.
SPOOL_BYTES = 16 * 1024 * 1024


def rejects_key_for(archived_key: str) -> str:
    """The rejects file's key: the archived copy's key plus ``.rejects.jsonl``."""
    return archived_key + REJECTS_SUFFIX


def rejects_jsonl(rejects: pl.DataFrame) -> bytes:
    """JSON lines for a batch of ``REJECTS_FILE_COLUMNS`` rows."""
    if rejects.height == 0:
        return b""
    lines = rejects.select(pl.struct(*REJECTS_FILE_COLUMNS).struct.json_encode()).to_series()
    return ("\n".join(lines.to_list()) + "\n").encode()


def write_rejects_file(
    client: Any, bucket: str, key: str, source_etag: str, batches: Iterable[pl.DataFrame]
) -> bool:
    """Write the rejects file at ``key`` unless this file version's is already there.

    Returns True when this call wrote it. Raises S3AccessError when the write is denied or
    another object holds the name.
    """
    if _is_ours(client, bucket, key, source_etag):
        return False
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as body:
        for batch in batches:
            body.write(rejects_jsonl(batch))
        body.seek(0)
        try:
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType="application/x-ndjson",
                Metadata={SOURCE_ETAG_METADATA: source_etag.strip('"')},
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if not is_precondition_failure(exc):
                raise S3AccessError(describe_client_error(exc, "PutObject", bucket, key)) from exc
            if not _is_ours(client, bucket, key, source_etag):
                raise S3AccessError(
                    f"s3://{bucket}/{key} already holds another object; the rejects of "
                    f"ETag {source_etag} were not written. Move that object away and "
                    "re-run the archive step"
                ) from exc
            return False
    return True


def _is_ours(client: Any, bucket: str, key: str, source_etag: str) -> bool:
    head = head_object(client, bucket, key)
    return head is not None and (
        head.get("Metadata", {}).get(SOURCE_ETAG_METADATA) == source_etag.strip('"')
    )
