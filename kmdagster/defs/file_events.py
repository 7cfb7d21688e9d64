"""One file's import in a run, and what the run tells Dagster about it: its progress
observation and, once the file is complete, its four table materializations and its data
checks.

The run's own partition returns them as results; a file a catch-up run imports after it
gets the same results as events on its own partition (``as_partition_event``).
"""

from __future__ import annotations

from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetExecutionContext,
    AssetMaterialization,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    Failure,
    MaterializeResult,
    MetadataValue,
)

from kmdagster.archiver import ArchiveReport
from kmdagster.config import SourceConfig
from kmdagster.defs.checks import data_check_results
from kmdagster.defs.metadata import archive_metadata, progress_metadata, table_metadata
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.resources import WarehouseFault
from kmdagster.defs.runs import OUTCOME_TAG, UNREADABLE_TAG
from kmdagster.file_state import State
from kmdagster.importer import ImportReport, import_file
from kmdagster.s3.objects import S3AccessError
from kmdagster.s3.piece_reader import FileChangedError, UnreadableFileError
from kmdagster.seams import crash_point
from kmdagster.stages import timed
from kmdagster.warehouse.database import Database, disk_full_message
from kmdagster.warehouse.schema import ROW_TABLES
from kmdagster.warehouse.warehouse import LedgerConflict, LedgerRow, Warehouse
from kmdagster.wording import counted

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


def import_partition_file(
    context: AssetExecutionContext,
    client: Any,
    warehouse: Warehouse,
    source: SourceConfig,
    key: str,
    budget_seconds: float | None = None,
) -> ImportReport:
    """``import_file`` for the file of partition ``key`` in this run; what it cannot do
    (the file gone, changed or unreadable, or another run's) is a ``Failure`` that says why."""
    try:
        return import_file(
            client,
            warehouse,
            source,
            key,
            resume_hint=recorded_resume_offset(context.instance, source, key),
            run_id=context.run.run_id,
            budget_seconds=budget_seconds,
        )
    except UnreadableFileError as exc:
        # The same bytes fail the same way at every retry: set aside at once (the tag is
        # what the quarantine rule reads), so later files go first from the next tick. A
        # catch-up's follow-on file is tagged by its own run, at the next tick.
        if not context.has_partition_key_range and key == context.partition_key:
            context.instance.add_run_tags(
                context.run.run_id,
                {UNREADABLE_TAG: "true", OUTCOME_TAG: "failed: file unreadable, set aside"},
            )
        raise Failure(
            description=f"{exc}. The file is quarantined at once (no retry of these bytes "
            "can read it) and later files go first; an upload under the same key imports "
            f"as a new version, or `kmdagster retry {source.name} {key}` tries it again"
        ) from exc
    except (S3AccessError, FileChangedError, LedgerConflict) as exc:
        raise Failure(description=str(exc)) from exc
    except Exception as exc:
        in_words = disk_full_message(exc)
        if in_words is None:
            raise
        raise WarehouseFault(description=f"s3://{source.bucket}/{key}: {in_words}") from exc


def already_imported_message(source: SourceConfig, row: LedgerRow) -> str:
    where = f" and archived to s3://{source.bucket}/{row.archived_key}" if row.archived_key else ""
    return (
        f"s3://{source.bucket}/{row.file_key} (ETag {row.file_etag}) was already imported "
        f"at {row.completed_at:%Y-%m-%d %H:%M:%S} UTC{where}; this run loaded nothing"
    )


def record_outcome(
    context: AssetExecutionContext, source: SourceConfig, report: ImportReport
) -> None:
    """Tag the run with what it did to its file, so the Runs list tells a run that stopped
    on its budget from one that finished the file (Dagster shows both as Success)."""
    row = report.ledger
    if not report.complete:
        record_budget_stop(context, source, row)
        return
    # The share first: the Runs list shows the first few words of a tag.
    if report.already_imported:
        done = "100%, already imported: loaded nothing"
    else:
        done = (
            f"100% imported: {counted(row.lines_loaded, 'line')} loaded, "
            f"{row.lines_rejected:,} rejected"
        )
    context.instance.add_run_tags(context.run.run_id, {OUTCOME_TAG: done})


def record_budget_stop(
    context: AssetExecutionContext, source: SourceConfig, row: LedgerRow, files_before: int = 0
) -> None:
    """Tag the run, and say in its log, that the budget cut ``row``'s file;
    ``files_before``: the files the run completed before it."""
    if files_before:
        files = counted(files_before, "file")
        stopped = (
            f"{files} imported, then stopped on budget at {row.percent_done:g}% of {row.file_key}"
        )
    else:
        stopped = f"{row.percent_done:g}% imported, stopped on budget"
    context.instance.add_run_tags(context.run.run_id, {OUTCOME_TAG: stopped})
    context.log.warning(
        f"time budget of {source.time_budget_seconds}s used: stopped at byte "
        f"{row.next_offset} of {row.size_bytes} of s3://{source.bucket}/{row.file_key}; "
        "the next scheduled run resumes there (its archive is skipped until the file is "
        "complete)"
    )


def log_progress_notes(
    context: AssetExecutionContext, source: SourceConfig, report: ImportReport
) -> None:
    """Say in the run's log that the file was complete before the run, or that the
    recorded resume offset disagreed with the ledger's."""
    crash_point("asset.before_progress_event")
    if report.already_imported:
        context.log.info(already_imported_message(source, report.ledger))
    elif report.hint_corrected:
        context.log.warning(
            f"recorded resume offset {report.resume_hint} disagreed with the ledger's "
            f"{report.start_offset} for {report.ledger.file_key}; resumed from the ledger"
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


def reported_file(
    context: AssetExecutionContext, warehouse: Warehouse, source: SourceConfig, report: ImportReport
) -> list[FileResult]:
    """What the run selected of the file's results: the tables' materializations (when
    complete) and its data checks, on what it has committed so far."""
    with warehouse.database.on_every_core():
        with timed("checkpoint"):
            warehouse.checkpoint()  # the checks read every row of the file
        with timed("checks and metadata"):
            results = file_results(warehouse.database, source, report)
    return [result for result in results if is_selected(context, result)]


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


def report_archive(
    context: AssetExecutionContext, source: SourceConfig, report: ArchiveReport
) -> dict[str, Any]:
    """The archive asset's metadata for one file, saying if an earlier run had moved it;
    the file's own partition is observed ``archived`` (what the ledger now says of it)."""
    row = report.ledger
    context.log_event(
        AssetObservation(
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
    )
    if report.already_archived:
        context.log.info(
            f"s3://{source.bucket}/{report.ledger.file_key} (ETag {report.ledger.file_etag}) "
            f"was already archived to {report.archived_key}; nothing to move"
        )
    return archive_metadata(
        report.ledger,
        source.bucket,
        report.archived_key,
        report.rejects_key,
        report.already_archived,
    )
