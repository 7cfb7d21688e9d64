"""The warehouse side: the ledger and the km_* rows, in a DuckDB file, PostgreSQL or a
DuckLake lake."""
