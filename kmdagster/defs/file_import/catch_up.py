"""Catch-up: with ``max_files_per_run`` over 1, a run whose own file is complete goes on to
the next pending files, in key order, while its one time budget lasts.

Each file is a ``FileImport`` given what a run of its own would give it: ``import_file``'s
ledger row and exactly-once rules, its progress observation, and once complete its
table materializations and data checks, logged on its own partition. The import step
hands the archive step the last file it took (the run tag ``kmdagster/caught_up_through``),
and the archive step archives the complete files after its own through that one. A file
the budget cuts is the first pending key at the next tick, so it resumes first. A file
that fails stops the catch-up, not the run: the next tick imports it in a run of its
own, whose failure is reported, and counted toward its quarantine, as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dagster import Failure

from kmdagster.archiver import NotImported
from kmdagster.defs.file_import.pending import next_files
from kmdagster.defs.file_import.unit import RunStep
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.run_history import RunProgress
from kmdagster.defs.runs import CAUGHT_UP_TAG, OUTCOME_TAG
from kmdagster.s3.objects import S3AccessError, S3File, list_root_files
from kmdagster.wording import counted, names_and_more


def catch_up(step: RunStep, root_files: list[S3File], seconds_left: Callable[[], float]) -> None:
    """Import the pending files after the run's own (complete) one, up to the source's
    ``max_files_per_run`` in all, and tag the run with what it did."""
    context, source = step.context, step.source
    limit = source.max_files_per_run - 1
    if limit == 0:
        return  # KISSmetrics' rule: one file a run
    following = next_files(
        context.instance,
        source,
        root_files,
        set(context.instance.get_dynamic_partitions(SourceNames.of(source).partitions)),
        RunProgress.through(step.warehouse, source, root_files),
        limit=limit,
        after=context.partition_key,
    )
    if following.set_aside:
        context.log.warning(
            f"passed over {counted(len(following.set_aside), 'quarantined file')} "
            f"({names_and_more(following.set_aside, 5)})"
        )
    taken = import_in_order(step, following.keys, seconds_left, files_before=1)
    completed, cut_on_budget = taken.completed, taken.cut_on_budget
    if not completed:
        return
    tags = {CAUGHT_UP_TAG: completed[-1]}  # what the run's archive step takes
    if not cut_on_budget:  # what the runs list shows of the run, as for a budget stop
        tags[OUTCOME_TAG] = f"{counted(len(completed) + 1, 'file')} imported"
    step.tag_run(tags)


@dataclass(frozen=True)
class TakenInOrder:
    """What ``import_in_order`` did: the keys it completed, in order, and why it stopped
    before the last key, if it did (``None`` when every key is complete)."""

    completed: list[str]
    stopped: str | None = None
    cut_on_budget: bool = False  # a file stopped on the budget: the run's outcome tag says so


def import_in_order(
    step: RunStep,
    keys: list[str],
    budget_for_next: Callable[[], float | None],
    files_before: int = 0,
) -> TakenInOrder:
    """Import ``keys`` in order, each file reported on its own partition, until one is cut
    by the budget or fails. ``budget_for_next``, asked before each file: what is left of
    the run's budget, or ``None`` for the file's own; ``files_before``: files the run
    completed before these."""
    context, source = step.context, step.source
    completed: list[str] = []
    for key in keys:
        left = budget_for_next()
        if left is not None and left <= 0:
            stopped = (
                f"time budget used after {counted(len(completed) + files_before, 'file')}; "
                f"s3://{source.bucket}/{key} and the files after it wait for the next tick"
            )
            context.log.info(stopped)
            return TakenInOrder(completed, stopped)
        file = step.file(key)
        try:
            report = file.load(left)
        except Failure as failure:
            stopped = (
                f"stopped at s3://{source.bucket}/{key}: {failure.description} "
                "The next tick imports it in a run of its own."
            )
            context.log.warning(stopped)
            return TakenInOrder(completed, stopped)
        for _ in file.report(report):
            pass  # a file not the run's own logs its results as events
        if not report.complete:
            step.record_budget_stop(report.ledger, files_before=len(completed) + files_before)
            stopped = (
                f"s3://{source.bucket}/{key} stopped on its time budget at "
                f"{report.ledger.percent_done:g}%; the next tick resumes it"
            )
            return TakenInOrder(completed, stopped, cut_on_budget=True)
        completed.append(key)
    return TakenInOrder(completed)


def archive_caught_up(step: RunStep) -> None:
    """Archive the files the run's import step took after its own, each on its partition:
    the complete ones at the bucket root after the run's key through the one it tagged."""
    context, source = step.context, step.source
    run = context.instance.get_run_by_id(context.run.run_id)
    through = run.tags.get(CAUGHT_UP_TAG) if run is not None else None
    if through is None:
        return
    own = context.partition_key
    for file in sorted(list_root_files(step.client, source), key=lambda f: f.key):
        if not own < file.key <= through:
            continue
        try:
            step.file(file.key).archive()
        except NotImported:
            continue  # passed over (quarantined), or sent after the import step listed
        except S3AccessError as exc:
            context.log.warning(
                f"stopped archiving at s3://{source.bucket}/{file.key}: {exc}. It stays at the "
                "bucket root, imported; the next tick archives it in a run of its own."
            )
            return
