"""kmdagster: KISSmetrics-style recurring JSON imports from S3, orchestrated by Dagster."""

# The environment a process that imports files should start with: the deploy image, the
# Helm values, make dev, the soak test and the benchmark set it, and importing kmdagster
# changes nothing. polars allocates through its own jemalloc, which reads this variable
# once, when polars loads (polars puts its own default there when it is unset). Returning
# freed pages after a second took the import's peak to 472-481 MB at 3 MB chunks, from
# 493 MB, at no measured cost (docs/performance.md).
IMPORT_ENVIRONMENT = {"_RJEM_MALLOC_CONF": "dirty_decay_ms:1000,muzzy_decay_ms:0"}
