"""The loader a Dagster user would otherwise pick: dlt's filesystem source, JSONL reader,
into DuckDB, as dlt's documentation shows it. Runs in its own environment (.venv-dlt,
made by `make bench`), since dlt pins its own botocore.

    .venv-dlt/bin/python benchmarks/dlt_loader.py ENDPOINT BUCKET KEY DUCKDB_PATH MODE

MODE ``readers``: ``readers(...).read_jsonl()``, as dlt's documentation shows it (on S3
each line read costs a ranged read of an fsspec block); ``extract_content``:
``filesystem(..., extract_content=True) | read_jsonl()``, which reads the whole file into
memory first; ``lenient``: the filesystem source over KEY as a glob, each file read whole
and its lines parsed with orjson, a line that is not JSON skipped (dlt's reader stops the
load at the first), in dlt's parallel extract and two normalize workers (a history of
many small files).

Prints one JSON object: seconds, rows loaded into each table, and the error that stopped
the load, if any. Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

import dlt
import duckdb
import orjson
from dlt.common.configuration.specs import AwsCredentials
from dlt.sources.filesystem import FileItemDict, filesystem, readers


@dlt.transformer(name="km")
def lenient_jsonl(items: list[FileItemDict]):  # type: ignore[no-untyped-def]
    """Each file's JSON lines as rows; a line that does not parse is skipped."""
    for item in items:
        rows = []
        for line in item.read_bytes().splitlines():
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        yield rows


def main() -> int:
    endpoint, bucket, key, path, mode = sys.argv[1:6]
    credentials = AwsCredentials(
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=endpoint,
        region_name="us-east-1",
    )
    if mode == "lenient":
        os.environ.setdefault("NORMALIZE__WORKERS", "2")
        files = filesystem(bucket_url=f"s3://{bucket}", file_glob=key, credentials=credentials)
        jsonl = files | lenient_jsonl
    else:
        jsonl = readers(
            bucket_url=f"s3://{bucket}", file_glob=key, credentials=credentials
        ).read_jsonl()
    error = None
    with tempfile.TemporaryDirectory() as pipelines_dir:
        pipeline = dlt.pipeline(
            pipeline_name="km_dlt",
            destination=dlt.destinations.duckdb(path),
            dataset_name="km",
            pipelines_dir=pipelines_dir,
        )
        started = time.perf_counter()
        try:
            # dlt's advice for DuckDB: Parquet load files (its default INSERT statements
            # take minutes for a table of a few hundred columns).
            pipeline.run(jsonl, loader_file_format="parquet" if mode == "lenient" else None)
        except Exception as exc:  # what stopped it is the finding
            cause: BaseException = exc  # dlt wraps the error that stopped it
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
            error = (
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]} (the cause: "
                f"{type(cause).__name__}: {str(cause).strip()[:300]})"
            )
        seconds = time.perf_counter() - started
    tables: dict[str, int] = {}
    if os.path.exists(path):
        with duckdb.connect(path, read_only=True) as con:
            for (table,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'km' "
                "AND NOT starts_with(table_name, '_dlt')"
            ).fetchall():
                [(count,)] = con.execute(f'SELECT count(*) FROM km."{table}"').fetchall()
                tables[table] = count
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "tables": tables, "error": error, "peak_rss_mb": rss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
