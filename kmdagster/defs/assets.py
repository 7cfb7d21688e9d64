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

With ``max_files_per_run`` over 1 both steps go on to the next pending files after the
run's own (``catch_up``), each reported on its own partition.
"""

import time
from dataclasses import dataclass

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Failure,
    MaterializeResult,
    multi_asset,
)
from dagster_aws.s3 import S3Resource

from kmdagster.archiver import NotImported, archive_imported_file
from kmdagster.defs.catch_up import archive_following_files, import_following_files
from kmdagster.defs.file_events import (
    import_partition_file,
    record_outcome,
    report_archive,
    reported_file,
)
from kmdagster.defs.resources import WarehouseResource
from kmdagster.defs.specs import SourceSpecs
from kmdagster.importer import retire_replaced_versions
from kmdagster.s3.objects import S3AccessError, list_root_files


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
        # A file always loads into all four tables in one transaction per chunk: no subset.
        can_subset=False,
    )
    def import_tables(
        context: AssetExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ):
        key, client = context.partition_key, km_s3.get_client()
        started = time.monotonic()
        with km_warehouse.connect() as warehouse:
            try:
                root_files = list_root_files(client, source)
                for retired in retire_replaced_versions(warehouse, source, root_files):
                    context.log.info(
                        f"s3://{source.bucket}/{retired.file_key} (ETag {retired.file_etag}) is "
                        f"{retired.status}: its {retired.lines_loaded:,} loaded lines leave the "
                        "km_* relations for the *_replaced ones; it never resumes"
                    )
            except S3AccessError as exc:
                raise Failure(description=str(exc)) from exc
            report = import_partition_file(context, client, warehouse, source, key)
            results = reported_file(context, warehouse, source, report)
            record_outcome(context, source, report)
            yield from results
            if report.complete and source.max_files_per_run > 1:
                import_following_files(
                    context,
                    client,
                    warehouse,
                    source,
                    root_files,
                    seconds_left=lambda: started + source.time_budget_seconds - time.monotonic(),
                )

    return import_tables


def build_archive_asset(specs: SourceSpecs) -> AssetsDefinition:
    """``<source>/archived_file``: the complete file moved under completed_imports/."""
    source = specs.source

    @multi_asset(name=specs.archive.key.to_python_identifier(), specs=[specs.archive])
    def archived_file(
        context: AssetExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ) -> MaterializeResult:
        key, client = context.partition_key, km_s3.get_client()
        with km_warehouse.connect() as warehouse:
            try:
                report = archive_imported_file(client, warehouse, source, key)
            except (NotImported, S3AccessError) as exc:
                raise Failure(description=str(exc)) from exc
            if source.max_files_per_run > 1:
                archive_following_files(context, client, warehouse, source)
        return MaterializeResult(metadata=report_archive(context, source, report))

    return archived_file


def build_source_assets(specs: SourceSpecs) -> SourceAssets:
    """The file spec, the import multi-asset and the archive asset of one source."""
    return SourceAssets(
        file=specs.file, tables=build_import_asset(specs), archive=build_archive_asset(specs)
    )
