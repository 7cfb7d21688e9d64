"""Line-aligned ranged reads from a real S3 server, and the import's edge-case files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from kmdagster.km_format.split import split_km_lines
from kmdagster.s3.piece_reader import FileChangedError, PieceReader
from kmdagster.warehouse.warehouse import DuckDBWarehouse
from kmdagster_dev.km_files import km_file
from kmdagster_tests.helpers import run_import

LINE = b'{"_p":"a","_t":1700000000,"_n":"x"}'


def read_all(reader: PieceReader) -> list[bytes]:
    chunks, offset = [], 0
    while offset < reader.size:
        chunk = reader.read_piece(offset)
        assert chunk.end > offset
        chunks.append(chunk.data)
        offset = chunk.end
    return chunks


def reader_for(s3: Any, bucket: str, key: str, body: bytes, chunk_bytes: int) -> PieceReader:
    etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
    return PieceReader(s3, bucket, key, etag, len(body), chunk_bytes)


def test_chunks_hold_whole_lines_and_cover_the_file(s3: Any, bucket: str) -> None:
    body = b"\n".join(LINE.replace(b'"x"', f'"e{i}"'.encode()) for i in range(200)) + b"\n"
    chunks = read_all(reader_for(s3, bucket, "a.json", body, 1000))
    assert len(chunks) > 5
    assert all(c.endswith(b"\n") for c in chunks)
    assert b"".join(chunks) == body


def test_line_longer_than_a_chunk_and_no_final_newline(s3: Any, bucket: str) -> None:
    long_line = b'{"_p":"a","_t":1700000000,"v":"' + b"z" * 5000 + b'"}'
    body = LINE + b"\n" + long_line + b"\n" + LINE
    chunks = read_all(reader_for(s3, bucket, "b.json", body, 1024))
    assert b"".join(chunks) == body
    assert long_line + b"\n" in chunks


def test_bom_is_removed_from_the_first_chunk_only(s3: Any, bucket: str) -> None:
    body = b"\xef\xbb\xbf" + LINE + b"\r\n" + LINE + b"\r\n"
    reader = reader_for(s3, bucket, "c.json", body, 1 << 20)
    chunk = reader.read_piece(0)
    assert chunk.data == body[3:] and chunk.end == len(body)


def test_changed_etag_stops_the_read(s3: Any, bucket: str) -> None:
    reader = reader_for(s3, bucket, "d.json", LINE + b"\n", 1024)
    s3.put_object(Bucket=bucket, Key="d.json", Body=LINE + b"\n" + LINE + b"\n")
    with pytest.raises(FileChangedError, match="d.json changed during its import"):
        reader.read_piece(0)


@pytest.mark.parametrize(
    ("body", "loaded", "blank", "rejected"),
    [
        (b"", 0, 0, 0),
        (b"\n\n  \n", 0, 3, 0),
        (b"\xef\xbb\xbf" + LINE + b"\r\n\r\n" + LINE, 2, 1, 0),
        (LINE + b"\nnot json\n" + LINE, 2, 0, 1),
    ],
)
def test_edge_files_import_and_reconcile(
    s3: Any, bucket: str, tmp_path: Path, body: bytes, loaded: int, blank: int, rejected: int
) -> None:
    s3.put_object(Bucket=bucket, Key="e.json", Body=body)
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        report = run_import(
            s3,
            warehouse,
            bucket,
            "e.json",
            1024,
            time_budget_seconds=300,
        )
    row = report.ledger
    assert row.status == "imported" and row.next_offset == len(body)
    assert (row.lines_loaded, row.lines_blank, row.lines_rejected) == (loaded, blank, rejected)
    assert row.lines_read == loaded + blank + rejected


def table_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {
            table: con.execute(f"SELECT * EXCLUDE (file_etag) FROM {table} ORDER BY ALL").fetchall()
            for table in ("km_events", "km_properties", "km_aliases", "km_rejects")
        }


def test_chunks_split_in_pieces_load_the_same_rows_as_whole_chunks(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    data = km_file(seed=21, repeats=60).data
    s3.put_object(Bucket=bucket, Key="p.json", Body=data)
    reports = {}
    for name, chunk_bytes, piece_bytes in (("whole", 1 << 20, 1 << 20), ("pieces", 4096, 300)):
        with DuckDBWarehouse.connect(tmp_path / f"{name}.duckdb") as warehouse:
            reports[name] = run_import(
                s3, warehouse, bucket, "p.json", chunk_bytes, piece_bytes=piece_bytes
            )
    whole, pieces = reports["whole"], reports["pieces"]
    assert whole.chunks == 1 and pieces.chunks >= len(data) / 4096 > 5
    assert pieces.ledger.next_offset == whole.ledger.next_offset == len(data)
    counts = ("lines_read", "lines_loaded", "lines_rejected", "lines_blank")
    assert [getattr(pieces, c) for c in counts] == [getattr(whole, c) for c in counts]
    assert table_rows(tmp_path / "pieces.duckdb") == table_rows(tmp_path / "whole.duckdb")


def test_a_failure_between_pieces_commits_nothing_of_the_chunk(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    km = km_file(seed=22, repeats=60)
    s3.put_object(Bucket=bucket, Key="q.json", Body=km.data)
    calls = 0

    def clock_failing_mid_chunk() -> float:
        # Read once per piece as it is handed to a splitter; the fifth is inside the first
        # chunk's transaction, after some of its pieces were inserted.
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("clock failed")
        return time.time()

    path = tmp_path / "w.duckdb"
    with DuckDBWarehouse.connect(path) as warehouse:
        with pytest.raises(RuntimeError, match="clock failed"):
            run_import(
                s3,
                warehouse,
                bucket,
                "q.json",
                8192,
                piece_bytes=500,
                now_epoch=clock_failing_mid_chunk,
            )
        [row] = warehouse.ledger_rows("accounts")
        assert (row.next_offset, row.lines_read) == (0, 0)
        assert warehouse.database.rows("SELECT count(*) FROM km_events") == [(0,)]
        report = run_import(s3, warehouse, bucket, "q.json", 8192, piece_bytes=500)
    assert report.ledger.status == "imported" and report.chunks > 1
    with duckdb.connect(str(path), read_only=True) as con:
        [(events, distinct_lines)] = con.execute(
            "SELECT count(*), count(DISTINCT line_no) FROM km_events"
        ).fetchall()
    assert events == distinct_lines == km.events


def test_a_file_replaced_mid_chunk_keeps_whole_chunks_only(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    data = km_file(seed=23, repeats=60).data
    s3.put_object(Bucket=bucket, Key="r.json", Body=data)
    committed = []

    def replace_after_first_chunk(row: Any) -> None:
        # The pieces read ahead are of the old version; a later piece of the same chunk
        # meets the new ETag in its own GET, so that chunk must not commit in part.
        committed.append(row)
        s3.put_object(Bucket=bucket, Key="r.json", Body=LINE + b"\n")

    path = tmp_path / "w.duckdb"
    with DuckDBWarehouse.connect(path) as warehouse:
        with pytest.raises(FileChangedError, match="r.json changed during its import"):
            run_import(
                s3,
                warehouse,
                bucket,
                "r.json",
                8192,
                piece_bytes=500,
                request_bytes=500,
                after_commit=replace_after_first_chunk,
            )
        [row] = warehouse.ledger_rows("accounts")
    [first] = committed
    assert row.status == "failed" and "changed during its import" in (row.error or "")
    assert (row.next_offset, row.lines_read) == (first.next_offset, first.lines_read)
    assert 8192 - 500 < row.next_offset <= 8192 < len(data) - 8192
    expected = split_km_lines(data[: row.next_offset], 1, 2**31)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM km_events").fetchone() == (expected.events.height,)
