"""The S3 permissions the import needs: the least-privilege IAM policy, and a live check.

The check tries each permission against the real bucket and leaves nothing behind: the
delete is tried on a key that does not exist, and the write probe under
``completed_imports/`` is only written once deleting is known to work.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from kmdagster.s3.objects import (
    ARCHIVE_PREFIX,
    FilePattern,
    S3AccessError,
    S3SetupError,
    describe_client_error,
    list_matching_files,
)

PROBE_NAME = ".kmdagster-permission-check-"


@dataclass(frozen=True)
class Permission:
    name: str
    action: str
    sid: str
    purpose: str

    def resource(self, bucket: str) -> str:
        if self.action == "s3:ListBucket":
            return f"arn:aws:s3:::{bucket}"
        if self.action in ARCHIVE_ONLY_ACTIONS:
            return f"arn:aws:s3:::{bucket}/{ARCHIVE_PREFIX}*"
        return f"arn:aws:s3:::{bucket}/*"

    def statement(self, bucket: str) -> dict[str, str]:
        return {
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": self.action,
            "Resource": self.resource(bucket),
        }


PERMISSIONS = (
    Permission("list", "s3:ListBucket", "ListTheBucket", "find matching files"),
    Permission("read", "s3:GetObject", "ReadImportFiles", "read files (ranged GETs)"),
    Permission(
        "write", "s3:PutObject", "WriteArchiveCopies", f"copy imported files to {ARCHIVE_PREFIX}"
    ),
    Permission("delete", "s3:DeleteObject", "DeleteImportedFiles", "remove archived originals"),
    Permission(
        "abort",
        "s3:AbortMultipartUpload",
        "AbortFailedArchiveCopies",
        "abort a failed multipart copy or upload under " + ARCHIVE_PREFIX,
    ),
)
# Writes only ever create objects under completed_imports/.
ARCHIVE_ONLY_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload")

# Every S3 operation kmdagster calls and the IAM actions it needs (on the key written or
# read; a copy also reads its source). A test compares the calls made with the policy.
ACTIONS_BY_OPERATION = {
    "ListObjectsV2": ("s3:ListBucket",),
    "HeadBucket": ("s3:ListBucket",),
    "HeadObject": ("s3:GetObject",),
    "GetObject": ("s3:GetObject",),
    "CopyObject": ("s3:PutObject",),
    "CreateMultipartUpload": ("s3:PutObject",),
    "UploadPart": ("s3:PutObject",),
    "UploadPartCopy": ("s3:PutObject",),
    "CompleteMultipartUpload": ("s3:PutObject",),
    "AbortMultipartUpload": ("s3:AbortMultipartUpload",),
    "PutObject": ("s3:PutObject",),
    "DeleteObject": ("s3:DeleteObject",),
}


def iam_policy(bucket: str) -> dict[str, Any]:
    """The whole least-privilege policy: bucket-scoped, archive writes only."""
    return {
        "Version": "2012-10-17",
        "Statement": [permission.statement(bucket) for permission in PERMISSIONS],
    }


@dataclass(frozen=True)
class PermissionResult:
    permission: Permission
    passed: bool
    detail: str


def check_permissions(client: Any, bucket: str, pattern: FilePattern) -> list[PermissionResult]:
    """Try list, read, delete, write and abort against ``bucket``; one result per permission.

    Raises ``S3SetupError`` when the bucket does not exist or the credentials are refused:
    then every probe would fail for that one reason, and no permission is in question.
    """
    by_name = {permission.name: permission for permission in PERMISSIONS}
    results: dict[str, PermissionResult] = {}
    token = uuid.uuid4().hex

    def attempt(name: str, operation: str, key: str | None, call: Any, ok_detail: str) -> bool:
        try:
            call()
        except ClientError as exc:
            detail = describe_client_error(exc, operation, bucket, key)
            results[name] = PermissionResult(by_name[name], False, detail)
            return False
        results[name] = PermissionResult(by_name[name], True, ok_detail)
        return True

    # The listing the sensor does is the list probe, and it finds the file to read.
    try:
        first_file = next(iter(list_matching_files(client, bucket, pattern)), None)
        listed = True
        results["list"] = PermissionResult(by_name["list"], True, f"listed s3://{bucket}")
    except S3SetupError:
        raise
    except S3AccessError as exc:
        first_file, listed = None, False
        results["list"] = PermissionResult(by_name["list"], False, str(exc))
    if first_file is not None:
        attempt(
            "read",
            "GetObject",
            first_file.key,
            lambda: client.get_object(Bucket=bucket, Key=first_file.key, Range="bytes=0-0"),
            f"read the first byte of s3://{bucket}/{first_file.key}",
        )
    else:
        results["read"] = PermissionResult(
            by_name["read"],
            False,
            f"not tested: no file matching {pattern.describe()} to read in s3://{bucket}"
            + ("" if listed else " (listing failed)")
            + "; upload one and check again",
        )
    # Deleting a key that does not exist succeeds when allowed and changes nothing.
    absent_key = f"{pattern.stem}{PROBE_NAME}{token}.absent"
    deletable = attempt(
        "delete",
        "DeleteObject",
        absent_key,
        lambda: client.delete_object(Bucket=bucket, Key=absent_key),
        f"deleted (absent) s3://{bucket}/{absent_key}",
    )
    probe_key = f"{ARCHIVE_PREFIX}{PROBE_NAME}{token}"
    if deletable:
        written = attempt(
            "write",
            "PutObject",
            probe_key,
            lambda: client.put_object(Bucket=bucket, Key=probe_key, Body=b"", IfNoneMatch="*"),
            f"wrote and removed s3://{bucket}/{probe_key}",
        )
        if written:
            client.delete_object(Bucket=bucket, Key=probe_key)
    else:
        results["write"] = PermissionResult(
            by_name["write"],
            False,
            "not tested: without s3:DeleteObject the write probe could not be removed",
        )
    results["abort"] = _check_abort(client, bucket, probe_key, by_name["abort"])
    return [results[permission.name] for permission in PERMISSIONS]


def _check_abort(client: Any, bucket: str, key: str, permission: Permission) -> PermissionResult:
    """Abort an upload that does not exist: allowed, S3 answers NoSuchUpload."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=f"{PROBE_NAME}upload")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
            return PermissionResult(
                permission, True, f"aborted (absent) upload of s3://{bucket}/{key}"
            )
        detail = describe_client_error(exc, "AbortMultipartUpload", bucket, key)
        return PermissionResult(permission, False, detail)
    return PermissionResult(permission, True, f"aborted (absent) upload of s3://{bucket}/{key}")
