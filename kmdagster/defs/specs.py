"""Every asset and check spec of a source, built in this one place from its settings, as
dagster-dlt's translator builds every spec of a resource: keys (from ``SourceNames``),
descriptions, groups, kinds, partitions and dependencies. The definitions in the other
``defs`` modules take their spec from here and add only behaviour.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

from dagster import AssetCheckSpec, AssetSpec, DynamicPartitionsDefinition, PreviewWarning

from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.checks import (
    FILE_CHECKS_TABLE,
    LINES_ACCOUNTED_FOR,
    REJECT_RATE,
    ROWS_MATCH_LEDGER,
)
from kmdagster.defs.naming import (
    BACKLOG_CHECK,
    LAKE_FILES_ASSET,
    PERMISSION_CHECK,
    QUARANTINE_CHECK,
    SourceNames,
)
from kmdagster.defs.partitions import files_partitions
from kmdagster.defs.runs import RETRY_TAG
from kmdagster.s3.objects import FilePattern
from kmdagster.warehouse.file_rows import ROW_IDENTITY
from kmdagster.warehouse.schema import ROW_TABLES

TABLE_DESCRIPTIONS = {
    "km_events": "Events (_n) of this source's files, one row per valid event line.",
    "km_properties": "Properties set by this source's files, one row per property.",
    "km_aliases": "Aliases (_p2) of this source's files.",
    "km_rejects": "Lines of this source's files that broke a format rule, with the reason.",
}


@dataclass(frozen=True)
class SourceSpecs:
    """The specs of one source, whose tables live in a ``backend`` warehouse."""

    source: SourceConfig
    backend: str  # the warehouse's, shown as the tables' kind

    @cached_property
    def names(self) -> SourceNames:
        return SourceNames.of(self.source)

    @cached_property
    def partitions(self) -> DynamicPartitionsDefinition:
        return files_partitions(self.source)

    @cached_property
    def pattern(self) -> FilePattern:
        return FilePattern.of_source(self.source)

    @property
    def group(self) -> str:
        return self.source.name

    @property
    def file(self) -> AssetSpec:
        """``<source>/s3_file``: one partition per key, materialized at registration."""
        return AssetSpec(
            key=self.names.file,
            description=(
                f"Files s3://{self.source.bucket}/{self.source.base_filename} pattern matches; "
                "one partition per S3 key, materialized when the sensor registers it. "
                "Observations record each run's import progress; the backlog check lists "
                "every file's state."
            ),
            partitions_def=self.partitions,
            group_name=self.group,
            kinds={"s3"},
        )

    @property
    def tables(self) -> list[AssetSpec]:
        """The four relations the import multi-asset loads, skipped until a file completes."""
        return [
            AssetSpec(
                key=self.names.table(table),
                deps=[self.names.file],
                description=TABLE_DESCRIPTIONS[table],
                partitions_def=self.partitions,
                group_name=self.group,
                skippable=True,
                kinds={self.backend, "polars"},
            )
            for table in ROW_TABLES
        ]

    @property
    def archive(self) -> AssetSpec:
        return AssetSpec(
            key=self.names.archive,
            deps=[self.names.table(table) for table in ROW_TABLES],
            description=(
                "Moves a fully imported file to completed_imports/YYYY/MM/DD/ in its bucket, "
                "with its rejected lines beside it as NAME.rejects.jsonl."
            ),
            partitions_def=self.partitions,
            group_name=self.group,
            kinds={"s3"},
            # A backfill's run materializes each archived file on its own partition.
            skippable=True,
        )

    @property
    def file_states(self) -> AssetSpec:
        """Its own asset so that the graph's sidebar shows the counts and the files in
        progress, failed or quarantined on a click, with no dialog to open."""
        return AssetSpec(
            key=self.names.file_states,
            deps=[self.names.file],
            description=(
                "The files of this source by state (in_progress, failed, quarantined, pending, "
                "imported, archived): counts and names, the next file first. Materialized by "
                f"{self.names.sensor} whenever a file's state changes; the backlog check "
                "of s3_file has the full table."
            ),
            group_name=self.group,
        )

    @property
    def preview(self) -> AssetSpec:
        return AssetSpec(
            key=self.names.preview,
            description=(
                "What the first pending file would import: events, properties, aliases, "
                "rejects and warnings. Materialize it before switching the sensor and "
                "schedule on."
            ),
            group_name=self.group,
            kinds={"s3", "polars"},
        )

    @property
    def data_checks(self) -> list[AssetCheckSpec]:
        """The checks the import multi-asset declares, one result per file."""
        described = [
            (
                table,
                ROWS_MATCH_LEDGER,
                f"Rows of the file in {table} are what its import committed, each once: as "
                f"many, and no ({ROW_IDENTITY[table]}) twice.",
            )
            for table in ROW_TABLES
        ]
        described += [
            (
                FILE_CHECKS_TABLE,
                LINES_ACCOUNTED_FOR,
                "Every line read is loaded, rejected or blank: "
                "lines_read = loaded + rejected + blank.",
            ),
            (
                FILE_CHECKS_TABLE,
                REJECT_RATE,
                f"Warns when over {self.source.reject_rate_warn_percent:g}% of the file's "
                "non-blank lines were rejected (reject_rate_warn_percent).",
            ),
        ]
        # Per-partition checks are a preview feature of Dagster 1.13; its warning is noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PreviewWarning)
            return [
                AssetCheckSpec(
                    name,
                    asset=self.names.table(table),
                    description=text,
                    partitions_def=self.partitions,
                )
                for table, name, text in described
            ]

    @property
    def backlog_check(self) -> AssetCheckSpec:
        return AssetCheckSpec(
            BACKLOG_CHECK,
            asset=self.names.file,
            description=(
                f"Every {self.pattern.describe()} file of s3://{self.source.bucket} in import "
                "order, with its state; warns when the oldest waiting file is over "
                f"{self.source.backlog_warn_hours:g} h old (backlog_warn_hours)."
            ),
        )

    @property
    def quarantine_check(self) -> AssetCheckSpec:
        return AssetCheckSpec(
            QUARANTINE_CHECK,
            asset=self.names.file,
            description=(
                "Fails while a file of this source is quarantined: its import runs failed "
                f"{self.source.quarantine_after_failed_runs} times in a row without advancing "
                "its committed offset (quarantine_after_failed_runs), or one run found its "
                "bytes unreadable (not the compression its name says, cut short, too large), "
                "so later files went first. Lift it with "
                f"`kmdagster retry {self.source.name} KEY` or a launch tagged {RETRY_TAG}=true."
            ),
        )

    @property
    def permission_check(self) -> AssetCheckSpec:
        return AssetCheckSpec(
            PERMISSION_CHECK,
            asset=self.names.preview,
            description=(
                "Tries list, read, write under completed_imports/ and delete on "
                f"s3://{self.source.bucket}; a failure shows the IAM policy statement that "
                "grants what is missing."
            ),
        )


def lake_files_spec(settings: WarehouseSettings) -> AssetSpec:
    """``kmdagster/lake_files``: one per lake warehouse, not per source."""
    return AssetSpec(
        key=LAKE_FILES_ASSET,
        description=(
            "The lake's Parquet files. Materializing it merges small files, expires snapshots "
            f"older than {settings.ducklake_snapshot_retention_days:g} days and deletes the "
            "files nothing reads any more (orphans a killed writer left among them); safe "
            "while imports run."
        ),
        group_name="kmdagster",
        kinds={"ducklake"},
    )
