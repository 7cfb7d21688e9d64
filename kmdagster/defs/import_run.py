"""An import run's two steps, each one call from its asset: the import step (claim the
source, retire the versions S3 replaced, import and report the run's own file, then catch
up; or a backfill's range of files) and the archive step (the run's own file, then the
files its import step caught up; or the range's complete files)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from dagster import Failure, MaterializeResult

from kmdagster.archiver import NotImported
from kmdagster.defs.backfill import archive_range, backfill_range, claim_source
from kmdagster.defs.catch_up import archive_caught_up, catch_up
from kmdagster.defs.file_events import FileResult, record_outcome
from kmdagster.defs.file_import import RunStep
from kmdagster.importer import retire_replaced_versions
from kmdagster.s3.objects import S3AccessError, list_root_files
from kmdagster.stages import timed


def import_step(step: RunStep) -> Iterator[FileResult]:
    """The run's own file within the budget, its results, then the files after it while
    the same budget lasts (``max_files_per_run`` over 1)."""
    with timed("import step"):
        yield from _import_files(step)


def _import_files(step: RunStep) -> Iterator[FileResult]:
    context, source = step.context, step.source
    started = time.monotonic()
    claim_source(context, source)
    try:
        root_files = list_root_files(step.client, source)
        for retired in retire_replaced_versions(step.warehouse, source, root_files):
            context.log.info(
                f"s3://{source.bucket}/{retired.file_key} (ETag {retired.file_etag}) is "
                f"{retired.status}: its {retired.lines_loaded:,} loaded lines leave the "
                "km_* relations for the *_replaced ones; it never resumes"
            )
    except S3AccessError as exc:
        raise Failure(description=str(exc)) from exc
    if step.own_key is None:
        yield from backfill_range(step)
        return
    own = step.own_file
    report = own.load()
    results = list(own.report(report))
    record_outcome(context, source, report)
    yield from results
    if report.complete:
        catch_up(step, root_files, lambda: started + source.time_budget_seconds - time.monotonic())


def archive_step(step: RunStep) -> MaterializeResult | None:
    """Move the run's own complete file under completed_imports/, then those its import
    step caught up."""
    with timed("archive step"):
        if step.own_key is None:
            archive_range(step)  # each file materialized on its own partition
            return None
        try:
            metadata = step.own_file.archive()
        except (NotImported, S3AccessError) as exc:
            raise Failure(description=str(exc)) from exc
        archive_caught_up(step)
    return MaterializeResult(metadata=metadata)
