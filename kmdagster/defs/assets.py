"""Per-source assets: the S3 file, the four warehouse tables it feeds, and its archive.

- ``<source>/s3_file``: the file in S3, one partition per key. The sensor reports it
  materialized when it registers the key; each import run records its progress (resume
  offset, percent, lines, throughput) as an observation, which the next run reads back as
  its resume hint.
- ``<source>/km_events``, ``km_properties``, ``km_aliases``, ``km_rejects``: materialized,
  with their own row counts, only when the whole file is in the warehouse; their data
  checks are evaluated at every run, on what the file has committed so far. A re-run of
  a complete file loads nothing and says so.
- ``<source>/archived_file``: the move to completed_imports/ with the rejects file beside it.
"""

from dataclasses import dataclass

from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetObservation,
    AssetRecordsFilter,
    AssetsDefinition,
    AssetSpec,
    DagsterInstance,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    asset,
    multi_asset,
)
from dagster_aws.s3 import S3Resource

from kmdagster.archiver import NotImported, archive_imported_file
from kmdagster.config import SourceConfig
from kmdagster.defs.checks import data_check_results, data_check_specs
from kmdagster.defs.metadata import archive_metadata, progress_metadata, table_metadata
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.resources import WarehouseResource
from kmdagster.defs.runs import OUTCOME_TAG
from kmdagster.faults import crash_point
from kmdagster.importer import ImportReport, import_file, retire_replaced_versions
from kmdagster.s3.objects import S3AccessError
from kmdagster.s3.piece_reader import FileChangedError
from kmdagster.status import list_root_files
from kmdagster.warehouse.schema import ROW_TABLES
from kmdagster.warehouse.warehouse import LedgerConflict, LedgerRow

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


def build_file_states_spec(source: SourceConfig) -> AssetSpec:
    """``<source>/file_states``: every file's state in plain values, materialized by the
    file sensor whenever one changes. Its own asset so that the graph's sidebar shows the counts
    and the files in progress, failed or quarantined on a click, with no dialog to open."""
    names = SourceNames.of(source)
    return AssetSpec(
        key=names.file_states,
        deps=[names.file],
        description=(
            "The files of this source by state (in_progress, failed, quarantined, pending, "
            "imported, archived): counts and names, the next file first. Materialized by "
            f"{names.sensor} whenever a file's state changes; the backlog check "
            "of s3_file has the full table."
        ),
        group_name=source.name,
    )


def recorded_resume_offset(
    instance: DagsterInstance, source: SourceConfig, partition_key: str
) -> tuple[int, str] | None:
    """The (offset, etag) the latest run of this partition recorded, if any.

    The design keeps the resume offset in Dagster run metadata, but the ledger's
    ``next_offset`` is the truth: the import only compares the two and, when they differ
    (a kill between the warehouse commit and Dagster's event), resumes from the ledger and
    says so. The recorded offset never decides where a run starts.
    """
    records = instance.fetch_observations(
        AssetRecordsFilter(asset_key=SourceNames.of(source).file, asset_partitions=[partition_key]),
        limit=1,
    ).records
    if not records or records[0].asset_observation is None:
        return None
    metadata = records[0].asset_observation.metadata
    offset, etag = metadata.get("next_offset"), metadata.get("etag")
    if offset is None or etag is None:
        return None
    return int(offset.value), str(etag.value)  # type: ignore[arg-type]


def build_file_spec(source: SourceConfig, partitions: DynamicPartitionsDefinition) -> AssetSpec:
    return AssetSpec(
        key=SourceNames.of(source).file,
        description=(
            f"Files s3://{source.bucket}/{source.base_filename} pattern matches; one partition "
            "per S3 key, materialized when the sensor registers it. Observations record each "
            "run's import progress; the backlog check lists every file's state."
        ),
        partitions_def=partitions,
        group_name=source.name,
        kinds={"s3"},
    )


def _already_imported_message(source: SourceConfig, row: LedgerRow) -> str:
    where = f" and archived to s3://{source.bucket}/{row.archived_key}" if row.archived_key else ""
    return (
        f"s3://{source.bucket}/{row.file_key} (ETag {row.file_etag}) was already imported "
        f"at {row.completed_at:%Y-%m-%d %H:%M:%S} UTC{where}; this run loaded nothing"
    )


