"""One file version in an import run, as a unit: its import (from the ledger's committed
offset, within the budget), what the run reports of it (progress, and once complete its
tables and data checks), and its archive.

The run's own partition returns its results to the step; a file a catch-up run takes
after it (``catch_up``) logs the same results as events on its own partition.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dagster import AssetExecutionContext, AssetMaterialization

from kmdagster.archiver import archive_imported_file
from kmdagster.config import SourceConfig
from kmdagster.defs.file_events import (
    FileResult,
    as_partition_event,
    import_partition_file,
    log_progress_notes,
    progress_observation,
    report_archive,
    reported_file,
)
from kmdagster.defs.naming import SourceNames
from kmdagster.importer import ImportReport
from kmdagster.warehouse.warehouse import Warehouse


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


@dataclass(frozen=True)
class FileImport:
    """The file at ``key`` in this run (the version at the bucket root, or the ledger's)."""

    step: RunStep
    key: str

    @property
    def is_the_runs_own(self) -> bool:
        return self.key == self.step.own_key

    def load(self, budget_seconds: float | None = None) -> ImportReport:
        """Import from the committed offset until done or out of budget (the source's, or
        ``budget_seconds``, what is left of the run's); a ``Failure`` says what stopped it."""
        step = self.step
        return import_partition_file(
            step.context, step.client, step.warehouse, step.source, self.key, budget_seconds
        )

    def report(self, report: ImportReport) -> Iterator[FileResult]:
        """Log the progress; the run's own file yields its results to the step, a file
        taken after it logs them as events on its own partition."""
        step = self.step
        log_progress_notes(step.context, step.source, report)
        observation = progress_observation(step.source, report)
        # A file a run completes after its own is observed once, when archived: this
        # observation would say what that one says (Dagster stores each event).
        if observation is not None and (self.is_the_runs_own or not report.complete):
            step.context.log_event(observation)
        results = reported_file(step.context, step.warehouse, step.source, report)
        if self.is_the_runs_own:
            yield from results
            return
        for result in results:
            # log_event takes check evaluations too, though its annotation says not.
            step.context.log_event(as_partition_event(result, self.key))  # type: ignore[arg-type]

    def archive(self) -> dict[str, Any]:
        """Move the complete file under completed_imports/ (``archiver``); the archive
        asset's metadata. A file not the run's own is logged as its partition's
        materialization. Raises ``NotImported`` or ``S3AccessError``."""
        step = self.step
        moved = archive_imported_file(step.client, step.warehouse, step.source, self.key)
        metadata = report_archive(step.context, step.source, moved)
        if not self.is_the_runs_own:
            step.context.log_event(
                AssetMaterialization(
                    asset_key=SourceNames.of(step.source).archive,
                    partition=self.key,
                    metadata=metadata,
                )
            )
        return metadata
