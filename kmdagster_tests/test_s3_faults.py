"""S3 faults through a fault-injecting proxy on 127.0.0.1: transient errors are retried and
every line still loads exactly once; permanent errors fail clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import DagsterInstance

from kmdagster.config import KmConfig, S3Settings
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.run_history import failure_message
from kmdagster.s3.objects import ARCHIVE_PREFIX, S3AccessError, head_file
from kmdagster.s3.piece_reader import PieceReader
from kmdagster.s3.rejects_file import rejects_key_for
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.fault_proxy import FAULTS, FaultPlan, FaultProxy, every_nth
from kmdagster_tests.helpers import ACCOUNTS, ADMIN, WRITE_ONLY, make_config
from kmdagster_tests.ticks import run_partition, step_failure_message

KEY = "accounts.json"


def through(proxy: FaultProxy, config: KmConfig) -> KmConfig:
    """The same configuration with S3 reached through the proxy and a short read timeout."""
    s3 = S3Settings(
        endpoint_url=proxy.endpoint_url,
        region_name="us-east-1",
        max_attempts=8,
        read_timeout_seconds=1,
        connect_timeout_seconds=2,
    )
    return config.model_copy(update={"s3": s3})


def test_transient_s3_errors_are_retried_and_every_line_loads_once(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    instance: DagsterInstance,
) -> None:
    expected = km_file(seed=3, repeats=60)  # 480 lines in about 45 chunks of 1 KB
    s3.put_object(Bucket=bucket, Key=KEY, Body=expected.data)
    plan = FaultPlan(every_nth(2, FAULTS, lambda method, path, headers: True), stall_seconds=2)
    config = make_config(s3_server, bucket, warehouse_path, chunk_bytes=1024)
    instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])

    with FaultProxy(s3_server.endpoint_url, plan) as proxy:
        defs = build_definitions(through(proxy, config))
        result = defs.resolve_job_def(ACCOUNTS.job).execute_in_process(
            instance=instance, partition_key=KEY
        )

    assert result.success
    assert set(plan.injected) == set(FAULTS), (plan.injected, plan.requests)
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        counts = con.execute(
            "SELECT (SELECT count(*) FROM km_events), "
            "(SELECT count(DISTINCT line_no) FROM km_events), "
            "(SELECT count(*) FROM km_aliases), (SELECT count(*) FROM km_rejects), "
            "(SELECT count(*) FROM km_properties)"
        ).fetchone()
        ledger = con.execute(
            "SELECT status, lines_read, lines_loaded, lines_rejected, lines_blank "
            "FROM km_import_files"
        ).fetchall()
    assert counts == (
        expected.events,
        expected.events,
        expected.aliases,
        expected.rejects,
        expected.properties,
    )
    assert ledger == [
        ("archived", expected.lines, expected.valid_lines, expected.rejects, expected.blanks)
    ]
    # The archive copy and its rejects file, each once, whatever the faults on their PUTs.
    archived, rejects = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert archived.startswith(ARCHIVE_PREFIX) and rejects == rejects_key_for(archived)
    written = s3.get_object(Bucket=bucket, Key=rejects)["Body"].read().splitlines()
    assert len(written) == expected.rejects


def test_a_body_cut_off_mid_transfer_is_read_again_from_the_same_range(
    s3_server: SeaweedS3, s3: Any, bucket: str
) -> None:
    data = km_file(seed=4, repeats=30).data
    s3.put_object(Bucket=bucket, Key=KEY, Body=data)
    ranged_gets = every_nth(1, ("reset_mid_body",), lambda m, p, h: "Range" in h)
    cuts = {"left": 3}

    def choose(method: str, path: str, headers: dict[str, str]) -> str | None:
        if cuts["left"] and ranged_gets(method, path, headers):
            cuts["left"] -= 1
            return "reset_mid_body"
        return None

    plan = FaultPlan(choose)
    with FaultProxy(s3_server.endpoint_url, plan) as proxy:
        proxied = s3_server.client(ADMIN, endpoint_url=proxy.endpoint_url)
        file = head_file(proxied, bucket, KEY)
        assert file is not None
        reader = PieceReader(proxied, bucket, KEY, file.etag, file.size, len(data) + 10)
        chunk = reader.read_piece(0)

    assert plan.injected["reset_mid_body"] == 3
    assert chunk.data == data and chunk.end == len(data)


def test_pieces_stream_from_one_get_and_resume_where_a_body_broke(
    s3_server: SeaweedS3, s3: Any, bucket: str
) -> None:
    data = km_file(seed=6, repeats=60).data
    s3.put_object(Bucket=bucket, Key=KEY, Body=data)
    cuts = {"left": 2}

    def choose(method: str, path: str, headers: dict[str, str]) -> str | None:
        if cuts["left"] and method == "GET" and "Range" in headers:
            cuts["left"] -= 1
            return "reset_mid_body"
        return None

    plan = FaultPlan(choose)
    pieces = []
    with FaultProxy(s3_server.endpoint_url, plan) as proxy:
        proxied = s3_server.client(ADMIN, endpoint_url=proxy.endpoint_url)
        file = head_file(proxied, bucket, KEY)
        assert file is not None
        with PieceReader(proxied, bucket, KEY, file.etag, file.size, 1000) as reader:
            offset = 0
            while offset < file.size:
                piece = reader.read_piece(offset)
                pieces.append(piece.data)
                offset = piece.end
    # Many pieces, three GETs: two broken off mid-body, each resumed where it broke.
    assert len(pieces) > 25 and all(p.endswith(b"\n") for p in pieces[:-1])
    assert b"".join(pieces) == data
    assert plan.injected["reset_mid_body"] == 2 and plan.requests["GET"] == 3


def test_an_s3_error_that_lasts_mid_file_fails_the_run_naming_it_and_the_file_resumes(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    instance: DagsterInstance,
) -> None:
    expected = km_file(seed=3, repeats=2_000)  # 900 KB: its first GET breaks off midway
    s3.put_object(Bucket=bucket, Key=KEY, Body=expected.data)
    broken = {"bodies": 0}

    def choose(method: str, path: str, headers: dict[str, str]) -> str | None:
        """The first ranged GET's body breaks off; from then on S3 answers 500 to each."""
        if method != "GET" or "Range" not in headers:
            return None
        broken["bodies"] += 1
        return "reset_mid_body" if broken["bodies"] == 1 else "status_500"

    config = make_config(s3_server, bucket, warehouse_path, chunk_bytes=16 * 1024)
    instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])
    with FaultProxy(s3_server.endpoint_url, FaultPlan(choose)) as proxy:
        result = run_partition(through(proxy, config), instance, KEY)

    assert not result.success
    message = failure_message(instance, result.run_id)  # what status and alerts show
    assert message.startswith(f"GetObject on s3://{bucket}/{KEY} failed: InternalError "), message
    assert "after the client's retries" in message and "reading from byte " in message
    assert message.endswith("the next run resumes from the last committed chunk"), message
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        [(committed,)] = con.execute("SELECT next_offset FROM km_import_files").fetchall()
    assert 0 < committed < len(expected.data)  # the chunks before the break stay committed

    assert run_partition(config, instance, KEY).success  # S3 well again: the file resumes
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        events = con.execute("SELECT count(*), count(DISTINCT line_no) FROM km_events").fetchone()
    assert events == (expected.events, expected.events)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("no_such_bucket", "does not exist; check the source's bucket name"),
        ("no_such_key", "no longer exists; it was deleted or moved before its import finished"),
        ("access_denied", "was denied: grant s3:GetObject"),
    ],
)
def test_permanent_s3_errors_fail_the_run_naming_bucket_key_and_fix(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    instance: DagsterInstance,
    monkeypatch: Any,
    setup: str,
    expected: str,
) -> None:
    config = make_config(s3_server, bucket, warehouse_path)
    if setup == "no_such_bucket":
        config = make_config(s3_server, "km-missing-bucket", warehouse_path)
    if setup in ("access_denied", "no_such_bucket"):
        s3.put_object(Bucket=bucket, Key=KEY, Body=km_file(seed=1).data)
    if setup == "access_denied":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRITE_ONLY.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRITE_ONLY.secret_key)
    instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])

    result = run_partition(config, instance, KEY)

    assert not result.success
    message = step_failure_message(result)
    assert expected in message
    bucket_named = "km-missing-bucket" if setup == "no_such_bucket" else bucket
    assert bucket_named in message
    if setup != "no_such_bucket":
        assert KEY in message


