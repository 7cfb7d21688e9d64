"""Setup in the Dagster UI: the preview asset and the S3 permission check of a source.

Both only read: the preview's materialization carries the summary as Markdown metadata
(no output is stored), and the check's probes leave nothing in the bucket.
``kmdagster confirm`` records the check and preview it ran with the same metadata.
"""

from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetMaterialization,
    AssetsDefinition,
    DagsterInstance,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset_check,
    multi_asset,
)
from dagster_aws.s3 import S3Resource

from kmdagster.config import SourceConfig
from kmdagster.defs.naming import PERMISSION_CHECK, SourceNames
from kmdagster.defs.resources import WarehouseResource
from kmdagster.defs.run_history import RunProgress, quarantined_files
from kmdagster.defs.specs import SourceSpecs
from kmdagster.markdown import check_markdown, preview_markdown
from kmdagster.preview import FilePreview, SetupRuleError, setup_preview
from kmdagster.s3.objects import S3AccessError, S3SetupError
from kmdagster.s3.permissions import PermissionResult, check_permissions
from kmdagster.warehouse.warehouse import WarehouseUnavailable


def preview_metadata(preview: FilePreview) -> dict[str, Any]:
    """The preview as asset metadata: the Markdown report and its headline numbers."""
    summary = preview.summary
    return {
        "preview": MetadataValue.md(preview_markdown(preview)),
        "file": preview.file.key,
        "etag": preview.file.etag,
        "lines": summary.lines,
        "valid_lines": summary.valid_lines,
        "rejected_lines": summary.rejected_lines,
        "blank_lines": summary.blank_lines,
        "people": summary.people,
        "events": summary.events.height,
        "properties": summary.properties.height,
        "aliases": summary.aliases,
        "warnings": len(summary.warnings),
    }


def permission_check_metadata(bucket: str, results: list[PermissionResult]) -> dict[str, Any]:
    """The permission check's report and one pass/FAIL entry per permission."""
    return {
        "report": MetadataValue.md(check_markdown(bucket, results)),
        **{result.permission.name: "pass" if result.passed else "FAIL" for result in results},
    }


def build_preview_asset(specs: SourceSpecs) -> AssetsDefinition:
    source, spec = specs.source, specs.preview

    @multi_asset(name=spec.key.to_python_identifier(), specs=[spec])
    def import_preview(
        context: AssetExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ) -> MaterializeResult:
        try:
            known = km_warehouse.known_names()
        except WarehouseUnavailable as exc:
            context.log.warning(f"names are not compared with the warehouse: {exc}")
            known = None
        try:
            client = km_s3.get_client()
            progress = RunProgress.at_root_now(client, source, km_warehouse.settings)
            set_aside = quarantined_files(context.instance, source, progress)
            preview = setup_preview(client, source, known, set_aside=set(set_aside))
        except (SetupRuleError, S3AccessError) as exc:
            raise Failure(description=str(exc)) from exc
        return MaterializeResult(metadata=preview_metadata(preview))

    return import_preview


def build_permission_check(specs: SourceSpecs) -> AssetChecksDefinition:
    source, pattern, spec = specs.source, specs.pattern, specs.permission_check

    @asset_check(asset=spec.asset_key, name=spec.name, description=spec.description)
    def s3_permissions(context: AssetCheckExecutionContext, km_s3: S3Resource) -> AssetCheckResult:
        try:
            results = check_permissions(km_s3.get_client(), source.bucket, pattern)
        except S3SetupError as exc:  # no permission is in question: say what is
            return AssetCheckResult(
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                description=str(exc),
                metadata={"error": str(exc)},
            )
        return AssetCheckResult(
            passed=all(result.passed for result in results),
            severity=AssetCheckSeverity.ERROR,
            metadata=permission_check_metadata(source.bucket, results),
        )

    return s3_permissions


def record_confirmed_setup(
    instance: DagsterInstance,
    source: SourceConfig,
    results: list[PermissionResult],
    preview: FilePreview,
) -> None:
    """What ``kmdagster confirm`` checked, as the UI shows it: the permission check's result
    and the preview's materialization, as if run from the UI."""
    key = SourceNames.of(source).preview
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=key,
            description="the preview `kmdagster confirm` showed",
            metadata=preview_metadata(preview),
        )
    )
    instance.report_runless_asset_event(
        AssetCheckEvaluation(
            asset_key=key,
            check_name=PERMISSION_CHECK,
            passed=all(result.passed for result in results),
            metadata=permission_check_metadata(source.bucket, results),
            severity=AssetCheckSeverity.ERROR,
        )
    )
