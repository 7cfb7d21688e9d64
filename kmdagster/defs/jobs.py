"""The import job of a source: import the partition's file, then archive it, in one process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import AssetSelection, define_asset_job, in_process_executor

from kmdagster.config import SourceConfig
from kmdagster.defs.assets import SourceAssets
from kmdagster.defs.runs import import_run_tags

if TYPE_CHECKING:
    from kmdagster.dagster_internals import AssetJob


def build_import_job(source: SourceConfig, assets: SourceAssets, backend: str) -> AssetJob:
    """``<source>_import_job``. In-process: a DuckDB file admits one writing process, and
    the import and the archive, one after the other, need no process each."""
    return define_asset_job(
        name=f"{source.name}_import_job",
        selection=AssetSelection.assets(assets.tables, assets.archive),
        executor_def=in_process_executor,
        # Run-queue limits key on these tags (one run per source, one per DuckDB file);
        # run monitoring fails a run that outlives its max runtime (a dead process).
        tags=import_run_tags(source, backend),
        description=f"Imports one file of source {source.name!r} and archives it when complete.",
    )
