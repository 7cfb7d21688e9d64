"""One factory per configured source, so two sources never share state by accident."""

from __future__ import annotations

from dagster import Definitions

from kmdagster.config import AlertSettings, KmConfig, SourceConfig, WarehouseSettings
from kmdagster.defs.alerting import build_alert_sensor
from kmdagster.defs.backlog import build_backlog_check
from kmdagster.defs.file_import.assets import build_source_assets
from kmdagster.defs.jobs import build_import_job
from kmdagster.defs.lake_maintenance import build_lake_maintenance
from kmdagster.defs.resources import build_resources
from kmdagster.defs.run_history import build_quarantine_check
from kmdagster.defs.schedules import build_import_schedule
from kmdagster.defs.sensors import build_file_sensor
from kmdagster.defs.setup_assets import build_permission_check, build_preview_asset
from kmdagster.defs.source_tick import source_tick, source_tick_does
from kmdagster.defs.specs import SourceSpecs
from kmdagster.warehouse.backends import backend_of, one_writer


def build_source_definitions(
    source: SourceConfig, warehouse: WarehouseSettings, alerts: AlertSettings | None = None
) -> Definitions:
    """Partitions, assets, job, sensors and schedule of one source (no resources)."""
    specs = SourceSpecs(source, warehouse.backend)
    assets = build_source_assets(specs)
    job = build_import_job(source, assets, one_writer(warehouse))
    return Definitions(
        assets=[
            assets.file,
            assets.tables,
            assets.archive,
            specs.file_states,
            build_preview_asset(specs),
        ],
        asset_checks=[
            build_permission_check(specs),
            build_backlog_check(specs),
            build_quarantine_check(specs),
        ],
        jobs=[job],
        sensors=[
            build_file_sensor(
                specs, source_tick(alerts is not None), source_tick_does(alerts is not None)
            ),
            *([build_alert_sensor(source, alerts)] if alerts is not None else []),
        ],
        schedules=[build_import_schedule(source, job)],
    )


def build_definitions(config: KmConfig) -> Definitions:
    """Everything for every configured source, with shared resources. Touches no network."""
    maintained = backend_of(config.warehouse).maintained
    lake = [build_lake_maintenance(config.warehouse)] if maintained else []
    return Definitions.merge(
        *(
            build_source_definitions(source, config.warehouse, config.alerts)
            for source in config.sources
        ),
        *lake,
        Definitions(resources=build_resources(config)),
    )
