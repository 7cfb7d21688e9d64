"""materialize() tests of the import and archive assets, over SeaweedFS and a DuckDB file
(the import and resume tests on PostgreSQL too)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from kmdagster import seams
from kmdagster.archiver import NotImported, archive_imported_file
from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.file_import.assets import build_source_assets
from kmdagster.defs.file_import.results import recorded_resume_offset
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.resources import build_resources
from kmdagster.defs.specs import SourceSpecs
from kmdagster.km_format.split import split_km_lines
from kmdagster.markdown import file_states_markdown
from kmdagster.s3.archive import archive_file, archive_key_for
from kmdagster.s3.objects import S3AccessError, S3File
from kmdagster.s3.piece_reader import PieceReader
from kmdagster.s3.rejects_file import rejects_key_for
from kmdagster.status import file_states
from kmdagster.warehouse.backends import read_warehouse
from kmdagster.warehouse.warehouse import DuckDBWarehouse, PieceEnd
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import READ_ONLY, make_config, run_import, warehouse_rows

KEY = "accounts-0001.json"


def materialize_partition(config: Any, instance: DagsterInstance, key: str):
    source = config.sources[0]
    instance.add_dynamic_partitions(SourceNames.of(source).partitions, [key])
    assets = build_source_assets(SourceSpecs(source, config.warehouse.backend))
    return materialize(
        [assets.file, assets.tables, assets.archive],
        partition_key=key,
        instance=instance,
        resources=build_resources(config),
        selection=[assets.tables, assets.archive],
    )


def only_observation(result: Any) -> Any:
    """The one progress observation a run logs for its file."""
    [observation] = [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    return observation


def uploaded_with_small_budget(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, data: bytes
) -> Any:
    """Upload KEY and return a config whose runs each commit one 2 KB chunk."""
    s3.put_object(Bucket=bucket, Key=KEY, Body=data)
    return make_config(
        s3_server, bucket, warehouse_path, chunk_bytes=2048, time_budget_seconds=0.001
    )


def query(warehouse: Path | WarehouseSettings, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(warehouse, WarehouseSettings):
        return warehouse_rows(warehouse, sql)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_materialize_imports_whole_file_and_archives_it(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_settings: WarehouseSettings,
    instance: DagsterInstance,
) -> None:
    file = km_file(seed=7, repeats=25)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    config = make_config(s3_server, bucket, warehouse_settings)

    result = materialize_partition(config, instance, KEY)

    assert result.success
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert AssetKey(["accounts", "km_events"]) in materialized
    assert AssetKey(["accounts", "archived_file"]) in materialized
    assert query(warehouse_settings, "SELECT count(*) FROM km_events") == [(file.events,)]
    assert query(warehouse_settings, "SELECT count(*) FROM km_rejects") == [(file.rejects,)]
    [(status, archived_key, completed_at)] = query(
        warehouse_settings, "SELECT status, archived_key, completed_at FROM km_import_files"
    )
    assert status == "archived"
    assert archived_key == archive_key_for(KEY, completed_at.astimezone(timezone.utc))
    assert s3.get_object(Bucket=bucket, Key=archived_key)["Body"].read() == file.data
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=KEY)


@pytest.mark.slow  # dozens of budget-stopped runs on each backend
def test_budget_stops_runs_early_and_resumes_to_exactly_once(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_settings: WarehouseSettings,
    instance: DagsterInstance,
) -> None:
    file = km_file(seed=3, repeats=60)  # ~37 KB: many 2 KB chunks
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    config = make_config(
        s3_server, bucket, warehouse_settings, chunk_bytes=2048, time_budget_seconds=0.001
    )
    runs = 0
    offsets = []
    while True:
        result = materialize_partition(config, instance, KEY)
        assert result.success
        runs += 1
        recorded = recorded_resume_offset(instance, config.sources[0], KEY)
        assert recorded is not None
        offsets.append(recorded[0])
        events = {e.asset_key for e in result.get_asset_materialization_events()}
        if AssetKey(["accounts", "archived_file"]) in events:
            break
        assert not events, "a partial run must not materialize the tables"
        assert runs < 100
    assert runs > 5
    assert offsets == sorted(offsets) and offsets[-1] == len(file.data)
    assert query(
        warehouse_settings,
        "SELECT count(*), count(DISTINCT (file_key, file_etag, line_no)) FROM km_events",
    ) == [(file.events, file.events)]
    assert query(warehouse_settings, "SELECT count(*) FROM km_properties") == [(file.properties,)]
    assert query(warehouse_settings, "SELECT count(*) FROM km_aliases") == [(file.aliases,)]
    assert query(
        warehouse_settings,
        "SELECT count(*), count(DISTINCT line_no) FROM km_rejects",
    ) == [(file.rejects, file.rejects)]
    assert query(
        warehouse_settings,
        "SELECT lines_read, lines_loaded, lines_rejected, lines_blank, status FROM km_import_files",
    ) == [(file.lines, file.valid_lines, file.rejects, file.blanks, "archived")]


def test_a_version_replaced_partway_stays_superseded_and_out_of_the_relations(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_settings: WarehouseSettings,
    instance: DagsterInstance,
) -> None:
    first, second = km_file(seed=3, repeats=60), km_file(seed=4, repeats=20)
    s3.put_object(Bucket=bucket, Key=KEY, Body=first.data)
    partial_config = make_config(
        s3_server, bucket, warehouse_settings, chunk_bytes=2048, time_budget_seconds=0.001
    )
    assert materialize_partition(partial_config, instance, KEY).success  # one chunk of it
    [(partial_events,)] = query(warehouse_settings, "SELECT count(*) FROM km_events")
    assert 0 < partial_events < first.events

    s3.put_object(Bucket=bucket, Key=KEY, Body=second.data)  # re-sent with new content
    whole = make_config(s3_server, bucket, warehouse_settings)
    assert materialize_partition(whole, instance, KEY).success
    ledger = query(
        warehouse_settings, "SELECT status, lines_loaded FROM km_import_files ORDER BY file_id"
    )
    assert [status for status, _ in ledger] == ["superseded", "archived"]
    # An analyst's count sees the current version's lines alone ...
    for table, expected in second.rows.items():
        assert query(warehouse_settings, f"SELECT count(*) FROM {table}") == [(expected,)]
    assert query(warehouse_settings, "SELECT count(*) FROM km_events_dedup") == query(
        warehouse_settings,
        "SELECT count(*) FROM (SELECT DISTINCT person, event, ts FROM km_events) AS d",
    )
    # ... and the replaced version's rows are kept, for audit, in relations of their own.
    assert query(
        warehouse_settings, "SELECT count(*), count(DISTINCT file_etag) FROM km_events_replaced"
    ) == [(partial_events, 1)]

    source = partial_config.sources[0]
    with read_warehouse(warehouse_settings) as warehouse:
        assert warehouse is not None
        states = file_states([], warehouse.ledger_rows(source.name))
    assert sorted(s.state for s in states) == ["archived", "superseded"]
    table = file_states_markdown(states)
    assert "never resumed" in table and "resume at" not in table


def test_partial_run_metadata_shows_resume_offset(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    file = km_file(seed=4, repeats=40)
    config = uploaded_with_small_budget(s3_server, s3, bucket, warehouse_path, file.data)
    result = materialize_partition(config, instance, KEY)
    observation = only_observation(result)
    metadata: dict[str, Any] = {k: v.value for k, v in observation.metadata.items()}
    assert observation.partition == KEY
    assert metadata["status"] == "in_progress"
    assert 0 < metadata["next_offset"] < len(file.data)
    assert metadata["run_bytes"] == metadata["next_offset"]
    assert metadata["stopped_on_budget"] is True
    assert metadata["run_lines_read"] == metadata["file_lines_read"] > 0
    # The run page says first why the archive step did not run.
    tag = instance.get_run_by_id(result.run_id).tags["kmdagster/outcome"]  # type: ignore[union-attr]
    assert tag == f"{metadata['percent_done']:g}% imported, stopped on budget"


def test_ledger_wins_over_a_stale_recorded_offset(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    """A kill between the warehouse commit and Dagster's event leaves the metadata behind."""
    file = km_file(seed=5, repeats=40)
    config = uploaded_with_small_budget(s3_server, s3, bucket, warehouse_path, file.data)
    materialize_partition(config, instance, KEY)
    first = recorded_resume_offset(instance, config.sources[0], KEY)
    assert first is not None
    # Advance the ledger behind Dagster's back, as a killed run would have.
    with DuckDBWarehouse.connect(warehouse_path) as warehouse:
        row = warehouse.ledger_row("accounts", KEY, first[1])
        assert row is not None
        with PieceReader(s3, bucket, KEY, row.file_etag, row.size_bytes, 2048) as reader:
            chunk = reader.read_piece(row.next_offset)
        split = split_km_lines(chunk.data, row.lines_read + 1, 2**31)
        warehouse.commit_chunk(
            row,
            [(warehouse.lay_out(split), PieceEnd(chunk.end, chunk.last, chunk.end))],
            run_id="test",
        )
    result = materialize_partition(config, instance, KEY)
    observation = only_observation(result)
    assert observation.metadata["resume_offset_corrected_from"].value == first[0]
    assert observation.metadata["run_start_offset"].value == chunk.end


