"""kmdagster: KISSmetrics-style recurring JSON imports from S3, orchestrated by Dagster."""
