"""A run of Dagster's own backfill, and the rule that a source has one import going at a time.

Dagster's backfill of a source's partitions (the UI's Materialize over a range of files,
``dagster asset backfill``) launches one run per ``backfill_files_per_run`` partitions (the
import asset's backfill policy). Such a run imports its range's files in key order, each
with its own ledger row and reported on its own partition (progress, tables, checks),
then its archive step archives the complete ones. Each file keeps the time budget a
scheduled run gives it: one that outlasts it stops at its committed offset, and since
files go in key order the run stops there too. The run then archives what is complete (in
its import step: the archive step, downstream of the tables' outputs, has no output of the
range's to wait for) and fails naming what is not, so the backfill shows those partitions
failed until the schedule's next tick resumes the file (or they are backfilled again).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from dagster import AssetExecutionContext, Failure, RunsFilter

from kmdagster.archiver import NotImported
from kmdagster.config import SourceConfig
from kmdagster.defs.file_import.catch_up import import_in_order
from kmdagster.defs.file_import.unit import FileResult, RunStep
from kmdagster.defs.runs import (
    MAX_RUNTIME_TAG,
    OUTCOME_TAG,
    RUNNING_STATUSES,
    SOURCE_TAG,
    max_runtime_seconds,
)
from kmdagster.s3.objects import S3AccessError
from kmdagster.wording import counted, names_and_more


def claim_source(context: AssetExecutionContext, source: SourceConfig) -> None:
    """Tag the run with its source (a backfill launches its runs without the job's tags,
    so this is how the schedule and the run queue see them) and fail it, saying which run
    holds the source, when a run of the source created before it is going."""
    instance, run_id = context.instance, context.run.run_id
    if context.run.tags.get(SOURCE_TAG) != source.name:
        instance.add_run_tags(run_id, {SOURCE_TAG: source.name})
    going = instance.get_run_records(
        filters=RunsFilter(tags={SOURCE_TAG: source.name}, statuses=RUNNING_STATUSES)
    )
    own = instance.get_run_record_by_id(run_id)
    first = min(going, key=lambda record: record.create_timestamp, default=None)
    if first is None or own is None or first.dagster_run.run_id == run_id:
        return
    if first.create_timestamp > own.create_timestamp:
        return
    raise Failure(
        description=(
            f"run {first.dagster_run.run_id} of source {source.name!r} is "
            f"{first.dagster_run.status.value} and was launched first: a source imports one "
            "run at a time, so this run imported nothing. Its files wait for that run; launch "
            "this one again (or re-run the backfill's failed partitions) once it has ended. "
            "A run whose process died still says STARTED until run monitoring fails it "
            "(its dagster/max_runtime tag), or until it is terminated in the UI"
        )
    )


class RuntimeLease:
    """A backfill's run takes many files, each with the source's budget, so it outlives the
    ``dagster/max_runtime`` of a run of one file; before each file the run moves that tag
    ahead of it, so run monitoring still fails a run whose process died, within about two
    files' allowance (budget plus ``run_grace_seconds``) of its last file."""

    def __init__(self, context: AssetExecutionContext, source: SourceConfig) -> None:
        self.context = context
        self.allowance = max_runtime_seconds(source)
        record = context.instance.get_run_record_by_id(context.run.run_id)
        self.started = (record.start_time if record else None) or time.time()
        self.until = int(context.run.tags.get(MAX_RUNTIME_TAG, 0) or 0)

    def budget_for_next(self) -> None:
        """Renew the lease for one more file; each file keeps its own budget (None)."""
        needed = time.time() - self.started + self.allowance
        if needed > self.until:
            self.until = int(needed) + self.allowance
            self.context.instance.add_run_tags(
                self.context.run.run_id, {MAX_RUNTIME_TAG: str(self.until)}
            )


def backfill_range(step: RunStep) -> Iterator[FileResult]:
    """Import the files of the run's range in key order, then archive the complete ones,
    each reported on its own partition: the step yields no result, which would stand for
    the whole range, so the archive step after it is skipped and this one archives."""
    context, keys = step.context, step.range_keys
    taken = import_in_order(step, keys, RuntimeLease(context, step.source).budget_for_next)
    if not taken.cut_on_budget:  # a budget stop tagged the run's outcome itself
        step.tag_run(
            {OUTCOME_TAG: f"{counted(len(taken.completed), 'file')} of {len(keys):,} imported"}
        )
    archive_range(step, taken.stopped)
    yield from ()


def archive_range(step: RunStep, why: str | None = None) -> None:
    """Archive the complete files of the run's range, each on its own partition; fail the
    run, naming them, ``why`` the import stopped and what to do, when some are not
    imported (so the backfill shows them failed rather than done)."""
    source, keys = step.source, step.range_keys
    waiting: list[str] = []
    for key in keys:
        try:
            step.file(key).archive()
        except NotImported:
            waiting.append(key)
        except S3AccessError as exc:
            raise Failure(
                description=f"{exc}. s3://{source.bucket}/{key} and the files after it stay "
                "at the bucket root, imported; the next tick archives them"
            ) from exc
    if waiting:
        raise Failure(
            description=(
                f"{counted(len(waiting), 'file')} of this run's {len(keys):,} "
                f"{'is' if len(waiting) == 1 else 'are'} not fully imported "
                f"({names_and_more(waiting, 3)}): {why or 'see the import step'}. The "
                f"schedule's next tick takes s3://{source.bucket}/{waiting[0]} up from its "
                "committed offset; re-run the backfill's failed partitions to import the "
                "rest at once"
            )
        )
