"""Compressed files: the import of a plain, a gzip and a zstd file of the same lines, and
what a resume costs in a compressed file.

    python -m benchmarks.compressed                          # 1,000,000 lines; 1 GB resume
    python -m benchmarks.compressed --lines 100000 --resume-mb 100   # quick

The files are compressed by the ``gzip`` and ``zstd`` tools at their default levels and
imported from a local S3 (SeaweedFS) by ``import_file`` into an empty DuckDB file, each in
a process of its own (``benchmarks.lake``'s measurement: its peak RSS is its own). A
resume in a compressed file decompresses it from its start up to the committed offset:
the resume figure is the time and CPU to the first piece at 50% and at 90% of a file of
``--resume-mb`` uncompressed, against the time budget of a run (300 s by default).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.lake import BUCKET, MB, result_of, spawn, start_bench_s3, write_config
from kmdagster.config import WarehouseSettings
from kmdagster_dev.km_files import COMPRESSION_TOOLS, compress_file, write_file

ROOT = Path(__file__).resolve().parent.parent
AVERAGE_LINE_BYTES = 190  # of the generator's mixed profile


def resume_cost(endpoint: str, key: str, etag: str, size: int, offset: int) -> dict[str, Any]:
    """In the child: the time and CPU a resume at ``offset`` takes to its first piece."""
    import boto3

    from kmdagster.s3.objects import compression_of
    from kmdagster.s3.piece_reader import PIECE_BYTES, PieceReader

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_started = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    with PieceReader(
        client, BUCKET, key, etag, size, PIECE_BYTES, compression=compression_of(key)
    ) as reader:
        piece = reader.read_piece(offset)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    assert piece.start == offset and piece.data
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_started,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def line_start_after(path: Path, offset: int) -> int:
    with path.open("rb") as file:
        file.seek(offset)
        return offset + len(file.readline())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--resume-mb", type=int, default=1024)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kmdagster-compressed-bench-"))
    server, client = start_bench_s3(work)
    imports: dict[str, dict[str, Any]] = {}
    resumes: list[tuple[str, int, dict[str, Any]]] = []
    try:
        plain = work / "accounts.json"
        size = write_file(plain, args.lines)
        files = {"plain": plain, **{c: compress_file(plain, c) for c in COMPRESSION_TOOLS}}
        print(f"{args.lines:,} lines, {size / MB:,.0f} MB plain")
        for kind, path in files.items():
            client.upload_file(str(path), BUCKET, path.name)
            warehouse = WarehouseSettings(duckdb_path=str(work / f"{kind}.duckdb"))
            config = write_config(work / f"{kind}.yaml", server, warehouse)
            imports[kind] = result_of(spawn(config, "accounts", path.name))
            imports[kind]["object_bytes"] = path.stat().st_size
            print(f"imported {kind}: {imports[kind]['seconds']:.1f} s", flush=True)

        big = work / "accounts-big.json"
        big_size = write_file(big, args.resume_mb * MB // AVERAGE_LINE_BYTES)
        for compression in COMPRESSION_TOOLS:
            packed = compress_file(big, compression)
            client.upload_file(str(packed), BUCKET, packed.name)
            head = client.head_object(Bucket=BUCKET, Key=packed.name)
            for share in (50, 90):
                offset = line_start_after(big, big_size * share // 100)
                child = [
                    sys.executable,
                    "-m",
                    "benchmarks.compressed",
                    "resume",
                    server.endpoint_url,
                    packed.name,
                    head["ETag"],
                    str(head["ContentLength"]),
                    str(offset),
                ]
                done = subprocess.run(child, cwd=ROOT, capture_output=True, text=True, check=True)
                resumes.append((compression, share, json.loads(done.stdout.splitlines()[-1])))
            packed.unlink()
    finally:
        server.stop()

    print(
        "\n| file | object MB | seconds | lines/s | CPU s per million lines | peak RSS MB |"
        "\n| --- | --- | --- | --- | --- | --- |"
    )
    for kind, result in imports.items():
        lines, seconds = result["lines"], result["seconds"]
        print(
            f"| {kind} | {result['object_bytes'] / MB:,.1f} | {seconds:.1f} | "
            f"{lines / seconds:,.0f} | {result['cpu_seconds'] / lines * 1e6:.1f} | "
            f"{result['peak_rss_mb']:.0f} |"
        )
    print(
        f"\nResume in a {big_size / MB:,.0f} MB file (uncompressed), to its first piece:"
        "\n| compression | at | seconds | CPU s | share of a 300 s budget | peak RSS MB |"
        "\n| --- | --- | --- | --- | --- | --- |"
    )
    for compression, share, result in resumes:
        print(
            f"| {compression} | {share}% | {result['seconds']:.1f} | {result['cpu_seconds']:.1f} "
            f"| {result['seconds'] / 300:.1%} | {result['peak_rss_mb']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["resume"]:
        endpoint, key, etag, size, offset = sys.argv[2:7]
        print(json.dumps(resume_cost(endpoint, key, etag, int(size), int(offset))))
        sys.exit(0)
    sys.exit(main())