def _report_progress(
    context: AssetExecutionContext, source: SourceConfig, report: ImportReport
) -> None:
    """Log the run's progress on the file asset, and say where the next run resumes."""
    if report.already_imported:
        context.log.info(_already_imported_message(source, report.ledger))
        return
    if report.hint_corrected:
        context.log.warning(
            f"recorded resume offset {report.resume_hint} disagreed with the ledger's "
            f"{report.start_offset}; resumed from the ledger"
        )
    context.log_event(
        AssetObservation(
            asset_key=SourceNames.of(source).file,
            partition=context.partition_key,
            metadata=progress_metadata(report, source.bucket),
        )
    )
    if not report.complete:
        # Shown at the top of the run page, above Dagster's line about the archive step
        # skipped for want of the (not yet materialized) tables.
        stopped = f"stopped on budget at {report.ledger.percent_done:g}%"
        context.instance.add_run_tags(context.run.run_id, {OUTCOME_TAG: stopped})
        context.log.warning(
            f"time budget of {source.time_budget_seconds}s used: stopped at byte "
            f"{report.ledger.next_offset} of {report.ledger.size_bytes}; "
            "the next scheduled run resumes there (the archive step is skipped until the "
            "file is complete)"
        )


def build_import_asset(
    source: SourceConfig, partitions: DynamicPartitionsDefinition, backend: str
) -> AssetsDefinition:
    """``<source>_import``: loads the partition's file within the budget, then checks it."""
    names = SourceNames.of(source)
    table_specs = [
        AssetSpec(
            key=names.table(table),
            deps=[names.file],
            description=TABLE_DESCRIPTIONS[table],
            partitions_def=partitions,
            group_name=source.name,
            skippable=True,
            kinds={backend, "polars"},
        )
        for table in ROW_TABLES
    ]

    @multi_asset(
        name=names.import_assets,
        specs=table_specs,
        check_specs=data_check_specs(source, partitions),
        partitions_def=partitions,
        description="Reads the file in line-aligned chunks and loads it, within the budget.",
        # A file always loads into all four tables in one transaction per chunk: no subset.
        can_subset=False,
    )
    def import_tables(
        context: AssetExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ):
        key, client = context.partition_key, km_s3.get_client()
        with km_warehouse.connect() as warehouse:
            try:
                for retired in retire_replaced_versions(
                    warehouse, source, list_root_files(client, source)
                ):
                    context.log.info(
                        f"s3://{source.bucket}/{retired.file_key} (ETag {retired.file_etag}) is "
                        f"{retired.status}: its {retired.lines_loaded:,} loaded lines leave the "
                        "km_* relations for the *_replaced ones; it never resumes"
                    )
                report = import_file(
                    client,
                    warehouse,
                    source,
                    key,
                    resume_hint=recorded_resume_offset(context.instance, source, key),
                    run_id=context.run.run_id,
                )
            except (S3AccessError, FileChangedError, LedgerConflict) as exc:
                raise Failure(description=str(exc)) from exc
            crash_point("asset.before_progress_event")
            _report_progress(context, source, report)
            warehouse.checkpoint()  # the checks below read every row of the file
            row, database = report.ledger, warehouse.database
            if report.complete:
                for table in ROW_TABLES:
                    if names.table(table) in context.selected_asset_keys:
                        yield MaterializeResult(
                            asset_key=names.table(table),
                            metadata=table_metadata(database, table, row, report.already_imported),
                        )
            # Checked at every run, on what the file has committed so far.
            selected_checks = context.selected_asset_check_keys
            for result in data_check_results(database, source, row):
                if AssetCheckKey(result.asset_key, result.check_name or "") in selected_checks:  # type: ignore[arg-type]
                    yield result

    return import_tables


def build_archive_asset(
    source: SourceConfig, partitions: DynamicPartitionsDefinition
) -> AssetsDefinition:
    """``<source>/archived_file``: the complete file moved under completed_imports/."""
    names = SourceNames.of(source)

    @asset(
        key=names.archive,
        deps=[names.table(table) for table in ROW_TABLES],
        partitions_def=partitions,
        group_name=source.name,
        description=(
            "Moves a fully imported file to completed_imports/YYYY/MM/DD/ in its bucket, with "
            "its rejected lines beside it as NAME.rejects.jsonl."
        ),
        kinds={"s3"},
    )
    def archived_file(
        context: AssetExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ) -> MaterializeResult:
        key = context.partition_key
        with km_warehouse.connect() as warehouse:
            try:
                report = archive_imported_file(km_s3.get_client(), warehouse, source, key)
            except (NotImported, S3AccessError) as exc:
                raise Failure(description=str(exc)) from exc
        if report.already_archived:
            context.log.info(
                f"s3://{source.bucket}/{key} (ETag {report.ledger.file_etag}) was already "
                f"archived to {report.archived_key}; nothing to move"
            )
        return MaterializeResult(
            metadata=archive_metadata(
                report.ledger,
                source.bucket,
                report.archived_key,
                report.rejects_key,
                report.already_archived,
            )
        )

    return archived_file


def build_source_assets(
    source: SourceConfig, partitions: DynamicPartitionsDefinition, backend: str = "duckdb"
) -> SourceAssets:
    """The file spec, the import multi-asset and the archive asset of one source."""
    return SourceAssets(
        file=build_file_spec(source, partitions),
        tables=build_import_asset(source, partitions, backend),
        archive=build_archive_asset(source, partitions),
    )
