"""The lake's maintenance in Dagster: one asset, job and schedule per lake warehouse.

The asset ``kmdagster/lake_files`` is what the lake's current snapshot reads; each
materialization runs the maintenance (``warehouse/lake_maintenance.py``) and records
the files, bytes and snapshots before and after, which the asset page plots over time.
"""

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    define_asset_job,
    in_process_executor,
    multi_asset,
)

from kmdagster.config import WarehouseSettings
from kmdagster.defs.naming import LAKE_MAINTENANCE_JOB, LAKE_MAINTENANCE_SCHEDULE
from kmdagster.defs.resources import WAREHOUSE_RESOURCE_KEY, WarehouseResource
from kmdagster.defs.runs import writer_tags
from kmdagster.defs.specs import lake_files_spec
from kmdagster.warehouse.backends import one_writer
from kmdagster.warehouse.lake_maintenance import LakeFiles, maintain_lake


def _figures(files: LakeFiles, when: str) -> dict[str, MetadataValue]:
    return {
        f"data_files_{when}": MetadataValue.int(files.data_files),
        f"data_bytes_{when}": MetadataValue.int(files.data_bytes),
        f"delete_files_{when}": MetadataValue.int(files.delete_files),
        f"snapshots_{when}": MetadataValue.int(files.snapshots),
    }


def build_lake_maintenance(settings: WarehouseSettings) -> Definitions:
    retention = settings.ducklake_snapshot_retention_days

    spec = lake_files_spec(settings)

    @multi_asset(
        name=spec.key.to_python_identifier(),
        specs=[spec],
        required_resource_keys={WAREHOUSE_RESOURCE_KEY},
    )
    def lake_files(context: AssetExecutionContext) -> MaterializeResult:
        warehouse_resource: WarehouseResource = getattr(context.resources, WAREHOUSE_RESOURCE_KEY)
        with warehouse_resource.connect() as warehouse:
            report = maintain_lake(warehouse.database, retention)
        context.log.info(
            f"lake maintenance: {report.before.data_files} -> {report.after.data_files} data "
            f"files, {report.before.data_bytes} -> {report.after.data_bytes} bytes, "
            f"{report.files_deleted} files deleted"
        )
        return MaterializeResult(
            metadata={
                **_figures(report.before, "before"),
                **_figures(report.after, "after"),
                "files_deleted": MetadataValue.int(report.files_deleted),
                "snapshot_retention_days": MetadataValue.float(retention),
            }
        )

    job = define_asset_job(
        name=LAKE_MAINTENANCE_JOB,
        selection=AssetSelection.assets(lake_files),
        executor_def=in_process_executor,
        # With a DuckDB-file catalog, one process at a time: the run queue takes turns
        # with the imports, as it does for a DuckDB warehouse.
        tags=writer_tags(one_writer(settings)),
        description="Merges the lake's small files, expires old snapshots, deletes orphans.",
    )
    schedule = ScheduleDefinition(
        name=LAKE_MAINTENANCE_SCHEDULE,
        job=job,
        cron_schedule=settings.ducklake_maintenance_cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
    )
    return Definitions(assets=[lake_files], jobs=[job], schedules=[schedule])
