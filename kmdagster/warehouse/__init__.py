"""The warehouse side: the ledger and the km_* rows, on DuckDB or PostgreSQL."""