def test_head_of_a_key_in_a_missing_bucket_names_the_bucket(s3_server: SeaweedS3) -> None:
    client = s3_server.client(ADMIN)
    with pytest.raises(S3AccessError, match="bucket 'km-missing-bucket' does not exist"):
        head_file(client, "km-missing-bucket", KEY)


def test_a_server_that_ignores_the_range_is_refused_not_read(
    s3_server: SeaweedS3, s3: Any, bucket: str
) -> None:
    data = km_file(seed=7, repeats=20).data
    s3.put_object(Bucket=bucket, Key=KEY, Body=data)
    # Every ranged GET is answered with the whole object, chunked: neither Content-Length
    # nor Content-Range tells the client it got something else.
    plan = FaultPlan(lambda method, path, headers: "ignore_range" if "Range" in headers else None)
    plan.whole_body = data
    with FaultProxy(s3_server.endpoint_url, plan) as proxy:
        proxied = s3_server.client(ADMIN, endpoint_url=proxy.endpoint_url)
        file = head_file(proxied, bucket, KEY)
        assert file is not None
        second_line = data.index(b"\n") + 1
        reader = PieceReader(proxied, bucket, KEY, file.etag, file.size, 1000)
        with reader, pytest.raises(S3AccessError, match="ignored the Range header") as refused:
            reader.read_piece(second_line)
    assert f"s3://{bucket}/{KEY}" in str(refused.value)
    assert plan.injected["ignore_range"] == 1
