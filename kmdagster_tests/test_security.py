"""Secrets stay secret, keys cannot escape completed_imports/, servers bind to 127.0.0.1,
and the documented IAM policy is least-privilege."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance
from dagster_shared.serdes import serialize_value

from kmdagster import seams
from kmdagster.cli import main
from kmdagster.defs.factory import build_definitions
from kmdagster.s3.archive import archive_file, archive_key_for
from kmdagster.s3.objects import ARCHIVE_PREFIX, FilePattern, S3AccessError, S3File
from kmdagster.s3.permissions import iam_policy
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3, seaweed_command
from kmdagster_tests.helpers import (
    ACCOUNTS,
    ADMIN,
    READ_ONLY,
    WRITE_ONLY,
    make_config,
    write_config,
)
from kmdagster_tests.s3_calls import S3Call, recording_s3_calls, ungranted

ROOT = Path(__file__).resolve().parent.parent
SECRETS = [identity.secret_key for identity in (ADMIN, READ_ONLY, WRITE_ONLY)] + [
    identity.access_key for identity in (ADMIN, READ_ONLY, WRITE_ONLY)
]


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a credential appeared in {where}"


def test_secrets_never_appear_in_logs_metadata_errors_or_cli_output(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    instance: DagsterInstance,
    tmp_path: Path,
    capfd: Any,
    monkeypatch: Any,
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=km_file(seed=1).data)
    s3.put_object(Bucket=bucket, Key="accounts.2.json", Body=km_file(seed=2).data)
    config = make_config(s3_server, bucket, warehouse_path)
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(write_config(tmp_path / "km.yaml", config)))
    instance.add_dynamic_partitions(ACCOUNTS.partitions, ["accounts.1.json", "accounts.2.json"])
    job = build_definitions(config).resolve_job_def(ACCOUNTS.job)

    succeeded = job.execute_in_process(instance=instance, partition_key="accounts.1.json")
    for command in (["preview", "accounts"], ["check", "accounts"], ["status", "accounts"]):
        assert main(command) == 0
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRITE_ONLY.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRITE_ONLY.secret_key)
    denied = job.execute_in_process(
        instance=instance, partition_key="accounts.2.json", raise_on_error=False
    )
    assert main(["check", "accounts", "--json"]) == 1
    assert main(["preview", "accounts"]) == 1
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # a refused signature
    assert main(["status", "accounts"]) == 1

    assert succeeded.success and not denied.success
    for run in (succeeded, denied):
        for record in instance.all_logs(run.run_id):
            assert_no_secret(serialize_value(record), f"run {run.run_id}'s event log")
    captured = capfd.readouterr()
    assert "was denied" in captured.out + captured.err  # the failures were reported...
    assert_no_secret(captured.out + captured.err, "process output")  # ...without credentials


@pytest.mark.parametrize(
    "key",
    [
        "../accounts.json",
        "/accounts.json",
        "a/../accounts.json",
        "completed_imports/accounts.json",
        "..\\/accounts.json",
        "accounts/../../x.json",
    ],
)
def test_keys_with_paths_are_never_imported_or_archived(key: str) -> None:
    assert not FilePattern.from_base_filename("accounts.json").matches(key)
    with pytest.raises(S3AccessError, match="only root-level keys are imported"):
        archive_file(None, "km-bucket", S3File(key, '"e"', 1), datetime.now(timezone.utc))


@pytest.mark.parametrize(
    "key",
    [
        "accounts ü,x.json",
        "accounts\u202e.json",
        "accounts\t\x01.json",
        "accounts..json",
        "accounts😀.json",
    ],
)
def test_archive_keys_stay_under_completed_imports_of_the_same_name(key: str) -> None:
    when = datetime(2026, 11, 26, tzinfo=timezone.utc)
    for attempt in (0, 3):
        archived = archive_key_for(key, when, attempt)
        assert archived.startswith(f"{ARCHIVE_PREFIX}2026/11/26/")
        name = archived.removeprefix(f"{ARCHIVE_PREFIX}2026/11/26/")
        assert "/" not in name and name.endswith(".json")
    assert archive_key_for(key, when) == f"{ARCHIVE_PREFIX}2026/11/26/{key}"


def test_every_server_we_start_binds_to_localhost() -> None:
    command = " ".join(seaweed_command(Path("/tmp/x"), Path("/tmp/x/ids.json"), {}))
    assert "-ip=127.0.0.1" in command and "-ip.bind=127.0.0.1" in command
    dev = (ROOT / "kmdagster_dev" / "dev.py").read_text()
    assert '"dev", "-h", "127.0.0.1"' in dev
    files = [*ROOT.glob("kmdagster_dev/*.py"), *ROOT.glob(".ci/*"), ROOT / "Makefile"]
    # docs/deploy.md's container listens on 0.0.0.0 inside its pod, as containers must.
    guides = [page for page in ROOT.glob("docs/*.md") if page.name != "deploy.md"]
    for path in [*files, ROOT / "README.md", *guides]:
        text = path.read_text()
        assert "0.0.0.0" not in text, path
        for launch in re.findall(r"(?:dagster|dg) dev -[^\n`]*", text):  # a command line, not prose
            assert "-h 127.0.0.1" in launch, (path, launch)


def test_documented_iam_policy_is_least_privilege() -> None:
    policy = iam_policy("my-km-imports")
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "*" not in statement["Action"]
        assert statement["Resource"].startswith("arn:aws:s3:::my-km-imports")
        assert statement["Resource"] != "*"
    writes = [
        s for s in policy["Statement"] if s["Action"] in ("s3:PutObject", "s3:AbortMultipartUpload")
    ]
    assert [s["Resource"] for s in writes] == [f"arn:aws:s3:::my-km-imports/{ARCHIVE_PREFIX}*"] * 2


def test_the_policy_grants_every_s3_call_of_check_import_archive_and_a_failed_parts_copy(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    """Every call kmdagster makes on the way (the permission check, preview, status, an
    import with rejects, its archive and rejects file, a parts copy that fails and is
    aborted) is one the printed policy grants on that key."""
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=km_file(seed=4).data)
    config = make_config(s3_server, bucket, warehouse_path)
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(write_config(tmp_path / "km.yaml", config)))
    instance.add_dynamic_partitions(ACCOUNTS.partitions, ["accounts.1.json"])
    job = build_definitions(config).resolve_job_def(ACCOUNTS.job)
    data = km_file(seed=5, repeats=20).data
    old_etag = s3.put_object(Bucket=bucket, Key="accounts.2.json", Body=data)["ETag"]
    s3.put_object(Bucket=bucket, Key="accounts.2.json", Body=data + b"\n")

    with recording_s3_calls() as recorder:
        for command in (["check", "accounts"], ["preview", "accounts"], ["status", "accounts"]):
            assert main(command) == 0
        assert job.execute_in_process(instance=instance, partition_key="accounts.1.json").success
        with (
            pytest.raises(S3AccessError, match="no longer holds the imported"),
            seams.injected(single_copy_max_bytes=1000, copy_part_bytes=len(data) // 3),
        ):
            archive_file(
                s3,
                bucket,
                S3File(key="accounts.2.json", etag=old_etag, size=len(data)),
                datetime.now(timezone.utc),
            )

    assert recorder.operations() >= {
        "ListObjectsV2",
        "HeadObject",
        "GetObject",
        "CopyObject",
        "PutObject",  # the rejects file, and the permission check's probe
        "DeleteObject",
        "CreateMultipartUpload",
        "UploadPartCopy",
        "AbortMultipartUpload",
    }
    assert ungranted(recorder.calls) == []


def test_a_call_outside_the_policy_is_reported() -> None:
    calls = {
        S3Call("PutObject", "b", "accounts.json", None),  # a write outside completed_imports/
        S3Call("PutBucketPolicy", "b", None, None),  # an operation the policy does not know
        S3Call("CopyObject", "b", "completed_imports/x.json", "accounts.json"),  # granted
    }
    assert ungranted(calls) == [
        "PutBucketPolicy on s3://b/: not in ACTIONS_BY_OPERATION, so the policy cannot grant it",
        "PutObject needs s3:PutObject on arn:aws:s3:::b/accounts.json",
    ]
