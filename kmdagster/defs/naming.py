"""Every Dagster name of a source, built in this one place (the "names users rely on" of
the design): the partitions definition, sensor, schedule, job, asset keys and check names.
Every Dagster module, the CLI and the test helpers ask ``SourceNames`` for them, as
dagster-dlt's translator owns its asset keys."""

from __future__ import annotations

from dataclasses import dataclass

from dagster import AssetKey

from kmdagster.config import SourceConfig

BACKLOG_CHECK = "backlog"
QUARANTINE_CHECK = "quarantine"
PERMISSION_CHECK = "s3_permissions"
# The lake's maintenance: one of each per warehouse, not per source.
LAKE_FILES_ASSET = AssetKey(["kmdagster", "lake_files"])
LAKE_MAINTENANCE_JOB = "lake_maintenance_job"
LAKE_MAINTENANCE_SCHEDULE = "lake_maintenance"


@dataclass(frozen=True)
class SourceNames:
    """The names of source ``source`` (a ``SourceConfig.name``)."""

    source: str

    @classmethod
    def of(cls, source: SourceConfig) -> SourceNames:
        return cls(source.name)

    @property
    def partitions(self) -> str:
        return f"{self.source}_files"

    @property
    def sensor(self) -> str:
        return f"{self.source}_file_sensor"

    @property
    def alert_sensor(self) -> str:
        return f"{self.source}_alerts"

    @property
    def schedule(self) -> str:
        return f"{self.source}_hourly_import"

    @property
    def job(self) -> str:
        return f"{self.source}_import_job"

    @property
    def import_assets(self) -> str:
        """The multi-asset that loads the four tables."""
        return f"{self.source}_import"

    @property
    def file(self) -> AssetKey:
        return AssetKey([self.source, "s3_file"])

    def table(self, table: str) -> AssetKey:
        """``table`` is one of the warehouse relations: km_events, ..."""
        return AssetKey([self.source, table])

    @property
    def archive(self) -> AssetKey:
        return AssetKey([self.source, "archived_file"])

    @property
    def file_states(self) -> AssetKey:
        return AssetKey([self.source, "file_states"])

    @property
    def preview(self) -> AssetKey:
        return AssetKey([self.source, "import_preview"])
