"""The import job of a source: import the partition's file, then archive it, in one process."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dagster import AssetSelection, define_asset_job, in_process_executor

from kmdagster.config import SourceConfig
from kmdagster.defs.file_import.assets import SourceAssets
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.runs import import_run_tags

if TYPE_CHECKING:
    from kmdagster.dagster_internals import AssetJob


RUN_LOG_LEVEL_ENV = "KMDAGSTER_RUN_LOG_LEVEL"


def run_log_level() -> str:
    level = os.environ.get(RUN_LOG_LEVEL_ENV, "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"{RUN_LOG_LEVEL_ENV}={level!r}: use DEBUG, INFO, WARNING or ERROR")
    return level


def build_import_job(source: SourceConfig, assets: SourceAssets, one_writer: bool) -> AssetJob:
    """``<source>_import_job``. In-process: a DuckDB file admits one writing process, and
    the import and the archive, one after the other, need no process each."""
    return define_asset_job(
        name=SourceNames.of(source).job,
        selection=AssetSelection.assets(assets.tables, assets.archive),
        executor_def=in_process_executor,
        # Run-queue limits key on these tags (one run per source, one in all for a single
        # writer: a DuckDB file, or a lake with a DuckDB-file catalog);
        # run monitoring fails a run that outlives its max runtime (a dead process).
        tags=import_run_tags(source, one_writer),
        # Every event still goes to the event log; the run's console (a terminal under
        # `dagster dev`, a pod's log) shows INFO and up unless KMDAGSTER_RUN_LOG_LEVEL says.
        config={"loggers": {"console": {"config": {"log_level": run_log_level()}}}},
        description=f"Imports one file of source {source.name!r} and archives it when complete.",
    )
