"""The hourly schedule: one run for the first pending file, in alphanumeric key order."""

from typing import TYPE_CHECKING

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)
from dagster_aws.s3 import S3Resource

from kmdagster.config import SourceConfig
from kmdagster.defs.file_import.pending import next_files
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.resources import WarehouseResource
from kmdagster.defs.run_history import RunProgress
from kmdagster.defs.runs import SOURCE_TAG, active_runs
from kmdagster.s3.objects import FilePattern, list_root_files
from kmdagster.wording import counted, names_and_more

if TYPE_CHECKING:
    from kmdagster.dagster_internals import AssetJob


def build_import_schedule(
    source: SourceConfig,
    job: "AssetJob",
) -> ScheduleDefinition:
    pattern = FilePattern.of_source(source)
    partitions_name = SourceNames.of(source).partitions

    @schedule(
        name=SourceNames.of(source).schedule,
        cron_schedule=source.cron,
        job=job,
        execution_timezone="UTC",
        # Off until the user confirms the setup (`kmdagster confirm` or the UI toggle).
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Each tick imports (or resumes) the first pending {pattern.describe()} file.",
    )
    def hourly_import(
        context: ScheduleEvaluationContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ):
        active = active_runs(context.instance, source)
        if active:
            run = active[0]
            return SkipReason(
                f"run {run.run_id} of source {source.name!r} is {run.status.value}; "
                "files are imported one at a time"
            )
        files = list_root_files(km_s3.get_client(), source)
        registered = set(context.instance.get_dynamic_partitions(partitions_name))
        progress = RunProgress.read_only(km_warehouse.settings, source, files)
        found = next_files(context.instance, source, files, registered, progress, limit=1)
        set_aside = found.set_aside
        if not found.keys:
            if set_aside:
                return SkipReason(
                    f"nothing to import: {counted(len(set_aside), 'pending file')} of "
                    f"s3://{source.bucket} {'is' if len(set_aside) == 1 else 'are'} "
                    f"quarantined ({names_and_more(set_aside, 5)}); "
                    f"lift one with `kmdagster retry {source.name} KEY`"
                )
            return SkipReason(
                f"nothing pending: no registered {pattern.describe()} file at the root of "
                f"s3://{source.bucket} ({len(files)} matching keys listed)"
            )
        [key] = found.keys
        if set_aside:
            context.log.warning(
                f"skipped {counted(len(set_aside), 'quarantined file')} "
                f"({names_and_more(set_aside, 5)}); importing {key}"
            )
        etag = next(f.etag for f in files if f.key == key)
        tick = context.scheduled_execution_time
        tick_id = tick.isoformat() if tick is not None else "manual"
        return RunRequest(
            run_key=f"{key}|{etag}|{tick_id}",
            partition_key=key,
            tags={SOURCE_TAG: source.name},
        )

    return hourly_import
