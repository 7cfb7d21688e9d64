"""kmdagster: KISSmetrics-style recurring JSON imports from S3, orchestrated by Dagster."""

import os

# polars allocates through its own jemalloc, which by default keeps freed pages for 10 s.
# An import splits chunk after chunk on two threads, so those pages pile up: returning
# them after a second took the import's peak from 493 MB to 472-481 MB at 3 MB chunks, at
# no measured cost (docs/performance.md). jemalloc reads this once, when polars loads, so
# it applies where kmdagster is imported first, as in a Dagster code location; a value
# already set wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:0")
