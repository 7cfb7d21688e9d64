"""The metadata each asset reports, built from the ledger and the warehouse.

Numeric entries keep one name and one type (int or float) on every event, so the UI's
plots chart them per file: rows per table, rejects, throughput, runs.
"""

from __future__ import annotations

from typing import Any

from dagster import AssetKey, AssetMaterialization, MetadataValue, TableColumn, TableSchema

from kmdagster.defs.checks import reject_rate_percent
from kmdagster.importer import ImportReport
from kmdagster.markdown import (
    reject_reasons_markdown,
    top_events_markdown,
    top_properties_markdown,
)
from kmdagster.s3.objects import S3File
from kmdagster.warehouse.database import Database
from kmdagster.warehouse.file_rows import (
    reject_reasons,
    table_columns,
    top_events,
    top_properties,
)
from kmdagster.warehouse.warehouse import LedgerRow

TOP_NAMES = 10
REJECT_EXAMPLES = 3


def progress_metadata(report: ImportReport, bucket: str) -> dict[str, Any]:
    """The file asset's observation after a run: where the file stands and what the run did."""
    row = report.ledger
    metadata: dict[str, Any] = {
        "s3_uri": MetadataValue.url(f"s3://{bucket}/{row.file_key}"),
        "etag": row.file_etag,
        "status": row.status,
        "next_offset": row.next_offset,
        "size_bytes": row.size_bytes,
        "percent_done": row.percent_done,
        "import_runs": row.import_runs,
        "run_start_offset": report.start_offset,
        "run_bytes": report.bytes_read,
        "run_chunks": report.chunks,
        "run_lines_read": report.lines_read,
        "run_lines_loaded": report.lines_loaded,
        "run_lines_rejected": report.lines_rejected,
        "run_lines_blank": report.lines_blank,
        "run_seconds": round(report.seconds, 3),
        "run_lines_per_second": report.lines_per_second,
        "file_lines_read": row.lines_read,
        "file_lines_loaded": row.lines_loaded,
        "file_lines_rejected": row.lines_rejected,
        "file_lines_blank": row.lines_blank,
        "stopped_on_budget": report.stopped_on_budget,
    }
    if report.hint_corrected:
        metadata["resume_offset_corrected_from"] = report.resume_hint
    return metadata


def _schema(database: Database, table: str) -> TableSchema:
    return TableSchema(
        columns=[TableColumn(name, data_type) for name, data_type in table_columns(database, table)]
    )


def table_metadata(
    database: Database, table: str, row: LedgerRow, already_imported: bool
) -> dict[str, Any]:
    """One table asset's materialization for one complete file version."""
    rows = row.rows_in(table)
    metadata: dict[str, Any] = {
        "dagster/row_count": rows,
        "dagster/partition_row_count": rows,
        "dagster/table_name": table,
        "dagster/column_schema": _schema(database, table),
        "file_key": row.file_key,
        "file_etag": row.file_etag,
        "already_imported": already_imported,
    }
    if table == "km_events":
        events = top_events(database, row, TOP_NAMES)
        metadata["top_events"] = MetadataValue.md(top_events_markdown(events))
    elif table == "km_properties":
        properties = top_properties(database, row, TOP_NAMES)
        metadata["top_properties"] = MetadataValue.md(top_properties_markdown(properties))
    elif table == "km_rejects":
        reasons = reject_reasons(database, row, REJECT_EXAMPLES)
        metadata["rejects_by_reason"] = MetadataValue.md(reject_reasons_markdown(reasons))
        metadata["reject_rate_percent"] = reject_rate_percent(row)
        metadata["lines_read"] = row.lines_read
    return metadata


def archive_metadata(
    row: LedgerRow, bucket: str, archived_key: str, rejects_key: str | None, already: bool
) -> dict[str, Any]:
    """The archive asset's materialization: where the file and its rejects now are."""
    metadata: dict[str, Any] = {
        "archived_key": archived_key,
        "archive_uri": MetadataValue.url(f"s3://{bucket}/{archived_key}"),
        "rejects_key": rejects_key or "(no rejected lines)",
        "file_etag": row.file_etag,
        "lines_loaded": row.lines_loaded,
        "lines_rejected": row.lines_rejected,
        "already_archived": already,
    }
    if rejects_key:
        metadata["rejects_uri"] = MetadataValue.url(f"s3://{bucket}/{rejects_key}")
    return metadata


def landed_materialization(
    file_key: AssetKey, bucket: str, file: S3File, description: str | None = None
) -> AssetMaterialization:
    """The S3 file as an asset partition: it exists, with this version."""
    return AssetMaterialization(
        asset_key=file_key,
        partition=file.key,
        description=description or f"s3://{bucket}/{file.key} registered for import",
        metadata={
            "etag": file.etag,
            "size_bytes": file.size,
            "last_modified": file.last_modified.isoformat() if file.last_modified else "",
            "s3_uri": MetadataValue.url(f"s3://{bucket}/{file.key}"),
        },
    )
