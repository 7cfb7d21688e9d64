"""Catch-up: with ``max_files_per_run`` over 1, a run whose own file is complete goes on to
the next pending files, in key order, while its one time budget lasts.

Each file gets what a run of its own would give it: ``import_file``'s ledger row and
exactly-once rules, its progress observation, and once complete its table
materializations and data checks, logged on its own partition; the archive step then
moves every file the run materialized (``files_materialized_by_run``). A file the budget
cuts is the first pending key at the next tick, so it resumes first. A file that fails
stops the catch-up, not the run: the next tick imports it in a run of its own, whose
failure is reported, and counted toward its quarantine, as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    DagsterEventType,
    DagsterInstance,
    Failure,
)

from kmdagster.archiver import NotImported, archive_imported_file
from kmdagster.config import SourceConfig
from kmdagster.defs.checks import FILE_CHECKS_TABLE
from kmdagster.defs.file_events import (
    as_partition_event,
    import_partition_file,
    record_budget_stop,
    report_archive,
    reported_file,
)
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.pending import next_files
from kmdagster.defs.run_history import RunProgress
from kmdagster.defs.runs import OUTCOME_TAG
from kmdagster.s3.objects import S3AccessError, S3File
from kmdagster.warehouse.warehouse import Warehouse
from kmdagster.wording import counted, names_and_more


def import_following_files(
    context: AssetExecutionContext,
    client: Any,
    warehouse: Warehouse,
    source: SourceConfig,
    root_files: list[S3File],
    seconds_left: Callable[[], float],
) -> None:
    """Import the pending files after the run's own (complete) one, up to the source's
    ``max_files_per_run`` in all, and tag the run with what it did."""
    following = next_files(
        context.instance,
        source,
        root_files,
        set(context.instance.get_dynamic_partitions(SourceNames.of(source).partitions)),
        RunProgress.through(warehouse, source, root_files),
        limit=source.max_files_per_run - 1,
        after=context.partition_key,
    )
    if following.set_aside:
        context.log.warning(
            f"passed over {counted(len(following.set_aside), 'quarantined file')} "
            f"({names_and_more(following.set_aside, 5)})"
        )
    completed = 0
    for key in following.keys:
        left = seconds_left()
        if left <= 0:
            context.log.info(
                f"time budget used after {counted(completed + 1, 'file')}; "
                f"s3://{source.bucket}/{key} "
                "and the files after it wait for the next tick"
            )
            break
        try:
            report = import_partition_file(context, client, warehouse, source, key, left)
        except Failure as failure:
            context.log.warning(
                f"stopped catching up at s3://{source.bucket}/{key}: {failure.description} "
                "The next tick imports it in a run of its own."
            )
            break
        for result in reported_file(context, warehouse, source, report):
            # log_event takes check evaluations too, though its annotation says not.
            context.log_event(as_partition_event(result, key))  # type: ignore[arg-type]
        if not report.complete:
            record_budget_stop(context, source, report.ledger, files_before=completed + 1)
            return
        completed += 1
    if completed:  # what the runs list shows of the run, as for a budget stop
        context.instance.add_run_tags(
            context.run.run_id, {OUTCOME_TAG: f"{counted(completed + 1, 'file')} imported"}
        )


def files_materialized_by_run(
    instance: DagsterInstance, source: SourceConfig, run_id: str
) -> list[str]:
    """The files whose tables this run materialized, in the order it did (key order)."""
    table = SourceNames.of(source).table(FILE_CHECKS_TABLE)
    materialized = (
        entry.asset_materialization
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    )
    keys = (m.partition for m in materialized if m is not None and m.asset_key == table)
    return list(dict.fromkeys(key for key in keys if key is not None))


def archive_following_files(
    context: AssetExecutionContext, client: Any, warehouse: Warehouse, source: SourceConfig
) -> None:
    """Archive the files a catch-up run imported after its own, each on its partition."""
    archive_key = SourceNames.of(source).archive
    for key in files_materialized_by_run(context.instance, source, context.run.run_id):
        if key == context.partition_key:
            continue
        try:
            report = archive_imported_file(client, warehouse, source, key)
        except (NotImported, S3AccessError) as exc:
            context.log.warning(
                f"stopped archiving at s3://{source.bucket}/{key}: {exc}. It stays at the "
                "bucket root, imported; the next tick archives it in a run of its own."
            )
            return
        context.log_event(
            AssetMaterialization(
                asset_key=archive_key,
                partition=key,
                metadata=report_archive(context, source, report),
            )
        )
