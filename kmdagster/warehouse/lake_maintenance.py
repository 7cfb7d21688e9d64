"""Keeping a lake small and fast: DuckLake's own maintenance, in the order it documents.

Every chunk commit writes a few Parquet files (a lake keeps commits of up to 10 rows in
its catalog instead), so after months a lake holds many small files and every snapshot
since it was made. Maintenance moves the catalog's small commits into files, merges
adjacent small files, rewrites files that are mostly deleted rows, expires snapshots
older than the retention, deletes the files no snapshot needs any more, and deletes
orphaned files: ones a killed writer left that no commit names, which no relation ever
read. Each step is DuckLake's function and commits on its own, so imports go on beside
it; a step that conflicts with an import's commit is tried again.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from kmdagster.warehouse.database import Database
from kmdagster.warehouse.ducklake_database import LAKE
from kmdagster.warehouse.waits import retried_on_conflict

# A file no commit names is deleted once it is older than any transaction lives: an
# import's chunk is committed within its run's budget and grace (minutes), so a day
# leaves files still being written alone.
ORPHAN_AGE_HOURS = 24


@dataclass(frozen=True)
class LakeFiles:
    """What the lake's current snapshot reads, and the snapshots kept."""

    data_files: int
    data_bytes: int
    delete_files: int
    delete_bytes: int
    snapshots: int


@dataclass(frozen=True)
class MaintenanceReport:
    before: LakeFiles
    after: LakeFiles
    files_deleted: int  # no longer needed by any kept snapshot, or orphaned


def lake_files(database: Database) -> LakeFiles:
    [(data_files, data_bytes, delete_files, delete_bytes)] = database.rows(
        "SELECT coalesce(sum(file_count), 0), coalesce(sum(file_size_bytes), 0), "
        "coalesce(sum(delete_file_count), 0), coalesce(sum(delete_file_size_bytes), 0) "
        f"FROM ducklake_table_info('{LAKE}')"
    )
    [(snapshots,)] = database.rows(f"SELECT count(*) FROM ducklake_snapshots('{LAKE}')")
    return LakeFiles(
        int(data_files), int(data_bytes), int(delete_files), int(delete_bytes), int(snapshots)
    )


def maintain_lake(database: Database, retention_days: float) -> MaintenanceReport:
    """Run every maintenance step on the lake ``database`` is attached to."""
    before = lake_files(database)
    older = f"now() - INTERVAL {float(retention_days) * 24 * 3600:.0f} SECOND"
    orphan_age = f"now() - INTERVAL {ORPHAN_AGE_HOURS} HOUR"
    _step(database, f"CALL ducklake_flush_inlined_data('{LAKE}')")
    _step(database, f"CALL ducklake_merge_adjacent_files('{LAKE}')")
    _step(database, f"CALL ducklake_rewrite_data_files('{LAKE}')")
    _step(database, f"CALL ducklake_expire_snapshots('{LAKE}', older_than => {older})")
    deleted = _step(
        database, f"CALL ducklake_cleanup_old_files('{LAKE}', older_than => {orphan_age})"
    )
    deleted += _step(
        database, f"CALL ducklake_delete_orphaned_files('{LAKE}', older_than => {orphan_age})"
    )
    return MaintenanceReport(before=before, after=lake_files(database), files_deleted=deleted)


def _step(database: Database, call: str) -> int:
    """Run one maintenance call in a transaction of its own; the rows it returns (for the
    cleanups, one per file deleted). A conflict with an import's commit is tried again."""
    return retried_on_conflict(lambda: len(database.rows(call)), duckdb.TransactionException)
