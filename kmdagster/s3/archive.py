"""Move an imported file to completed_imports/YYYY/MM/DD/NAME: copy, verify, record, delete.

Idempotent: a crash anywhere is finished by calling again, because an archive object
carrying the source's ETag counts as our own copy. The caller records the archive key
before the original is deleted, so the original stays at the bucket root (and the
schedule comes back to it) until the ledger knows where the copy is. A different object already at
the destination is never overwritten; the copy takes the next free numbered name.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from kmdagster.s3.objects import (
    ARCHIVE_PREFIX,
    S3AccessError,
    S3File,
    describe_client_error,
    head_file,
    head_object,
    is_precondition_failure,
)
from kmdagster.seams import crash_point
from kmdagster.seams import current as current_seams

MAX_NAME_SUFFIX = 1000
SOURCE_ETAG_METADATA = "kmdagster-source-etag"
SINGLE_COPY_MAX_BYTES = 5 * 1024**3  # CopyObject's limit; larger files are copied in parts
COPY_PART_BYTES = 512 * 1024**2  # 10,000 parts (S3's limit) reach 5 TB, S3's largest object


def archive_key_for(key: str, completed_at: datetime, attempt: int = 0) -> str:
    """``completed_imports/YYYY/MM/DD/key``; attempt N > 0 adds ``.N`` before the extension."""
    name = key
    if attempt:
        stem, dot, extension = key.rpartition(".")
        name = f"{stem}.{attempt}{dot}{extension}" if dot else f"{key}.{attempt}"
    return f"{ARCHIVE_PREFIX}{completed_at:%Y/%m/%d}/{name}"


def archive_file(
    client: Any,
    bucket: str,
    source: S3File,
    completed_at: datetime,
    record: Callable[[str], object] | None = None,
) -> str:
    """Copy ``source`` under completed_imports/, check it, ``record`` its key, delete the original.

    A source over ``SINGLE_COPY_MAX_BYTES`` is copied server-side in parts of
    ``COPY_PART_BYTES`` (sizes ``kmdagster.seams`` may change). Returns the archive key.
    Raises S3AccessError on a permission or bucket problem.
    """
    if "/" in source.key or source.key.startswith("."):
        raise S3AccessError(
            f"refusing to archive {source.key!r}: only root-level keys are imported"
        )
    seams = current_seams()
    single_copy_max_bytes = seams.single_copy_max_bytes or SINGLE_COPY_MAX_BYTES
    copy_part_bytes = seams.copy_part_bytes or COPY_PART_BYTES
    for attempt in range(MAX_NAME_SUFFIX):
        destination = archive_key_for(source.key, completed_at, attempt)
        state = _destination_state(client, bucket, destination, source)
        if state == "absent":
            if source.size > single_copy_max_bytes:
                _copy_in_parts_if_absent(client, bucket, source, destination, copy_part_bytes)
            else:
                _copy_if_absent(client, bucket, source, destination)
            state = _destination_state(client, bucket, destination, source)
            if state == "absent":  # the copy's precondition on the source version failed
                raise _version_gone(client, bucket, source)
        if state == "ours":
            crash_point("archive.copied")
            if record is not None:
                record(destination)
            crash_point("archive.recorded")
            _delete_source(client, bucket, source)
            return destination
    raise S3AccessError(
        f"s3://{bucket}/{archive_key_for(source.key, completed_at)}: {MAX_NAME_SUFFIX} "
        "different objects already use this archive name; clean up completed_imports/"
    )


def _destination_state(client: Any, bucket: str, destination: str, source: S3File) -> str:
    """``absent``, ``ours`` (a copy of this source version) or ``other``.

    A copy's ETag differs from a multipart original's, so the copy carries the source
    ETag in its metadata and is recognised by that and its size.
    """
    head = head_object(client, bucket, destination)
    if head is None:
        return "absent"
    same_size = int(head["ContentLength"]) == source.size
    copied_from = head.get("Metadata", {}).get(SOURCE_ETAG_METADATA)
    same_version = copied_from == source.etag.strip('"') or head["ETag"] == source.etag
    return "ours" if same_size and same_version else "other"


def _copy_if_absent(client: Any, bucket: str, source: S3File, destination: str) -> None:
    try:
        client.copy_object(
            Bucket=bucket,
            Key=destination,
            CopySource={"Bucket": bucket, "Key": source.key},
            CopySourceIfMatch=source.etag,
            Metadata={SOURCE_ETAG_METADATA: source.etag.strip('"')},
            MetadataDirective="REPLACE",
            IfNoneMatch="*",  # never replace an object someone else wrote meanwhile
        )
    except ClientError as exc:
        if not is_precondition_failure(exc):  # if it is, the caller re-reads and decides
            raise S3AccessError(
                describe_client_error(exc, "CopyObject", bucket, destination)
            ) from exc


def _copy_in_parts_if_absent(
    client: Any, bucket: str, source: S3File, destination: str, part_bytes: int
) -> None:
    """The same copy as ``_copy_if_absent`` as a multipart upload of server-side part
    copies, each pinned to the source's ETag; completed only if the destination is still
    absent. A failed copy is aborted, so no parts are left behind (a killed process
    leaves them to the bucket's AbortIncompleteMultipartUpload lifecycle rule)."""
    operation = "CreateMultipartUpload"
    upload_id = None
    try:
        upload_id = client.create_multipart_upload(
            Bucket=bucket,
            Key=destination,
            Metadata={SOURCE_ETAG_METADATA: source.etag.strip('"')},
        )["UploadId"]
        operation = "UploadPartCopy"
        parts = []
        for number, start in enumerate(range(0, source.size, part_bytes), start=1):
            end = min(start + part_bytes, source.size) - 1
            copied = client.upload_part_copy(
                Bucket=bucket,
                Key=destination,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": bucket, "Key": source.key},
                CopySourceIfMatch=source.etag,
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
        operation = "CompleteMultipartUpload"
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=destination,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            IfNoneMatch="*",
        )
    except ClientError as exc:
        if upload_id is not None:
            _abort_quietly(client, bucket, destination, upload_id)
        if not is_precondition_failure(exc):  # if it is, the caller re-reads and decides
            raise S3AccessError(describe_client_error(exc, operation, bucket, destination)) from exc


def _abort_quietly(client: Any, bucket: str, destination: str, upload_id: str) -> None:
    # The copy's own error is the one to report; failing that, the lifecycle rule cleans up.
    with suppress(ClientError):
        client.abort_multipart_upload(Bucket=bucket, Key=destination, UploadId=upload_id)


def _version_gone(client: Any, bucket: str, source: S3File) -> S3AccessError:
    current = head_file(client, bucket, source.key)
    now = f"now has ETag {current.etag}" if current else "is gone"
    return S3AccessError(
        f"s3://{bucket}/{source.key} no longer holds the imported version (ETag "
        f"{source.etag}; it {now}), so that version cannot be archived: it was replaced or "
        "deleted after its lines were read. Its rows stay attributed to that ETag; new "
        "content at this key is imported as a new file at the next tick"
    )


def _delete_source(client: Any, bucket: str, source: S3File) -> None:
    current = head_file(client, bucket, source.key)
    if current is None or current.etag != source.etag:
        return  # already deleted, or replaced by new content that must stay for its own import
    try:
        client.delete_object(Bucket=bucket, Key=source.key, IfMatch=source.etag)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "412", "NoSuchKey", "404"):
            return
        raise S3AccessError(describe_client_error(exc, "DeleteObject", bucket, source.key)) from exc
