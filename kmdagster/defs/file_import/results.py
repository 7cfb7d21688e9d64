"""What an import run tells Dagster about one file, as values: its progress observation,
once complete its four table materializations, its data checks, and its archive's
observation; a file that is not the run's own gets the same as events on its own
partition (``as_partition_event``). ``unit.FileImport`` logs or returns them.
"""

from __future__ import annotations

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetExecutionContext,
    AssetMaterialization,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
)

from kmdagster.archiver import ArchiveReport
from kmdagster.config import SourceConfig
from kmdagster.defs.checks import data_check_results
from kmdagster.defs.metadata import progress_metadata, table_metadata
from kmdagster.defs.naming import SourceNames
from kmdagster.file_state import State
from kmdagster.importer import ImportReport
from kmdagster.warehouse.database import Database
from kmdagster.warehouse.schema import ROW_TABLES
from kmdagster.warehouse.warehouse import LedgerRow

FileResult = MaterializeResult | AssetCheckResult


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


def already_imported_message(source: SourceConfig, row: LedgerRow) -> str:
    where = f" and archived to s3://{source.bucket}/{row.archived_key}" if row.archived_key else ""
    return (
        f"s3://{source.bucket}/{row.file_key} (ETag {row.file_etag}) was already imported "
        f"at {row.completed_at:%Y-%m-%d %H:%M:%S} UTC{where}; this run loaded nothing"
    )


def progress_observation(source: SourceConfig, report: ImportReport) -> AssetObservation | None:
    """The run's progress on the file's partition of the file asset; None when the run
    found the file complete (it read nothing)."""
    if report.already_imported:
        return None
    return AssetObservation(
        asset_key=SourceNames.of(source).file,
        partition=report.ledger.file_key,
        metadata=progress_metadata(report, source.bucket),
    )


def file_results(
    database: Database, source: SourceConfig, report: ImportReport
) -> list[FileResult]:
    """The tables' materializations (when the file is complete), then every data check,
    evaluated on what the file has committed so far."""
    names, row = SourceNames.of(source), report.ledger
    results: list[FileResult] = []
    if report.complete:
        results += [
            MaterializeResult(
                asset_key=names.table(table),
                metadata=table_metadata(database, table, row, report.already_imported),
            )
            for table in ROW_TABLES
        ]
    return results + data_check_results(database, source, row)


def is_selected(context: AssetExecutionContext, result: FileResult) -> bool:
    if isinstance(result, MaterializeResult):
        return result.asset_key in context.selected_asset_keys
    key = AssetCheckKey(result.asset_key, result.check_name or "")  # type: ignore[arg-type]
    return key in context.selected_asset_check_keys


def as_partition_event(
    result: FileResult, partition: str
) -> AssetMaterialization | AssetCheckEvaluation:
    """``result`` as an event on ``partition``, for a file that is not the run's own."""
    assert result.asset_key is not None  # file_results names every asset
    if isinstance(result, MaterializeResult):
        return AssetMaterialization(
            asset_key=result.asset_key, partition=partition, metadata=result.metadata
        )
    return AssetCheckEvaluation(
        asset_key=result.asset_key,
        check_name=result.check_name or "",
        passed=result.passed,
        metadata=result.metadata,
        severity=result.severity,
        partition=partition,
    )


def archive_observation(source: SourceConfig, report: ArchiveReport) -> AssetObservation:
    """The file's own partition observed ``archived`` (what the ledger now says of it)."""
    row = report.ledger
    return AssetObservation(
        asset_key=SourceNames.of(source).file,
        partition=row.file_key,
        description=f"archived to s3://{source.bucket}/{report.archived_key}",
        metadata={
            "s3_uri": MetadataValue.url(f"s3://{source.bucket}/{row.file_key}"),
            "etag": row.file_etag,
            "status": State.ARCHIVED.value,
            "next_offset": row.next_offset,  # the end: what a resume hint reads
            "size_bytes": row.size_bytes,
            "archived_key": report.archived_key,
            "file_lines_loaded": row.lines_loaded,
            "file_lines_rejected": row.lines_rejected,
        },
    )
