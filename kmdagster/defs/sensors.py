"""The sensor of a source: registers each new matching S3 key as a dynamic partition.

For each key it registers it materializes ``<source>/s3_file`` (the file landed in S3).
What else a tick does is handed in by the definitions' factory (``after_registration``:
``source_tick.py``, the source's health, alerts and pruning), which gets the tick's one
listing of the bucket root and returns its events, the partitions to remove and the
cursor; this module knows nothing of it, and an error there never stops registration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dagster import (
    AddDynamicPartitionsRequest,
    AssetCheckEvaluation,
    AssetMaterialization,
    AssetObservation,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster_aws.s3 import S3Resource

from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.metadata import landed_materialization
from kmdagster.defs.partitions import is_valid_partition_key
from kmdagster.defs.resources import WarehouseResource
from kmdagster.defs.specs import SourceSpecs
from kmdagster.s3.objects import RootFiles, S3File, list_root
from kmdagster.wording import counted, names_and_more


def new_partition_keys(listed_keys: list[str], registered: set[str]) -> tuple[list[str], list[str]]:
    """(keys to register, keys Dagster cannot take as partition keys), both sorted."""
    fresh = sorted(key for key in set(listed_keys) if key not in registered)
    return (
        [key for key in fresh if is_valid_partition_key(key)],
        [key for key in fresh if not is_valid_partition_key(key)],
    )


@dataclass(frozen=True)
class RootListing:
    """What a tick saw: the S3 client, the matching files at the bucket root, and the keys
    registered as partitions before this tick."""

    client: object
    root: RootFiles
    registered: set[str]

    @property
    def files(self) -> list[S3File]:
        """The files after the source's ``start_after``: those it acts on."""
        return self.root.files


@dataclass(frozen=True)
class TickReport:
    """What a tick adds to registration: asset events, partitions to remove, the cursor
    to keep (the one the tick started from when nothing changed), and what it did, in
    words for the tick's log."""

    events: Sequence[AssetCheckEvaluation | AssetMaterialization | AssetObservation] = ()
    partitions_to_remove: Sequence[str] = ()
    cursor: str | None = None
    done: Sequence[str] = field(default_factory=list)


AfterRegistration = Callable[
    [SensorEvaluationContext, SourceConfig, WarehouseSettings, RootListing], TickReport
]


def build_file_sensor(
    specs: SourceSpecs, after_registration: AfterRegistration, after_registration_does: str
) -> SensorDefinition:
    """``after_registration_does``: what ``after_registration`` does, in words for the
    sensor's description."""
    source, partitions, pattern, names = specs.source, specs.partitions, specs.pattern, specs.names

    @sensor(
        name=names.sensor,
        minimum_interval_seconds=source.sensor_interval_seconds,
        # Off until the user confirms the setup (`kmdagster confirm` or the UI toggle).
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Registers each key matching {pattern.describe()} at the root of "
            f"s3://{source.bucket} as a partition of {names.partitions}; then "
            f"{after_registration_does}."
        ),
    )
    def file_sensor(
        context: SensorEvaluationContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ):
        client = km_s3.get_client()
        root = list_root(client, source)
        listed = root.files
        registered = set(context.instance.get_dynamic_partitions(names.partitions))
        to_add, unusable = new_partition_keys([f.key for f in listed], registered)
        for key in unusable:
            context.log.warning(
                f"s3://{source.bucket}/{key} matches but cannot be a Dagster partition key "
                "(it contains '...' or a control character); rename it to import it"
            )
        by_key = {f.key: f for f in listed}
        landed = [landed_materialization(names.file, source.bucket, by_key[k]) for k in to_add]
        listing = RootListing(client, root, registered)
        try:
            report = after_registration(context, source, km_warehouse.settings, listing)
        except Exception as exc:  # noqa: BLE001  # whatever it is, registration goes on
            context.log.exception(f"tick of {source.name!r} after registration failed: {exc}")
            report = TickReport(cursor=context.cursor)
        to_remove = list(report.partitions_to_remove)
        events = [*landed, *report.events]
        if not events and not to_remove and report.cursor == context.cursor:
            return SkipReason(
                f"no new keys matching {pattern.describe()} in s3://{source.bucket} "
                f"({len(listed)} listed, all registered); file states unchanged"
            )
        # A sensor that requests no run is a skipped tick to Dagster: say what it did instead
        # of Dagster's "returned an empty result".
        did = (
            [f"registered {counted(len(to_add), 'new file')} ({names_and_more(to_add, 3)})"]
            if to_add
            else []
        )
        did.extend(report.done)
        requests: list[AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest] = []
        if to_add:
            requests.append(partitions.build_add_request(to_add))
        if to_remove:
            requests.append(partitions.build_delete_request(to_remove))
        return SensorResult(
            dynamic_partitions_requests=requests,
            asset_events=events,
            cursor=report.cursor,
            skip_reason=SkipReason("; ".join(did or ["nothing new"]) + "; the schedule imports"),
        )

    return file_sensor
