"""One file version in an import run, as a unit: its import (from the ledger's committed
offset, within the budget), what the run reports of it (progress, and once complete its
tables and data checks), and its archive.

The run's own partition returns its results to the step; a file a catch-up or backfill
run takes beside it logs the same results as events on its own partition.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dagster import AssetExecutionContext, AssetMaterialization, Failure

from kmdagster.archiver import archive_imported_file
from kmdagster.config import SourceConfig
from kmdagster.defs.file_import.results import (
    FileResult,
    already_imported_message,
    archive_observation,
    as_partition_event,
    file_results,
    is_selected,
    progress_observation,
    recorded_resume_offset,
)
from kmdagster.defs.metadata import archive_metadata
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.resources import WarehouseFault
from kmdagster.defs.runs import OUTCOME_TAG, UNREADABLE_TAG
from kmdagster.importer import ImportReport, import_file
from kmdagster.s3.objects import S3AccessError
from kmdagster.s3.piece_reader import FileChangedError, UnreadableFileError
from kmdagster.seams import crash_point
from kmdagster.stages import timed
from kmdagster.warehouse.database import disk_full_message
from kmdagster.warehouse.warehouse import LedgerConflict, LedgerRow, Warehouse
from kmdagster.wording import counted

__all__ = ["FileImport", "FileResult", "RunStep"]


@dataclass(frozen=True)
class RunStep:
    """What a step of an import run has open: its context, S3 client and warehouse."""

    context: AssetExecutionContext
    client: Any
    warehouse: Warehouse
    source: SourceConfig

    def file(self, key: str) -> FileImport:
        return FileImport(self, key)

    @property
    def own_key(self) -> str | None:
        """The run's one partition; None in a run of a range of partitions (a backfill's),
        whose every file is reported on its own partition."""
        if self.context.has_partition_key_range:
            return None
        return self.context.partition_key

    @property
    def range_keys(self) -> list[str]:
        """The partitions of a backfill run's range, in key (import) order."""
        return sorted(self.context.partition_keys)

    @property
    def own_file(self) -> FileImport:
        assert self.own_key is not None, "a run of a range has no file of its own"
        return self.file(self.own_key)

    def tag_run(self, tags: dict[str, str]) -> None:
        self.context.instance.add_run_tags(self.context.run.run_id, tags)

    def record_budget_stop(self, row: LedgerRow, files_before: int = 0) -> None:
        """Tag the run, and say in its log, that the budget cut ``row``'s file;
        ``files_before``: the files the run completed before it."""
        source = self.source
        if files_before:
            stopped = (
                f"{counted(files_before, 'file')} imported, then stopped on budget at "
                f"{row.percent_done:g}% of {row.file_key}"
            )
        else:
            stopped = f"{row.percent_done:g}% imported, stopped on budget"
        self.tag_run({OUTCOME_TAG: stopped})
        self.context.log.warning(
            f"time budget of {source.time_budget_seconds}s used: stopped at byte "
            f"{row.next_offset} of {row.size_bytes} of s3://{source.bucket}/{row.file_key}; "
            "the next scheduled run resumes there (its archive is skipped until the file is "
            "complete)"
        )


