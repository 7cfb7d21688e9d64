"""Line-aligned ranged reads from a real S3 server, and the import's edge-case files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kmdagster.storage.chunk_reader import FileChangedError, LineChunkReader
from kmdagster.storage.warehouse import DuckDBWarehouse
from kmdagster_tests.conftest import run_import

LINE = b'{"_p":"a","_t":1700000000,"_n":"x"}'


def read_all(reader: LineChunkReader) -> list[bytes]:
    chunks, offset = [], 0
    while offset < reader.size:
        chunk = reader.read_chunk(offset)
        assert chunk.end > offset
        chunks.append(chunk.data)
        offset = chunk.end
    return chunks


def reader_for(s3: Any, bucket: str, key: str, body: bytes, chunk_bytes: int) -> LineChunkReader:
    etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
    return LineChunkReader(s3, bucket, key, etag, len(body), chunk_bytes)


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
    chunk = reader.read_chunk(0)
    assert chunk.data == body[3:] and chunk.end == len(body)


def test_changed_etag_stops_the_read(s3: Any, bucket: str) -> None:
    reader = reader_for(s3, bucket, "d.json", LINE + b"\n", 1024)
    s3.put_object(Bucket=bucket, Key="d.json", Body=LINE + b"\n" + LINE + b"\n")
    with pytest.raises(FileChangedError, match="d.json changed during its import"):
        reader.read_chunk(0)


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