def test_missing_file_fails_with_bucket_and_key(
    s3_server: SeaweedS3, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    config = make_config(s3_server, bucket, warehouse_path)
    with pytest.raises(Exception, match=rf"s3://{bucket}/{KEY} no longer exists"):
        materialize_partition(config, instance, KEY)


def test_archive_never_overwrites_a_different_object(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    file = km_file(seed=9, repeats=3)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    today = datetime.now(timezone.utc)
    squatter = archive_key_for(KEY, today)
    s3.put_object(Bucket=bucket, Key=squatter, Body=b"someone else's file\n")
    config = make_config(s3_server, bucket, warehouse_path)
    assert materialize_partition(config, instance, KEY).success
    [(archived_key,)] = query(warehouse_path, "SELECT archived_key FROM km_import_files")
    if archived_key.startswith(squatter.rsplit("/", 1)[0]):  # same UTC day
        assert archived_key == archive_key_for(KEY, today, attempt=1)
    assert s3.get_object(Bucket=bucket, Key=squatter)["Body"].read() == b"someone else's file\n"
    assert s3.get_object(Bucket=bucket, Key=archived_key)["Body"].read() == file.data


def test_a_version_replaced_after_its_import_is_not_archived_under_its_name(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    # Lines streamed before an overwrite are the old version's: its import can complete,
    # but the bucket no longer holds it, so there is nothing of it to move.
    old = km_file(seed=15, repeats=3)
    s3.put_object(Bucket=bucket, Key=KEY, Body=old.data)
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        report = run_import(s3, warehouse, bucket, KEY, 1 << 20)
    assert report.complete
    new_etag = s3.put_object(Bucket=bucket, Key=KEY, Body=b'{"_p":"x","_t":1700000000}\n')["ETag"]
    imported = S3File(key=KEY, etag=report.ledger.file_etag, size=report.ledger.size_bytes)
    with pytest.raises(S3AccessError, match=rf"s3://{bucket}/{KEY} no longer holds the imported"):
        archive_file(s3, bucket, imported, datetime.now(timezone.utc))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [KEY] and s3.head_object(Bucket=bucket, Key=KEY)["ETag"] == new_etag


def test_a_file_over_the_single_copy_limit_is_archived_in_parts(s3: Any, bucket: str) -> None:
    # CopyObject stops at 5 GB; a larger file is copied as parts of a multipart upload.
    # Here the limit is scaled down to an 11 MB file, in S3's smallest parts (5 MB).
    line = km_file(seed=16, repeats=1).data
    data = line * (11 * 2**20 // len(line) + 1)
    etag = s3.put_object(Bucket=bucket, Key=KEY, Body=data)["ETag"]
    source = S3File(key=KEY, etag=etag, size=len(data))

    def in_parts() -> AbstractContextManager[seams.Seams]:
        return seams.injected(single_copy_max_bytes=2**20, copy_part_bytes=5 * 2**20)

    with in_parts():
        archived = archive_file(s3, bucket, source, datetime.now(timezone.utc))
    copy = s3.get_object(Bucket=bucket, Key=archived)
    assert copy["Body"].read() == data
    assert copy["Metadata"] == {"kmdagster-source-etag": etag.strip('"')}
    assert copy["ETag"].endswith('-3"')  # two parts of 5 MB and the remainder
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [archived]
    # Archiving again (a retried step) finds its own copy and does not copy twice.
    s3.put_object(Bucket=bucket, Key=KEY, Body=data)
    with in_parts():
        assert archive_file(s3, bucket, source, datetime.now(timezone.utc)) == archived


def test_a_parts_copy_of_a_replaced_version_fails_clearly_and_leaves_no_parts(
    s3: Any, bucket: str
) -> None:
    data = km_file(seed=17, repeats=20).data
    old_etag = s3.put_object(Bucket=bucket, Key=KEY, Body=data)["ETag"]
    s3.put_object(Bucket=bucket, Key=KEY, Body=data + b"\n")
    imported = S3File(key=KEY, etag=old_etag, size=len(data))
    with (
        pytest.raises(S3AccessError, match=rf"s3://{bucket}/{KEY} no longer holds the imported"),
        seams.injected(single_copy_max_bytes=1000, copy_part_bytes=len(data) // 3),
    ):
        archive_file(s3, bucket, imported, datetime.now(timezone.utc))
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [KEY]


def test_a_parts_copy_without_write_rights_names_the_permission(
    s3_server: SeaweedS3, s3: Any, bucket: str
) -> None:
    data = km_file(seed=18, repeats=5).data
    etag = s3.put_object(Bucket=bucket, Key=KEY, Body=data)["ETag"]
    read_only = s3_server.client(READ_ONLY)
    with pytest.raises(S3AccessError) as denied, seams.injected(single_copy_max_bytes=1000):
        archive_file(
            read_only,
            bucket,
            S3File(key=KEY, etag=etag, size=len(data)),
            datetime.now(timezone.utc),
        )
    assert str(denied.value).startswith(f"CreateMultipartUpload on s3://{bucket}/completed_")
    assert "grant s3:PutObject on completed_imports/*" in str(denied.value)
    assert READ_ONLY.secret_key not in str(denied.value)


def test_crash_between_copy_and_delete_is_finished_without_reimport(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    file = km_file(seed=11, repeats=5)
    etag = s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)["ETag"]
    config = make_config(s3_server, bucket, warehouse_path)
    source = config.sources[0]
    instance.add_dynamic_partitions(SourceNames.of(source).partitions, [KEY])
    assets = build_source_assets(SourceSpecs(source, config.warehouse.backend))
    imported = materialize(
        [assets.file, assets.tables, assets.archive],
        partition_key=KEY,
        instance=instance,
        resources=build_resources(config),
        selection=[assets.tables],
    )
    assert imported.success
    [(completed_at,)] = query(warehouse_path, "SELECT completed_at FROM km_import_files")
    destination = archive_key_for(KEY, completed_at.astimezone(timezone.utc))
    # The archive copy happened, then the process died before the delete.
    s3.copy_object(
        Bucket=bucket,
        Key=destination,
        CopySource={"Bucket": bucket, "Key": KEY},
        Metadata={"kmdagster-source-etag": etag.strip('"')},
        MetadataDirective="REPLACE",
    )
    assert materialize_partition(config, instance, KEY).success
    assert query(warehouse_path, "SELECT count(*) FROM km_events") == [(file.events,)]
    assert query(warehouse_path, "SELECT status, archived_key FROM km_import_files") == [
        ("archived", destination)
    ]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=KEY)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="completed_imports/")["Contents"]
    assert [o["Key"] for o in listed] == [destination, rejects_key_for(destination)]


def test_file_overwritten_mid_import_fails_clearly_then_imports_as_new_version(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    old = km_file(seed=12, repeats=40)
    config = uploaded_with_small_budget(s3_server, s3, bucket, warehouse_path, old.data)
    materialize_partition(config, instance, KEY)  # stops part-way on its budget
    new = km_file(seed=13, repeats=2)
    s3.put_object(Bucket=bucket, Key=KEY, Body=new.data)

    [(old_etag, old_loaded)] = query(
        warehouse_path, "SELECT file_etag, lines_loaded FROM km_import_files"
    )
    # The ledger row of the old version stays, superseded; the new version is a new row.
    result = materialize_partition(config, instance, KEY)
    assert result.success
    rows = query(
        warehouse_path,
        "SELECT file_etag, status, lines_loaded FROM km_import_files ORDER BY file_id",
    )
    assert rows[0] == (old_etag, "superseded", old_loaded)
    assert rows[1][1:] == ("archived", new.valid_lines)  # small enough for one chunk
    per_etag = dict(
        query(warehouse_path, "SELECT file_etag, count(*) FROM km_events_replaced GROUP BY 1")
    )
    assert per_etag[old_etag] < old.events  # rows stay attributed to the version they came from


def test_etag_change_between_chunks_marks_the_file_failed(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    old = km_file(seed=14, repeats=40)
    s3.put_object(Bucket=bucket, Key=KEY, Body=old.data)

    def overwrite_after_first_chunk(row: Any) -> None:
        s3.put_object(Bucket=bucket, Key=KEY, Body=b'{"_p":"x","_t":1700000000,"_n":"New"}\n')

    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        with pytest.raises(Exception, match=rf"s3://{bucket}/{KEY} changed during its import"):
            run_import(
                s3,
                warehouse,
                bucket,
                KEY,
                2048,
                time_budget_seconds=300,
                request_bytes=2048,  # each chunk its own GET, which meets the new ETag
                after_commit=overwrite_after_first_chunk,
            )
        [row] = warehouse.ledger_rows("accounts")
    assert row.status == "failed" and row.error and "changed during its import" in row.error
    assert 0 < row.next_offset < len(old.data)


def test_the_archiver_moves_a_complete_file_once_without_dagster(
    s3: Any, bucket: str, warehouse_path: Path
) -> None:
    file = km_file(seed=6, repeats=5)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    source = SourceConfig(name="accounts", bucket=bucket, base_filename="accounts.json")
    with DuckDBWarehouse.connect(warehouse_path) as warehouse:
        partial = run_import(s3, warehouse, bucket, KEY, 1024, time_budget_seconds=0)
        assert not partial.complete
        with pytest.raises(NotImported, match="is not fully imported"):
            archive_imported_file(s3, warehouse, source, KEY)
        assert run_import(s3, warehouse, bucket, KEY, 1 << 20).complete

        moved = archive_imported_file(s3, warehouse, source, KEY)
        again = archive_imported_file(s3, warehouse, source, KEY)
        assert warehouse.latest_ledger_row("accounts", KEY).status == "archived"  # type: ignore[union-attr]
    assert not moved.already_archived and again.already_archived
    assert again.archived_key == again.ledger.archived_key == moved.archived_key
    assert moved.rejects_key == rejects_key_for(moved.archived_key)
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {moved.archived_key, moved.rejects_key}
    assert s3.get_object(Bucket=bucket, Key=moved.archived_key)["Body"].read() == file.data