@dataclass(frozen=True)
class FileImport:
    """The file at ``key`` in this run (the version at the bucket root, or the ledger's)."""

    step: RunStep
    key: str

    @property
    def is_the_runs_own(self) -> bool:
        return self.key == self.step.own_key

    def load(self, budget_seconds: float | None = None) -> ImportReport:
        """``import_file`` from the committed offset until done or out of budget (the
        source's, or ``budget_seconds``, what is left of the run's); what it cannot do (the
        file gone, changed or unreadable, another run's, a full disk) is a ``Failure``
        that says why."""
        step, source, key = self.step, self.step.source, self.key
        try:
            return import_file(
                step.client,
                step.warehouse,
                source,
                key,
                step.context.run.run_id,
                resume_hint=recorded_resume_offset(step.context.instance, source, key),
                budget_seconds=budget_seconds,
            )
        except UnreadableFileError as exc:
            # The same bytes fail the same way at every retry: set aside at once (the tag is
            # what the quarantine rule reads), so later files go first from the next tick. A
            # file taken after the run's own is tagged by its own run, at the next tick.
            if self.is_the_runs_own:
                step.tag_run(
                    {UNREADABLE_TAG: "true", OUTCOME_TAG: "failed: file unreadable, set aside"}
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

    def record_outcome(self, report: ImportReport) -> None:
        """Tag the run with what it did to its file, so the Runs list tells a run that
        stopped on its budget from one that finished the file (Dagster shows both as
        Success)."""
        row = report.ledger
        if not report.complete:
            self.step.record_budget_stop(row)
            return
        # The share first: the Runs list shows the first few words of a tag.
        if report.already_imported:
            done = "100%, already imported: loaded nothing"
        else:
            done = (
                f"100% imported: {counted(row.lines_loaded, 'line')} loaded, "
                f"{row.lines_rejected:,} rejected"
            )
        self.step.tag_run({OUTCOME_TAG: done})

    def report(self, report: ImportReport) -> Iterator[FileResult]:
        """Log the progress; the run's own file yields its results to the step, a file
        taken after it logs them as events on its own partition."""
        step = self.step
        self._log_progress_notes(report)
        observation = progress_observation(step.source, report)
        # A file a run completes after its own is observed once, when archived: this
        # observation would say what that one says (Dagster stores each event).
        if observation is not None and (self.is_the_runs_own or not report.complete):
            step.context.log_event(observation)
        results = self._selected_results(report)
        if self.is_the_runs_own:
            yield from results
            return
        for result in results:
            # log_event takes check evaluations too, though its annotation says not.
            step.context.log_event(as_partition_event(result, self.key))  # type: ignore[arg-type]

    def _log_progress_notes(self, report: ImportReport) -> None:
        """Say in the run's log that the file was complete before the run, or that the
        recorded resume offset disagreed with the ledger's."""
        crash_point("asset.before_progress_event")
        log = self.step.context.log
        if report.already_imported:
            log.info(already_imported_message(self.step.source, report.ledger))
        elif report.hint_corrected:
            log.warning(
                f"recorded resume offset {report.resume_hint} disagreed with the ledger's "
                f"{report.start_offset} for {report.ledger.file_key}; resumed from the ledger"
            )

    def _selected_results(self, report: ImportReport) -> list[FileResult]:
        """What the run selected of the file's results: the tables' materializations
        (when complete) and its data checks, on what it has committed so far."""
        warehouse, context = self.step.warehouse, self.step.context
        with warehouse.database.on_every_core():
            with timed("checkpoint"):
                warehouse.checkpoint()  # the checks read every row of the file
            with timed("checks and metadata"):
                results = file_results(warehouse.database, self.step.source, report)
        return [result for result in results if is_selected(context, result)]

    def archive(self) -> dict[str, Any]:
        """Move the complete file under completed_imports/ (``archiver``); the archive
        asset's metadata, saying if an earlier run had moved it. The file's own partition
        is observed ``archived``; a file not the run's own is logged as its partition's
        materialization. Raises ``NotImported`` or ``S3AccessError``."""
        step, source = self.step, self.step.source
        moved = archive_imported_file(step.client, step.warehouse, source, self.key)
        step.context.log_event(archive_observation(source, moved))
        row = moved.ledger
        if moved.already_archived:
            step.context.log.info(
                f"s3://{source.bucket}/{row.file_key} (ETag {row.file_etag}) was already "
                f"archived to {moved.archived_key}; nothing to move"
            )
        metadata = archive_metadata(
            row, source.bucket, moved.archived_key, moved.rejects_key, moved.already_archived
        )
        if not self.is_the_runs_own:
            step.context.log_event(
                AssetMaterialization(
                    asset_key=SourceNames.of(source).archive, partition=self.key, metadata=metadata
                )
            )
        return metadata
