"""How km_people grows: alias groups merged chunk by chunk, then the view queried.

    python -m benchmarks.people            # 250k/50k, 500k/100k, 1M/200k identities/pairs

Identities come from event rows (one per identity); alias pairs join random identities
and arrive in chunks of 20,000 pairs, each merged in its own transaction as an import
does it.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from kmdagster.warehouse.people import add_alias_pairs
from kmdagster.warehouse.warehouse import DuckDBWarehouse

SCALES = ((250_000, 50_000), (500_000, 100_000), (1_000_000, 200_000))
PAIRS_PER_CHUNK = 20_000


def measure(identities: int, pairs: int, workdir: Path) -> dict[str, float]:
    rng = random.Random(identities)
    path = workdir / f"people-{identities}.duckdb"
    with DuckDBWarehouse.connect(path) as warehouse:
        con = warehouse.database.connection
        con.execute(
            "INSERT INTO km_event_rows SELECT 1, i, 'user' || i, 1, now() FROM range(?) t(i)",
            [identities],
        )
        persons = [f"user{rng.randrange(identities)}" for _ in range(pairs)]
        aliases = [f"user{rng.randrange(identities)}" for _ in range(pairs)]
        frame = pl.DataFrame({"person": persons, "alias": aliases})
        merges = []
        for start in range(0, pairs, PAIRS_PER_CHUNK):
            chunk = frame.slice(start, PAIRS_PER_CHUNK)
            began = time.perf_counter()
            con.begin()
            add_alias_pairs(warehouse.database, chunk)
            con.commit()
            merges.append(time.perf_counter() - began)
    with DuckDBWarehouse.reader(path) as reader:  # as `kmdagster sql` reads it
        assert reader is not None
        began = time.perf_counter()
        [(seen, people)] = reader.database.rows(
            "SELECT count(*), count(DISTINCT person_id) FROM km_people"
        )
        query = time.perf_counter() - began
    path.unlink()
    return {
        "identities": seen,
        "people": people,
        "merge_total": sum(merges),
        "merge_last": merges[-1],
        "query": query,
    }


def main() -> int:
    print("| identities | alias pairs | people | merge all chunks s | last chunk s | km_people s |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as workdir:
        for identities, pairs in SCALES:
            r = measure(identities, pairs, Path(workdir))
            print(
                f"| {r['identities']:,.0f} | {pairs:,} | {r['people']:,.0f} | "
                f"{r['merge_total']:.2f} | {r['merge_last']:.3f} | {r['query']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
