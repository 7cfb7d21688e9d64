"""Asset checks on the imported data, per file (partition), evaluated by the import run.

For each table: its rows in the warehouse are the rows the import committed in the
ledger, each once (``rows_match_ledger``: as many, and no line's row twice; one check
rather than two, since each check result is an event Dagster stores per file). On
``km_rejects`` also: every line read is loaded, rejected or blank (``lines_accounted_for``)
and the share of rejected lines stays under the source's threshold (``reject_rate``, a
warning). Every import run of a file evaluates them on what the file has committed so
far (a partial file too), so a check never shows a result for data it has not looked at.
"""

from __future__ import annotations

from dagster import AssetCheckResult, AssetCheckSeverity

from kmdagster.config import SourceConfig
from kmdagster.defs.naming import SourceNames
from kmdagster.warehouse.database import Database
from kmdagster.warehouse.file_rows import duplicate_rows, rows_by_table
from kmdagster.warehouse.schema import ROW_TABLES
from kmdagster.warehouse.warehouse import LedgerRow

ROWS_MATCH_LEDGER = "rows_match_ledger"
LINES_ACCOUNTED_FOR = "lines_accounted_for"
REJECT_RATE = "reject_rate"
FILE_CHECKS_TABLE = "km_rejects"  # the file-level checks sit on the rejects table


def reject_rate_percent(row: LedgerRow) -> float:
    """Rejected lines as a share of the file's non-blank lines."""
    non_blank = row.lines_read - row.lines_blank
    return round(100.0 * row.lines_rejected / non_blank, 3) if non_blank else 0.0


def data_check_results(
    database: Database, source: SourceConfig, row: LedgerRow
) -> list[AssetCheckResult]:
    """Evaluate every data check of one file version's committed rows."""
    counted = rows_by_table(database, row)
    progress = {"percent_done": row.percent_done}
    results = []
    for table in ROW_TABLES:
        duplicates = duplicate_rows(database, row, table)
        results.append(
            AssetCheckResult(
                asset_key=SourceNames.of(source).table(table),
                check_name=ROWS_MATCH_LEDGER,
                passed=counted[table] == row.rows_in(table) and duplicates == 0,
                metadata={
                    "rows_in_warehouse": counted[table],
                    "rows_committed": row.rows_in(table),
                    "duplicate_rows": duplicates,
                    **progress,
                },
            )
        )
    accounted = row.lines_loaded + row.lines_rejected + row.lines_blank
    rate = reject_rate_percent(row)
    rejects = SourceNames.of(source).table(FILE_CHECKS_TABLE)
    results += [
        AssetCheckResult(
            asset_key=rejects,
            check_name=LINES_ACCOUNTED_FOR,
            passed=row.lines_read == accounted,
            metadata={
                "lines_read": row.lines_read,
                "lines_loaded": row.lines_loaded,
                "lines_rejected": row.lines_rejected,
                "lines_blank": row.lines_blank,
                **progress,
            },
        ),
        AssetCheckResult(
            asset_key=rejects,
            check_name=REJECT_RATE,
            passed=rate <= source.reject_rate_warn_percent,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "reject_rate_percent": rate,
                "threshold_percent": source.reject_rate_warn_percent,
                **progress,
            },
        ),
    ]
    return results
