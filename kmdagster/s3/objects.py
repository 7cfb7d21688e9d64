"""S3 listing, matching and object metadata, with errors that say what to do.

Every helper takes a boto3 S3 client as its first argument, so it works against AWS or
any S3-compatible endpoint and is easy to test against a real local server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from kmdagster.config import SourceConfig

ARCHIVE_PREFIX = "completed_imports/"

# What each S3 call needs, for error messages that name the missing permission.
PERMISSION_OF_OPERATION = {
    "ListObjectsV2": "s3:ListBucket",
    "HeadObject": "s3:GetObject",
    "GetObject": "s3:GetObject",
    "CopyObject": "s3:GetObject on the source and s3:PutObject on completed_imports/*",
    "DeleteObject": "s3:DeleteObject",
    "PutObject": "s3:PutObject on completed_imports/*",  # archive probes and rejects files
    # The parts of an archive copy of a file over 5 GB:
    "CreateMultipartUpload": "s3:PutObject on completed_imports/*",
    "UploadPartCopy": "s3:GetObject on the source and s3:PutObject on completed_imports/*",
    "CompleteMultipartUpload": "s3:PutObject on completed_imports/*",
}


class S3AccessError(RuntimeError):
    """A permanent S3 error, described with bucket, key and the fix."""


class FileChangedError(RuntimeError):
    """The object's ETag no longer matches the version being imported."""


class UnreadableFileError(S3AccessError):
    """The object's bytes cannot be read as lines: a compressed stream cut short or
    corrupt, one expanding past its limit, or a line without end. ``cut_short_at`` is the
    uncompressed offset where a compressed stream stopped early, if that is what it is."""

    def __init__(self, message: str, cut_short_at: int | None = None) -> None:
        super().__init__(message)
        self.cut_short_at = cut_short_at


class S3SetupError(S3AccessError):
    """Nothing of the bucket can be reached: it does not exist, or the credentials were
    refused. No permission can be judged until that is fixed."""


SETUP_ERROR_CODES = ("NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken")


@dataclass(frozen=True)
class S3File:
    key: str
    etag: str
    size: int
    # When this version was written; a file's identity is its key and ETag alone.
    last_modified: datetime | None = field(default=None, compare=False)


# A key's last suffix -> how its object is compressed (Arrow's codec names).
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}


def compression_of(key: str) -> str | None:
    """``gzip`` or ``zstd`` for a key ending ``.gz`` or ``.zst``; None for a plain file."""
    for suffix, compression in COMPRESSIONS.items():
        if key.endswith(suffix):
            return compression
    return None


@dataclass(frozen=True)
class FilePattern:
    """``accounts.json`` matches root keys ``accounts*.json``: same stem, same extension;
    with ``compressed``, also ``accounts*.json.gz`` and ``accounts*.json.zst``."""

    stem: str
    extension: str
    compressed: bool = True

    @classmethod
    def from_base_filename(cls, base_filename: str, compressed: bool = True) -> FilePattern:
        named = compression_of(base_filename) is not None and base_filename.count(".") > 1
        if named:  # ``accounts.json.gz`` names the files ``accounts.json`` does, compressed
            base_filename, compressed = base_filename.rpartition(".")[0], True
        stem, _, extension = base_filename.rpartition(".")
        return cls(stem=stem, extension="." + extension, compressed=compressed)

    @classmethod
    def of_source(cls, source: SourceConfig) -> FilePattern:
        return cls.from_base_filename(source.base_filename, source.compressed_files)

    def matches(self, key: str) -> bool:
        if self._matches_plain(key):
            return True
        compressed = self.compressed and compression_of(key) is not None
        return compressed and self._matches_plain(key.rpartition(".")[0])

    def _matches_plain(self, key: str) -> bool:
        return (
            "/" not in key
            and key.startswith(self.stem)
            and key.endswith(self.extension)
            and len(key) >= len(self.stem) + len(self.extension)
        )

    def describe(self) -> str:
        plain = f"{self.stem}*{self.extension}"
        return f"{plain}[{'|'.join(COMPRESSIONS)}]" if self.compressed else plain


