"""Loading the code location: names users rely on, no network at load time."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, DefaultScheduleStatus, DefaultSensorStatus

EXAMPLE = """
s3:
  endpoint_url: http://127.0.0.1:9
  region_name: us-east-1
warehouse:
  duckdb_path: {warehouse}
sources:
  - name: accounts
    bucket: km-imports
    base_filename: accounts.json
  - name: orders
    bucket: km-orders
    base_filename: orders.ndjson
    cron: "30 * * * *"
"""


def test_definitions_load_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "kmdagster.yaml"
    config.write_text(EXAMPLE.format(warehouse=tmp_path / "wh.duckdb"))
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(config))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading the definitions opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    import importlib

    import kmdagster.definitions

    defs = importlib.reload(kmdagster.definitions).defs
    repository = defs.get_repository_def()
    assert {"accounts_import_job", "orders_import_job"} <= {
        j.name for j in repository.get_all_jobs()
    }
    assert {s.name for s in repository.schedule_defs} == {
        "accounts_hourly_import",
        "orders_hourly_import",
    }
    assert {s.name for s in repository.sensor_defs} == {
        "accounts_file_sensor",
        "orders_file_sensor",
    }
    assert repository.get_schedule_def("orders_hourly_import").cron_schedule == "30 * * * *"
    keys = repository.asset_graph.get_all_asset_keys()
    for table in (
        "s3_file",
        "km_events",
        "km_properties",
        "km_aliases",
        "km_rejects",
        "archived_file",
        "import_preview",
    ):
        assert AssetKey(["accounts", table]) in keys
    assert not (tmp_path / "wh.duckdb").exists()
    # Nothing imports before the user confirms the setup.
    for schedule in repository.schedule_defs:
        assert schedule.default_status == DefaultScheduleStatus.STOPPED
    for sensor in repository.sensor_defs:
        assert sensor.default_status == DefaultSensorStatus.STOPPED
    check_keys = repository.asset_graph.asset_check_keys
    assert AssetCheckKey(AssetKey(["accounts", "import_preview"]), "s3_permissions") in check_keys
    job = repository.get_job("accounts_import_job")
    assert AssetKey(["accounts", "import_preview"]) not in job.asset_layer.selected_asset_keys
