"""Record the S3 calls kmdagster's own code makes, and judge them against its IAM policy.

Every botocore S3 client created in the test process reports its calls here; a call
counts when the code that made it is the ``kmdagster`` package's: the nearest frame
outside the AWS libraries (a test's own calls, even from a hook the product calls back,
are not the product's). ``ungranted`` evaluates each call against the policy
``kmdagster policy`` prints, as IAM would: action and resource ARN.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session

import kmdagster
from kmdagster.s3.permissions import ACTIONS_BY_OPERATION, iam_policy

PRODUCT_DIR = str(Path(kmdagster.__file__).resolve().parent) + "/"


@dataclass(frozen=True)
class S3Call:
    operation: str
    bucket: str
    key: str | None
    copy_source_key: str | None


class S3CallRecorder:
    def __init__(self) -> None:
        self.calls: set[S3Call] = set()
        self._lock = threading.Lock()

    def record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if not _called_by_the_product():
            return
        source = params.get("CopySource")
        call = S3Call(
            model.name,
            params.get("Bucket", ""),
            params.get("Key"),
            source.get("Key") if isinstance(source, dict) else None,
        )
        with self._lock:
            self.calls.add(call)

    def operations(self) -> set[str]:
        return {call.operation for call in self.calls}


LIBRARIES = tuple(f"{os.sep}{name}{os.sep}" for name in ("botocore", "boto3", "s3transfer"))


def _called_by_the_product() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != __file__ and not any(lib in filename for lib in LIBRARIES):
            return filename.startswith(PRODUCT_DIR)
        frame = frame.f_back
    return False


_recorders: list[S3CallRecorder] = []
_original_create_client = botocore.session.Session.create_client


def _create_client_reporting_calls(self: Any, *args: Any, **kwargs: Any) -> Any:
    client = _original_create_client(self, *args, **kwargs)
    if client.meta.service_model.service_name == "s3":
        client.meta.events.register("provide-client-params.s3", _report)
    return client


def _report(**kwargs: Any) -> None:
    for recorder in list(_recorders):
        recorder.record(**kwargs)


@contextmanager
def recording_s3_calls() -> Iterator[S3CallRecorder]:
    """The S3 calls the product makes while the block runs (clients made at any time)."""
    recorder = S3CallRecorder()
    _recorders.append(recorder)
    try:
        yield recorder
    finally:
        _recorders.remove(recorder)


def install() -> None:
    """Make every S3 client created from now on report its calls."""
    botocore.session.Session.create_client = _create_client_reporting_calls  # type: ignore[method-assign]


def _allows(statement: dict[str, str], action: str, arn: str) -> bool:
    resource = statement["Resource"]
    matches = arn.startswith(resource[:-1]) if resource.endswith("*") else arn == resource
    return statement["Effect"] == "Allow" and statement["Action"] == action and matches


def ungranted(calls: set[S3Call]) -> list[str]:
    """Each call the policy of its bucket does not allow, with what is missing."""
    problems = []
    for call in sorted(calls, key=lambda c: (c.operation, c.bucket, c.key or "")):
        actions = ACTIONS_BY_OPERATION.get(call.operation)
        if actions is None:
            problems.append(
                f"{call.operation} on s3://{call.bucket}/{call.key or ''}: not in "
                "ACTIONS_BY_OPERATION, so the policy cannot grant it"
            )
            continue
        needs = [
            (action, f"arn:aws:s3:::{call.bucket}")
            if action == "s3:ListBucket"
            else (action, f"arn:aws:s3:::{call.bucket}/{call.key}")
            for action in actions
        ]
        if call.copy_source_key is not None:
            needs.append(("s3:GetObject", f"arn:aws:s3:::{call.bucket}/{call.copy_source_key}"))
        statements = iam_policy(call.bucket)["Statement"]
        for action, arn in needs:
            if not any(_allows(statement, action, arn) for statement in statements):
                problems.append(f"{call.operation} needs {action} on {arn}")
    return problems
