"""Per-source assets: the S3 file, the four warehouse tables it feeds, and its archive.

The import multi-asset materializes the table assets only when the whole file is in the
warehouse; a run stopped by its budget records its progress as an observation of the
file asset instead, which the next run reads back as its resume hint.
"""

from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    AssetsDefinition,
    AssetSpec,
    DagsterInstance,
    DagsterRunStatus,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)
from dagster_aws.s3 import S3Resource

from kmdagster.config import SourceConfig
from kmdagster.defs.resources import WarehouseResource
from kmdagster.defs.runs import MAX_RUNTIME_TAG, active_runs
from kmdagster.faults import crash_point
from kmdagster.importer import ImportReport, import_file
from kmdagster.storage.archive import archive_file
from kmdagster.storage.chunk_reader import FileChangedError
from kmdagster.storage.s3_objects import S3AccessError, S3File
from kmdagster.storage.warehouse import LedgerConflict

TABLES = ("km_events", "km_properties", "km_aliases", "km_rejects")
TABLE_DESCRIPTIONS = {
    "km_events": "Events (_n) of this source's files, one row per valid event line.",
    "km_properties": "Properties set by this source's files, one row per property.",
    "km_aliases": "Aliases (_p2) of this source's files.",
    "km_rejects": "Lines of this source's files that broke a format rule, with the reason.",
}


@dataclass(frozen=True)
class SourceAssets:
    file: AssetSpec
    tables: AssetsDefinition
    archive: AssetsDefinition

    @property
    def table_keys(self) -> list[AssetKey]:
        return [AssetKey([self.file.key.path[0], table]) for table in TABLES]


def file_asset_key(source: SourceConfig) -> AssetKey:
    return AssetKey([source.name, "s3_file"])


def recorded_resume_offset(
    instance: DagsterInstance, source: SourceConfig, partition_key: str
) -> tuple[int, str] | None:
    """The (offset, etag) the latest run of this partition recorded, if any."""
    records = instance.fetch_observations(
        AssetRecordsFilter(asset_key=file_asset_key(source), asset_partitions=[partition_key]),
        limit=1,
    ).records
    if not records or records[0].asset_observation is None:
        return None
    metadata = records[0].asset_observation.metadata
    offset, etag = metadata.get("next_offset"), metadata.get("etag")
    if offset is None or etag is None:
        return None
    return int(offset.value), str(etag.value)  # type: ignore[arg-type]


def progress_metadata(report: ImportReport, bucket: str) -> dict[str, Any]:
    """What a person (and the next run) needs to know about one run's progress."""
    row = report.ledger
    metadata: dict[str, Any] = {
        "s3_uri": MetadataValue.url(f"s3://{bucket}/{row.file_key}"),
        "etag": row.file_etag,
        "status": row.status,
        "next_offset": row.next_offset,
        "size_bytes": row.size_bytes,
        "percent_done": round(100.0 * row.next_offset / row.size_bytes, 2)
        if row.size_bytes
        else 100.0,
        "run_start_offset": report.start_offset,
        "run_bytes": report.bytes_read,
        "run_chunks": report.chunks,
        "run_lines_read": report.lines_read,
        "run_lines_loaded": report.lines_loaded,
        "run_lines_rejected": report.lines_rejected,
        "run_lines_blank": report.lines_blank,
        "run_seconds": round(report.seconds, 3),
        "file_lines_read": row.lines_read,
        "file_lines_loaded": row.lines_loaded,
        "file_lines_rejected": row.lines_rejected,
        "file_lines_blank": row.lines_blank,
        "stopped_on_budget": report.stopped_on_budget,
    }
    if report.hint_corrected:
        metadata["resume_offset_corrected_from"] = report.resume_hint
    return metadata


