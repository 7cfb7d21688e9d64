"""Per-source assets: the S3 file, the four warehouse tables it feeds, and its archive.

- ``<source>/s3_file``: the file in S3, one partition per key. The sensor reports it
  materialized when it registers the key; each import run records its progress (resume
  offset, percent, lines, throughput) as an observation, which the next run reads back as
  its resume hint.
- ``<source>/km_events``, ``km_properties``, ``km_aliases``, ``km_rejects``: materialized,
  with their own row counts, only when the whole file is in the warehouse; their data
  checks are evaluated at every run, on what the file has committed so far. A re-run of
  a complete file loads nothing and says so.
- ``<source>/archived_file``: the move to completed_imports/ with the rejects file beside it.

Each asset is one step of an import run (``import_step``, ``archive_step``): the import
step claims the source, retires the versions S3 replaced, imports and reports the run's
own file (``unit.FileImport``), then catches up (``catch_up``); or imports a backfill's
range of files (``backfill``). The archive step archives the run's own file, then the
files its import step caught up, or the range's complete files.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    multi_asset,
)
from dagster_aws.s3 import S3Resource

from kmdagster.archiver import NotImported
from kmdagster.defs.file_import.backfill import archive_range, backfill_range, claim_source
from kmdagster.defs.file_import.catch_up import archive_caught_up, catch_up
from kmdagster.defs.file_import.unit import FileResult, RunStep
from kmdagster.defs.resources import WarehouseResource, warehouse_faults_tagged
from kmdagster.defs.specs import SourceSpecs
from kmdagster.importer import retire_replaced_versions
from kmdagster.s3.objects import S3AccessError, list_root_files
from kmdagster.stages import timed


@dataclass(frozen=True)
class SourceAssets:
    file: AssetSpec
    tables: AssetsDefinition
    archive: AssetsDefinition


def build_import_asset(specs: SourceSpecs) -> AssetsDefinition:
    """``<source>_import``: loads the partition's file within the budget, then checks it."""
    source = specs.source

    @multi_asset(
        name=specs.names.import_assets,
        specs=specs.tables,
        check_specs=specs.data_checks,
        partitions_def=specs.partitions,
        description="Reads the file in line-aligned chunks and loads it, within the budget.",
        # A file always loads into all four tables in one transaction per chunk; a run that
        # selected fewer reports only those (a later run of the others loads nothing and
        # says so). Subsettable so that a backfill's run, whose files each report on their
        # own partition, yields no check result standing for its whole range.
        can_subset=True,
        # A backfill takes its partitions in ranges, each one run importing them in key order.
        backfill_policy=BackfillPolicy.multi_run(specs.source.backfill_files_per_run),
    )
    def import_tables(
        context: AssetExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ):
        with warehouse_faults_tagged(context), km_warehouse.connect() as warehouse:
            yield from import_step(RunStep(context, km_s3.get_client(), warehouse, source))

    return import_tables


def build_archive_asset(specs: SourceSpecs) -> AssetsDefinition:
    """``<source>/archived_file``: the complete file moved under completed_imports/."""
    source = specs.source

    @multi_asset(
        name=specs.archive.key.to_python_identifier(),
        specs=[specs.archive],
        backfill_policy=BackfillPolicy.multi_run(specs.source.backfill_files_per_run),
    )
    def archived_file(
        context: AssetExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ) -> Iterator[MaterializeResult]:
        with warehouse_faults_tagged(context), km_warehouse.connect() as warehouse:
            result = archive_step(RunStep(context, km_s3.get_client(), warehouse, source))
        if result is not None:
            yield result

    return archived_file


def build_source_assets(specs: SourceSpecs) -> SourceAssets:
    """The file spec, the import multi-asset and the archive asset of one source."""
    return SourceAssets(
        file=specs.file, tables=build_import_asset(specs), archive=build_archive_asset(specs)
    )


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
    own.record_outcome(report)
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
