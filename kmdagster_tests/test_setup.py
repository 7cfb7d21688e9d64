"""Setup over SeaweedFS: preview, the valid-file rule, the permission check, status, confirm."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, materialize

from kmdagster.cli import main
from kmdagster.defs.resources import build_resources
from kmdagster.defs.setup_assets import build_permission_check, build_preview_asset
from kmdagster.defs.specs import SourceSpecs
from kmdagster.s3.archive import archive_file
from kmdagster.s3.objects import S3File
from kmdagster.s3.permissions import iam_policy
from kmdagster.warehouse.warehouse import DuckDBWarehouse
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import (
    ACCOUNTS,
    ADMIN,
    READ_ONLY,
    make_config,
    run_import,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config_file(
    tmp_path: Path, s3_server: SeaweedS3, bucket: str, warehouse_path: Path, monkeypatch: Any
) -> Path:
    path = write_config(tmp_path / "kmdagster.yaml", make_config(s3_server, bucket, warehouse_path))
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(path))
    return path


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def bucket_snapshot(s3: Any, bucket: str) -> dict[str, str]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: item["ETag"] for item in listed}


def file_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_preview_numbers_are_exact_for_the_first_pending_file(
    s3: Any, bucket: str, config_file: Path, capsys: Any
) -> None:
    first, later = km_file(seed=1, repeats=10), km_file(seed=2, repeats=3)
    s3.put_object(Bucket=bucket, Key="accounts.2.json", Body=later.data)
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=first.data)
    s3.put_object(Bucket=bucket, Key="accounts.0.csv", Body=later.data)
    s3.put_object(Bucket=bucket, Key="completed_imports/accounts.0.json", Body=later.data)

    code, out, _ = run_cli(capsys, "preview", "accounts", "--json")

    assert code == 0
    preview = json.loads(out)
    assert preview["file"] == "accounts.1.json"
    assert (preview["lines"], preview["valid_lines"]) == (first.lines, first.valid_lines)
    assert (preview["rejected_lines"], preview["blank_lines"]) == (first.rejects, first.blanks)
    assert preview["people"] == 10
    events = {e["name"]: (e["count"], e["people"]) for e in preview["events"]}
    assert events == {"signed up": (10, 10), "viewed  page": (10, 10), "purchased": (10, 10)}
    signed_up = next(e for e in preview["events"] if e["name"] == "signed up")
    assert signed_up["first_seen"] == "2023-11-15T01:00:00+00:00"  # BASE_TS + 10_000
    assert signed_up["last_seen"] == "2023-11-15T01:00:09+00:00"
    properties = {p["name"]: (p["count"], p["value_type"]) for p in preview["properties"]}
    assert properties == {"url": (10, "text"), "n": (10, "number"), "plan": (10, "text")}
    plan = next(p for p in preview["properties"] if p["name"] == "plan")
    assert plan["examples"] == ["Gold"]
    assert preview["aliases"]["count"] == 10 and preview["aliases"]["people"] == 20
    assert {r["reason"]: r["count"] for r in preview["reject_counts"]} == {
        "invalid_json": 10,
        "timestamp_in_milliseconds": 10,
    }
    assert [(r["line_no"], r["reason"]) for r in preview["rejects"][:2]] == [
        (7, "invalid_json"),
        (8, "timestamp_in_milliseconds"),
    ]
    warnings = "\n".join(preview["warnings"])
    assert "10 lines rejected (timestamp_in_milliseconds)" in warnings
    assert "3 event names new to the warehouse" in warnings


def test_preview_human_output_and_named_key(
    s3: Any, bucket: str, config_file: Path, capsys: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=km_file(seed=1).data)
    s3.put_object(Bucket=bucket, Key="accounts.2.json", Body=km_file(seed=2, repeats=4).data)

    code, out, _ = run_cli(capsys, "preview", "accounts", "--key", "accounts.2.json")

    assert code == 0
    assert f"## Preview of s3://{bucket}/accounts.2.json" in out
    assert re.search(r"\| signed up\s+\| Signed Up\s+\| 4\s+\| 4\s+\|", out)
    assert re.search(r"\| invalid_json\s+\| 4\s+\|", out)


def test_preview_warns_about_names_that_merge_and_names_the_warehouse_knows(
    s3: Any, bucket: str, config_file: Path, warehouse_path: Path, capsys: Any
) -> None:
    lines = [
        {"_p": "a", "_t": 1_700_000_000, "_n": "Signed Up", "Plan:Tier": "x"},
        {"_p": "b", "_t": 1_700_000_001, "_n": "signed up", "Plan Tier": "y"},
        {"_p": "c", "_t": 1_600_000, "_n": "Old"},
    ]
    s3.put_object(
        Bucket=bucket, Key="accounts.json", Body="\n".join(map(json.dumps, lines)).encode()
    )
    with DuckDBWarehouse.connect(warehouse_path) as warehouse:
        warehouse.database.connection.execute(
            "INSERT INTO km_names VALUES (nextval('km_name_ids'), 'event', 'signed up', 'x')"
        )

    code, out, _ = run_cli(capsys, "preview", "accounts", "--json")

    assert code == 0
    warnings = json.loads(out)["warnings"]
    assert "event names 'Signed Up', 'signed up' are stored as one event, 'signed up'" in warnings
    assert (
        "property names 'Plan Tier', 'Plan:Tier' are stored as one property, 'plan tier'"
        in warnings
    )
    assert any(w.startswith("1 lines rejected (timestamp_before_2009)") for w in warnings)
    assert not any(w.startswith("1 event names new") for w in warnings)  # the warehouse knows it
    assert "1 property names new to the warehouse: 'plan tier'" in warnings


def test_setup_fails_without_a_matching_file(
    s3: Any, bucket: str, config_file: Path, capsys: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.csv", Body=km_file(seed=1).data)

    code, out, err = run_cli(capsys, "preview", "accounts")

    assert code == 1 and out == ""
    assert f"s3://{bucket}/accounts*.json" in err
    assert "upload at least one file" in err


def test_setup_fails_when_no_matching_file_has_a_valid_line(
    s3: Any, bucket: str, config_file: Path, capsys: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=b'{"_p": "x"}\n[1]\n')
    s3.put_object(Bucket=bucket, Key="accounts.2.json", Body=b"\n\n")

    code, _, err = run_cli(capsys, "preview", "accounts")

    assert code == 1
    assert "no valid line in any of the 2 files" in err and bucket in err


def test_setup_passes_when_a_later_file_has_a_valid_line(
    s3: Any, bucket: str, config_file: Path, capsys: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=b"[1]\n")
    s3.put_object(Bucket=bucket, Key="accounts.2.json", Body=km_file(seed=2).data)

    code, out, _ = run_cli(capsys, "preview", "accounts", "--json")

    assert code == 0
    preview = json.loads(out)
    assert preview["file"] == "accounts.1.json" and preview["valid_lines"] == 0
    assert "accounts.2.json is the first file with one" in preview["warnings"][0]


def test_check_passes_with_full_rights_and_leaves_nothing(
    s3: Any, bucket: str, config_file: Path, capsys: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.json", Body=km_file(seed=1).data)
    before = bucket_snapshot(s3, bucket)

    code, out, _ = run_cli(capsys, "check", "accounts", "--json")

    assert code == 0
    report = json.loads(out)
    assert [(p["permission"], p["passed"]) for p in report["permissions"]] == [
        ("list", True),
        ("read", True),
        ("write", True),
        ("delete", True),
        ("abort", True),
    ]
    assert bucket_snapshot(s3, bucket) == before


def test_check_names_the_missing_permission_for_a_read_only_identity(
    s3: Any, bucket: str, config_file: Path, capsys: Any, monkeypatch: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.json", Body=km_file(seed=1).data)
    before = bucket_snapshot(s3, bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READ_ONLY.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READ_ONLY.secret_key)

    code, out, err = run_cli(capsys, "check", "accounts")

    assert code == 1
    rows = {
        m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+)\s+\| s3:\w+\s+\| (\w+)", out, re.M)
    }
    assert rows == {
        "list": "pass",
        "read": "pass",
        "write": "FAIL",
        "delete": "FAIL",
        "abort": "FAIL",
    }
    assert '"Action": "s3:DeleteObject"' in out
    assert f'"Resource": "arn:aws:s3:::{bucket}/completed_imports/*"' in out
    assert "missing S3 permissions" in err
    for secret in (READ_ONLY.access_key, READ_ONLY.secret_key, ADMIN.secret_key):
        assert secret not in out + err
    assert bucket_snapshot(s3, bucket) == before


def test_preview_and_check_leave_the_warehouse_untouched(
    s3: Any, bucket: str, config_file: Path, warehouse_path: Path, capsys: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.json", Body=km_file(seed=1).data)
    run_cli(capsys, "preview", "accounts")
    run_cli(capsys, "check", "accounts")
    assert not warehouse_path.exists()  # no warehouse yet: none is created

    with DuckDBWarehouse.connect(warehouse_path):
        pass
    digest = file_digest(warehouse_path)
    assert run_cli(capsys, "preview", "accounts")[0] == 0
    assert run_cli(capsys, "status", "accounts")[0] == 0
    assert file_digest(warehouse_path) == digest


def test_status_shows_every_state_and_the_backlog(
    s3: Any, bucket: str, config_file: Path, warehouse_path: Path, capsys: Any
) -> None:
    for key, seed in (("accounts.1.json", 1), ("accounts.2.json", 2), ("accounts.3.json", 3)):
        s3.put_object(Bucket=bucket, Key=key, Body=km_file(seed=seed, repeats=200).data)
    s3.put_object(Bucket=bucket, Key="accounts.4.json", Body=km_file(seed=4).data)

    def import_one(key: str, budget: float) -> Any:
        return run_import(s3, warehouse, bucket, key, 4096, time_budget_seconds=budget)

    with DuckDBWarehouse.connect(warehouse_path) as warehouse:
        done = import_one("accounts.1.json", 600).ledger
        head = S3File("accounts.1.json", done.file_etag, done.size_bytes)
        assert done.completed_at is not None
        warehouse.mark_archived(done, archive_file(s3, bucket, head, done.completed_at))
        partial = import_one("accounts.2.json", 0).ledger
        import_one("accounts.3.json", 0)
    s3.put_object(Bucket=bucket, Key="accounts.3.json", Body=km_file(seed=5).data)

    code, out, _ = run_cli(capsys, "status", "accounts", "--json")

    assert code == 0
    report = json.loads(out)
    # In import order: the backlog first, numbered as the schedule will take it, then the rest.
    states = [(f["queue_position"], f["key"], f["state"]) for f in report["files"]]
    assert states == [
        (1, "accounts.2.json", "in_progress"),
        (2, "accounts.3.json", "pending"),
        (3, "accounts.4.json", "pending"),
        (None, "accounts.1.json", "archived"),
        (None, "accounts.3.json", "superseded"),
    ]
    archived = report["files"][3]
    assert archived["archived_key"].startswith("completed_imports/")
    in_progress = report["files"][0]
    assert in_progress["next_offset"] == partial.next_offset
    assert 0 < in_progress["percent_done"] < 100
    assert report["backlog"] == 3
    assert report["backlog_done_by"] is not None

    code, out, _ = run_cli(capsys, "status", "accounts")
    assert "Backlog: 3 files" in out and f"resume at byte {partial.next_offset:,}" in out
    assert out.index("accounts.2.json") < out.index("accounts.4.json") < out.index("accounts.1")


def test_status_during_an_import_shows_the_bucket_and_says_the_ledger_is_busy(
    s3: Any, bucket: str, config_file: Path, warehouse_path: Path, capsys: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=km_file(seed=1).data)
    script = (
        "import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); "
        "print('held', flush=True); time.sleep(60)"
    )
    with DuckDBWarehouse.connect(warehouse_path):
        pass  # the warehouse exists; another process now holds its write lock
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(warehouse_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, out, err = run_cli(capsys, "status", "accounts", "--json", "--wait", "1")
    finally:
        holder.kill()
        holder.wait()

    assert code == 0
    report = json.loads(out)
    assert [(f["key"], f["state"]) for f in report["files"]] == [("accounts.1.json", "pending")]
    # The holder is named, with its command line, and what to do.
    note = report["ledger_note"]
    assert f"held by process {holder.pid} (" in note and "print('held'" in note
    assert "kmdagster sql" in note and "ledger not read" in err


def confirm_with_next_ticks(capsys: Any, hours: int) -> tuple[int, str, str, set[str]]:
    """``kmdagster confirm accounts``, and the full hour ``hours`` ahead as read before
    and after it (an hour may turn while it runs)."""
    before = datetime.now(timezone.utc)
    code, out, err = run_cli(capsys, "confirm", "accounts")
    ahead = (t + timedelta(hours=hours) for t in (before, datetime.now(timezone.utc)))
    ticks = {f"{t:%Y-%m-%d %H}:00 UTC" for t in ahead}
    return code, out, err, ticks


def test_confirm_switches_the_sensor_and_schedule_on(
    s3: Any, bucket: str, config_file: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(ROOT)

    code, _, err = run_cli(capsys, "confirm", "accounts")
    assert code == 1 and "upload at least one file" in err  # empty bucket: not confirmed
    with DagsterInstance.get() as instance:
        assert not [s for s in instance.all_instigator_state() if s.status.value == "RUNNING"]

    s3.put_object(Bucket=bucket, Key="accounts.json", Body=km_file(seed=1).data)
    code, out, err, ticks = confirm_with_next_ticks(capsys, hours=1)

    assert code == 0, err
    assert "confirmed: accounts registers new files and imports them at one file per tick" in out
    assert "## Preview of" in out and "| pass" in out
    # One file: the next full hour's tick takes it.
    assert any(
        f"Waiting: 1 file; at one file per tick, the backlog is done by the tick at {tick}." in out
        for tick in ticks
    ), out
    assert "kmdagster backfill" not in out  # one file: the next tick takes it
    with DagsterInstance.get() as instance:
        running = {
            state.instigator_name
            for state in instance.all_instigator_state()
            if state.status.value == "RUNNING"
        }
    assert running == {ACCOUNTS.sensor, ACCOUNTS.schedule}
    # The UI shows what was confirmed: the preview materialized, the permission check passed.
    with DagsterInstance.get() as instance:
        preview_key = AssetKey(["accounts", "import_preview"])
        preview = instance.get_latest_materialization_event(preview_key)
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(preview_key, "s3_permissions")]
        )
    assert preview is not None and preview.asset_materialization is not None
    assert preview.asset_materialization.metadata["valid_lines"].value == 50
    [execution] = check.values()
    assert execution.status.value == "SUCCEEDED"

    # Files waiting for the ticks: confirm says how to import them now.
    for hour in range(3):
        s3.put_object(Bucket=bucket, Key=f"accounts.{hour}.json", Body=km_file(seed=1).data)
    code, out, err, ticks = confirm_with_next_ticks(capsys, hours=4)
    assert code == 0, err
    assert any(
        f"Waiting: 4 files; at one file per tick, the backlog is done by the tick at {tick}." in out
        for tick in ticks
    ), out
    assert "To import the 4 waiting files now, not 1 a tick: `kmdagster backfill accounts`" in out


def test_preview_asset_and_permission_check_in_dagster(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.json", Body=km_file(seed=1).data)
    config = make_config(s3_server, bucket, warehouse_path)
    source = config.sources[0]

    result = materialize(
        [
            build_preview_asset(SourceSpecs(source, config.warehouse.backend)),
            build_permission_check(SourceSpecs(source, config.warehouse.backend)),
        ],
        resources=build_resources(config),
    )

    assert result.success
    metadata = result.asset_materializations_for_node("accounts__import_preview")[0].metadata
    assert metadata["valid_lines"].value == 50
    assert "| signed up" in str(metadata["preview"].value)
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.metadata["delete"].value == "pass"


def test_readme_policy_is_the_one_the_check_prints() -> None:
    readme = (ROOT / "docs" / "setup.md").read_text()
    blocks = re.findall(r"```json\n(\s*\{\n\s*\"Version\".*?)\n\s*```", readme, re.S)
    assert blocks, "README has no IAM policy block"
    assert json.loads(textwrap.dedent(blocks[0])) == iam_policy("my-km-imports")


def test_policy_command_prints_the_bucket_scoped_policy(config_file: Path, capsys: Any) -> None:
    code, out, _ = run_cli(capsys, "policy", "accounts")
    assert code == 0
    policy = json.loads(out)
    actions = [statement["Action"] for statement in policy["Statement"]]
    assert actions == [
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    ]
    assert all("*" not in action for action in actions)
    assert os.environ["KMDAGSTER_CONFIG"] == str(config_file)
