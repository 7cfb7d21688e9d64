"""What the CLI says when the setup is wrong names the cause and the fix, first: a missing
bucket, refused credentials, a file with no valid line, a configuration path that does not
exist, and a warehouse file that is empty, not DuckDB, or newer than this kmdagster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from kmdagster.warehouse.schema import SCHEMA_VERSION
from kmdagster.warehouse.warehouse import DuckDBWarehouse
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import ADMIN, make_config, write_config
from kmdagster_tests.test_setup import run_cli


@pytest.fixture
def configured(
    s3_server: SeaweedS3, bucket: str, warehouse_path: Path, tmp_path: Path, monkeypatch: Any
) -> Path:
    path = write_config(tmp_path / "kmdagster.yaml", make_config(s3_server, bucket, warehouse_path))
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return path


def test_check_on_a_missing_bucket_says_so_and_grants_nothing(
    s3_server: SeaweedS3, tmp_path: Path, warehouse_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    config = make_config(s3_server, "km-no-such-bucket", warehouse_path)
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(write_config(tmp_path / "km.yaml", config)))
    for command in ("check", "confirm"):
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
        code, out, err = run_cli(capsys, command, "accounts")
        assert code == 1, command
        assert "bucket 'km-no-such-bucket' does not exist" in err
        assert "sources[].bucket" in err
        assert "IAM" not in out and "Grant" not in out and "permission" not in err.lower()


def test_check_with_a_wrong_secret_says_the_credentials_were_refused(
    configured: Path, capsys: Any, monkeypatch: Any
) -> None:
    wrong = "not-the-secret-" + ADMIN.secret_key[:8]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    code, out, err = run_cli(capsys, "check", "accounts")
    assert code == 1
    assert "credentials were refused (SignatureDoesNotMatch)" in err
    assert "AWS_SECRET_ACCESS_KEY" in err and "Grant" not in out
    assert wrong not in out + err and ADMIN.secret_key not in out + err


def test_preview_of_a_key_with_no_valid_line_prints_each_reason(
    s3: Any, bucket: str, configured: Path, capsys: Any
) -> None:
    s3.put_object(
        Bucket=bucket,
        Key="accounts.1.json",
        Body=b'{"_p": "x"}\n[1]\n{"_t": 1700000000, "_n": "a"}\n',
    )
    code, out, err = run_cli(capsys, "preview", "accounts", "--key", "accounts.1.json")
    assert code == 1
    assert "no valid line in s3://" in err and "reject reasons are in the preview" in err
    assert "kmdagster preview" not in err  # it does not send the user to the same command
    assert "### Rejected lines" in out
    for line_no in (1, 2, 3):
        assert f"| {line_no} " in out  # each line with its reason
    assert "missing_t" in out or "missing" in out


def test_a_config_path_that_does_not_exist_is_named_as_given(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.delenv("KMDAGSTER_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere.yaml"
    code, _, err = run_cli(capsys, "--config", str(missing), "status", "accounts")
    assert code == 2
    assert f"{missing}: configuration file not found; check the path given by --config" in err
    assert "KMDAGSTER_CONFIG" not in err

    code, _, err = run_cli(capsys, "status", "accounts")  # nothing given: the default
    assert code == 2 and "create kmdagster.yaml in the working directory" in err


def not_duckdb(path: Path) -> None:
    path.write_text("a spreadsheet export, not a database\n")


def newer_warehouse(path: Path) -> None:
    with DuckDBWarehouse.connect(path):
        pass
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE km_schema SET version = ?", [SCHEMA_VERSION + 1])


@pytest.mark.parametrize(
    ("make_file", "expected"),
    [
        (Path.touch, None),  # empty: nothing imported yet, every command works
        (not_duckdb, "is not a DuckDB database; point warehouse.duckdb_path at a new path"),
        (newer_warehouse, "written by a newer kmdagster"),
    ],
    ids=["empty", "not-duckdb", "newer"],
)
def test_every_command_gives_one_clear_line_for_an_odd_warehouse_file(
    s3: Any,
    bucket: str,
    configured: Path,
    warehouse_path: Path,
    capsys: Any,
    make_file: Any,
    expected: str | None,
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=km_file(seed=1).data)
    make_file(warehouse_path)
    for command in (
        ["status", "accounts"],
        ["preview", "accounts"],
        ["sql", "SELECT count(*) FROM km_import_files"],
        ["upgrade-warehouse"],
    ):
        code, _, err = run_cli(capsys, *command)
        if expected is None:
            if command[0] == "sql":  # no tables yet
                assert code == 1 and "has no tables yet: nothing is imported" in err
            else:
                assert code == 0, (command, err)
            continue
        assert code == 1, command
        [line] = [line for line in err.splitlines() if line.startswith("kmdagster:")]
        assert expected in line and str(warehouse_path) in line, (command, err)
        assert "Traceback" not in err