# S3's own faults, retried by the client: still failing after its retries, they fail the run.
SERVER_ERROR_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "500", "502", "503", "504"}
)


def describe_client_error(
    exc: ClientError, operation: str, bucket: str, key: str | None = None
) -> str:
    """A sentence naming the bucket, key, S3 error and the permission or fix."""
    code = exc.response.get("Error", {}).get("Code", "Unknown")
    where = f"s3://{bucket}/{key}" if key is not None else f"bucket {bucket!r}"
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        needed = PERMISSION_OF_OPERATION.get(operation, "the S3 permission for " + operation)
        return f"{operation} on {where} was denied: grant {needed} to the importing identity"
    if code == "NoSuchBucket":
        return (
            f"{operation}: bucket {bucket!r} does not exist; check the source's bucket name "
            "(sources[].bucket) and s3.endpoint_url / s3.region_name"
        )
    if code in ("NoSuchKey", "404", "NotFound"):
        return f"{operation}: {where} does not exist (deleted or moved while queued)"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
        return (
            f"{operation} on {where}: the AWS credentials were refused ({code}); "
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    message = exc.response.get("Error", {}).get("Message", "")
    said = f"{operation} on {where} failed: {code} {message}".strip()
    if code in SERVER_ERROR_CODES:
        said += " (still failing after the client's retries, s3.max_attempts)"
    return said


def is_precondition_failure(exc: ClientError) -> bool:
    """S3's answer when an If-Match, If-None-Match or CopySourceIfMatch does not hold."""
    return exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412")


def list_matching_files(client: Any, bucket: str, pattern: FilePattern) -> Iterator[S3File]:
    """Every root-level key of ``bucket`` matching ``pattern``, in S3's (lexicographic) order.

    Lists with the stem as prefix and ``/`` as delimiter, so keys under folders such as
    ``completed_imports/`` are never even returned.
    """
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=pattern.stem, Delimiter="/"):
            for item in page.get("Contents", []):
                if pattern.matches(item["Key"]):
                    yield S3File(
                        key=item["Key"],
                        etag=item["ETag"],
                        size=int(item["Size"]),
                        last_modified=item.get("LastModified"),
                    )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        error = S3SetupError if code in SETUP_ERROR_CODES else S3AccessError
        raise error(describe_client_error(exc, "ListObjectsV2", bucket)) from exc


@dataclass(frozen=True)
class RootFiles:
    """The source's files at its bucket root, by key: ``files`` sort after the source's
    ``start_after`` (all of them when it is unset), ``before_start`` at or before it."""

    files: list[S3File]
    before_start: list[S3File] = field(default_factory=list)


def list_root(client: Any, source: SourceConfig) -> RootFiles:
    """The source's files at its bucket root, split at ``start_after``. Every part lists
    the root here."""
    listed = list_matching_files(client, source.bucket, FilePattern.of_source(source))
    root = RootFiles([], [])
    for file in listed:
        (root.files if source.after_start(file.key) else root.before_start).append(file)
    return root


def list_root_files(client: Any, source: SourceConfig) -> list[S3File]:
    """The source's files after ``start_after`` at its bucket root, by key: what the sensor
    registers, the schedule picks from, the preview previews and an import run checks for
    versions replaced. Status and health also count the ones before it (``list_root``)."""
    return list_root(client, source).files


def _require_bucket(client: Any, bucket: str) -> None:
    """Raise S3AccessError when ``bucket`` does not exist (a denied check proves nothing)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            raise S3AccessError(
                f"bucket {bucket!r} does not exist; check the source's bucket name"
            ) from exc


def head_object(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """HeadObject's answer, or None when the key does not exist (nor, maybe, the bucket)."""
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise S3AccessError(describe_client_error(exc, "HeadObject", bucket, key)) from exc


def head_file(client: Any, bucket: str, key: str) -> S3File | None:
    """The object's current ETag and size, or None when it does not exist."""
    head = head_object(client, bucket, key)
    if head is None:
        _require_bucket(client, bucket)  # a HEAD's 404 does not say which is missing
        return None
    return S3File(
        key=key,
        etag=head["ETag"],
        size=int(head["ContentLength"]),
        last_modified=head.get("LastModified"),
    )
