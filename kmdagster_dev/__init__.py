"""Development tooling: local SeaweedFS and PostgreSQL servers, a Dagster instance file,
KM sample files, and the `make dev` / soak / demo-feed commands (run as modules)."""
