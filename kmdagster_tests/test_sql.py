"""`kmdagster sql`: the analysts' way to query a DuckDB warehouse that never makes an
import fail, since it holds the file only while its query runs."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from dagster import DagsterInstance

from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import make_config, write_config
from kmdagster_tests.test_import_asset import KEY, materialize_partition

ROOT = Path(__file__).resolve().parent.parent


def kmdagster(
    config_path: Path, *args: str, columns: int | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, as an analyst's terminal runs it (``columns``
    wide, as a terminal sets COLUMNS; else piped, as to a file)."""
    env = {**os.environ, "KMDAGSTER_CONFIG": str(config_path)}
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "kmdagster.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_queries_while_an_import_commits_never_fail_it(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    tmp_path: Path,
    instance: DagsterInstance,
) -> None:
    file = km_file(seed=21, repeats=60)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    config = make_config(s3_server, bucket, warehouse_path, chunk_bytes=1024)
    config_path = write_config(tmp_path / "kmdagster.yaml", config)
    assert kmdagster(config_path, "sql", "SELECT 1").returncode == 1  # no tables yet

    outcome: dict[str, Any] = {}
    importing = threading.Thread(
        target=lambda: outcome.update(result=materialize_partition(config, instance, KEY))
    )
    importing.start()
    counts = []
    while importing.is_alive() or not counts:
        answer = kmdagster(config_path, "sql", "--csv", "SELECT count(*) AS n FROM km_events")
        if answer.returncode == 1 and "no tables yet" in answer.stderr:
            continue  # the import has not created them yet
        assert answer.returncode == 0, answer.stderr
        counts.append(int(answer.stdout.splitlines()[1]))
    importing.join()

    assert outcome["result"].success  # every query waited its turn; the import never failed
    assert counts == sorted(counts) and counts[-1] == file.events


def test_the_readme_query_prints_a_table_and_bad_sql_says_why(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    tmp_path: Path,
    instance: DagsterInstance,
) -> None:
    file = km_file(seed=22, repeats=5)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    config = make_config(s3_server, bucket, warehouse_path)
    config_path = write_config(tmp_path / "kmdagster.yaml", config)
    assert materialize_partition(config, instance, KEY).success

    query = "SELECT event, count(*) n FROM km_events GROUP BY 1 ORDER BY 2 DESC, 1"
    table = kmdagster(config_path, "sql", query)
    assert table.returncode == 0, table.stderr
    as_csv = kmdagster(config_path, "sql", "--csv", query)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert sum(int(row["n"]) for row in rows) == file.events
    assert all(row["event"] in table.stdout for row in rows)
    assert table.stdout.rstrip().endswith(f"{len(rows):,} rows")

    # A wide row: as wide as the terminal says, never cut when piped.
    wide = "SELECT " + ", ".join(f"'{n:02d}-{'x' * 20}' AS c{n}" for n in range(12))
    piped = kmdagster(config_path, "sql", wide)
    assert all(f"{n:02d}-{'x' * 20}" in piped.stdout for n in range(12)), piped.stdout
    for columns in (250, 120):
        framed = kmdagster(config_path, "sql", wide, columns=columns)
        widths = [len(line) for line in framed.stdout.splitlines()[:-1]]
        assert max(widths) <= columns and max(widths) > min(columns, 100), framed.stdout

    wrong = kmdagster(config_path, "sql", "SELECT nope FROM km_events")
    assert wrong.returncode == 1 and "the query failed" in wrong.stderr and "nope" in wrong.stderr
