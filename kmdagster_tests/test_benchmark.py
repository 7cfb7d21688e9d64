"""The benchmark at a tiny size, so it keeps working (the real run takes minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kmdagster_dev.postgres import postgres_bin_dir

pytestmark = pytest.mark.slow  # the benchmark run end to end, small

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_runs_end_to_end_and_methods_agree(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--lines",
            "3000",
            "--memory-gb",
            "",
            "--scale-keys",
            "300",
            "--tick-partitions",
            "200",
            "--dlt-lines",
            "300",
            "--invalid-gb",
            "0.002",
            "--rounds",
            "1",
            "--workdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "same rows from baseline, split and import: yes" in out
    for method in ("orjson parse only", "msgspec + checks", "validate-and-split", "import job"):
        assert method in out
    assert "sensor over 300 keys (30 matching)" in out
    assert "schedule tick with 200 partitions (190 archived)" in out
    assert "every line invalid" in out and "compact / wide storage:" in out
    assert "reading and splitting, no rows stored" in out and "at equal use of the cores" in out
    if postgres_bin_dir() is None:  # the PostgreSQL part says how to get the server
        assert "skipped: no PostgreSQL server binaries" in out
        return
    assert out.count("HOLDS") + out.count("MISSED") == 9
    assert "same lines read into DuckDB and PostgreSQL: yes" in out
    assert "| PostgreSQL | 3,000 |" in out and "at the same time" in out
    assert "| 1,000,000 | 200,000 |" in out  # km_people at scale


def test_the_warehouses_benchmark_sets_the_import_against_duckdbs_reader() -> None:
    """``benchmarks.lake`` at a tiny size on the property-heavy profile (the one its goals
    are judged on; the mixed one runs the same code): each warehouse, DuckDB's own
    ``read_json`` on the same file, the ratio with its verdict, and where the import job's
    time goes."""
    if postgres_bin_dir() is None:
        pytest.skip("no PostgreSQL server binaries: the benchmark starts its own server")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.lake",
            "--lines",
            "3000",
            "--pairs",
            "1",
            "--property-heavy-only",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| mixed:" not in out  # left out as asked
    assert "| property_heavy: DuckDB `read_json` over httpfs (one wide table) |" in out
    for warehouse in ("DuckDB file", "DuckLake (local catalog, folder)"):
        said = f"- property_heavy, {warehouse}: import job within 2x of DuckDB's read_json: "
        assert said in out
    paired = "- property_heavy, DuckDB file: import job within 2x of DuckDB's read_json, median"
    assert paired in out
    breakdown = out.split("Where the import job's time goes", 1)[1]
    for stage in ("the split", "insert km_properties", "the commit and the ledger", "reading"):
        assert f"| {stage}" in breakdown, stage
    assert "| **the job, in its process** |" in breakdown


def test_the_many_sources_benchmark_runs_the_real_daemon() -> None:
    """``benchmarks.many_sources`` at three sources: the daemon registers every file and
    ticks every schedule, and the figures and verdicts are printed."""
    done = subprocess.run(
        # Two sensor rounds at its 30 s interval; the schedule verdict may then have no
        # whole minute to judge (MISSED), which this test does not weigh.
        [sys.executable, "-m", "benchmarks.many_sources", "--sources", "3", "--minutes", "1.25"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "3 sources: definitions load in" in out
    assert "registered: 3 of 3 files" in out
    assert "file sensor rounds: median" in out
    assert "- every file registered within two sensor intervals: HOLDS" in out
    assert out.count("HOLDS") + out.count("MISSED") == 2
