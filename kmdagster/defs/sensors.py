"""The sensor that registers each new matching S3 key as a dynamic partition."""

from dagster import (
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster_aws.s3 import S3Resource

from kmdagster.config import SourceConfig
from kmdagster.defs.partitions import files_partitions_name, is_valid_partition_key
from kmdagster.storage.s3_objects import FilePattern, list_matching_files


def new_partition_keys(listed_keys: list[str], registered: set[str]) -> tuple[list[str], list[str]]:
    """(keys to register, keys Dagster cannot take as partition keys), both sorted."""
    fresh = sorted(key for key in set(listed_keys) if key not in registered)
    return (
        [key for key in fresh if is_valid_partition_key(key)],
        [key for key in fresh if not is_valid_partition_key(key)],
    )


def build_file_sensor(
    source: SourceConfig, partitions: DynamicPartitionsDefinition
) -> SensorDefinition:
    pattern = FilePattern.from_base_filename(source.base_filename)
    partitions_name = files_partitions_name(source)

    @sensor(
        name=f"{source.name}_file_sensor",
        minimum_interval_seconds=source.sensor_interval_seconds,
        # Off until the user confirms the setup (`kmdagster confirm` or the UI toggle).
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Registers each key matching {pattern.describe()} at the root of "
            f"s3://{source.bucket} as a partition of {partitions_name}."
        ),
    )
    def file_sensor(context: SensorEvaluationContext, km_s3: S3Resource):
        listed = [f.key for f in list_matching_files(km_s3.get_client(), source.bucket, pattern)]
        registered = set(context.instance.get_dynamic_partitions(partitions_name))
        to_add, unusable = new_partition_keys(listed, registered)
        for key in unusable:
            context.log.warning(
                f"s3://{source.bucket}/{key} matches but cannot be a Dagster partition key "
                "(it contains '...' or a control character); rename it to import it"
            )
        if not to_add:
            return SkipReason(
                f"no new keys matching {pattern.describe()} in s3://{source.bucket} "
                f"({len(listed)} listed, all registered)"
            )
        return SensorResult(dynamic_partitions_requests=[partitions.build_add_request(to_add)])

    return file_sensor