def build_source_assets(
    source: SourceConfig, partitions: DynamicPartitionsDefinition
) -> SourceAssets:
    """The file spec, the import multi-asset and the archive asset of one source."""
    file_key = file_asset_key(source)
    file_spec = AssetSpec(
        key=file_key,
        description=(
            f"Files s3://{source.bucket}/{source.base_filename} pattern matches; one partition "
            "per S3 key. Observations record each run's import progress."
        ),
        partitions_def=partitions,
        group_name=source.name,
        kinds={"s3"},
    )
    table_specs = [
        AssetSpec(
            key=AssetKey([source.name, table]),
            deps=[file_key],
            description=TABLE_DESCRIPTIONS[table],
            partitions_def=partitions,
            group_name=source.name,
            skippable=True,
            kinds={"duckdb", "polars"},
        )
        for table in TABLES
    ]

    @multi_asset(
        name=f"{source.name}_import",
        specs=table_specs,
        partitions_def=partitions,
        description="Reads the file in line-aligned chunks and loads it, within the budget.",
    )
    def import_tables(
        context: AssetExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ):
        key = context.partition_key
        # The run queue admits one run per source; this guard also covers runs launched
        # around it (a manual launch without the queue, a second Dagster instance).
        others = active_runs(
            context.instance,
            source,
            [DagsterRunStatus.STARTED],
            excluding_run_id=context.run.run_id,
        )
        if others:
            raise Failure(
                description=(
                    f"run {others[0].run_id} of source {source.name!r} is already importing; "
                    "a source imports one file at a time, so this run stops without reading. "
                    "If that run's process died, Dagster's run monitoring fails it once it "
                    f"exceeds its {MAX_RUNTIME_TAG} tag and the next tick proceeds."
                )
            )
        with km_warehouse.connect() as warehouse:
            try:
                report = import_file(
                    client=km_s3.get_client(),
                    warehouse=warehouse,
                    source=source.name,
                    bucket=source.bucket,
                    key=key,
                    chunk_bytes=source.chunk_bytes,
                    time_budget_seconds=source.time_budget_seconds,
                    resume_hint=recorded_resume_offset(context.instance, source, key),
                )
            except (S3AccessError, FileChangedError, LedgerConflict) as exc:
                raise Failure(description=str(exc)) from exc
        crash_point("asset.before_progress_event")
        metadata = progress_metadata(report, source.bucket)
        if report.hint_corrected:
            context.log.warning(
                f"recorded resume offset {report.resume_hint} disagreed with the ledger's "
                f"{report.start_offset}; resumed from the ledger"
            )
        context.log_event(AssetObservation(asset_key=file_key, partition=key, metadata=metadata))
        if not report.complete:
            context.log.info(
                f"time budget of {source.time_budget_seconds}s used: stopped at byte "
                f"{report.ledger.next_offset} of {report.ledger.size_bytes}; "
                "the next scheduled run resumes there"
            )
            return
        for spec in table_specs:
            yield MaterializeResult(asset_key=spec.key, metadata=metadata)

    @asset(
        key=AssetKey([source.name, "archived_file"]),
        deps=[spec.key for spec in table_specs],
        partitions_def=partitions,
        group_name=source.name,
        description="Moves a fully imported file to completed_imports/YYYY/MM/DD/ in its bucket.",
        kinds={"s3"},
    )
    def archived_file(
        context: AssetExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ) -> MaterializeResult:
        key = context.partition_key
        with km_warehouse.connect() as warehouse:
            row = warehouse.latest_ledger_row(source.name, key)
            if row is None or not row.is_complete or row.completed_at is None:
                raise Failure(
                    description=f"s3://{source.bucket}/{key} is not fully imported; not archiving"
                )
            imported = row
            try:
                archived_key = archive_file(
                    km_s3.get_client(),
                    source.bucket,
                    S3File(key=key, etag=row.file_etag, size=row.size_bytes),
                    row.completed_at,
                    record=lambda archive_key: warehouse.mark_archived(imported, archive_key),
                )
            except S3AccessError as exc:
                raise Failure(description=str(exc)) from exc
        return MaterializeResult(
            metadata={
                "archived_key": archived_key,
                "archive_uri": MetadataValue.url(f"s3://{source.bucket}/{archived_key}"),
                "etag": row.file_etag,
                "lines_loaded": row.lines_loaded,
                "lines_rejected": row.lines_rejected,
            }
        )

    return SourceAssets(file=file_spec, tables=import_tables, archive=archived_file)
