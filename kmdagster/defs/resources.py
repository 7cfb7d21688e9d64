"""Dagster resources: the S3 client (dagster-aws) and the warehouse connection."""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from kmdagster.config import KmConfig
from kmdagster.format.preview import KnownNames
from kmdagster.storage.warehouse import DuckDBWarehouse

S3_RESOURCE_KEY = "km_s3"
WAREHOUSE_RESOURCE_KEY = "km_warehouse"


class WarehouseResource(ConfigurableResource):
    """The DuckDB warehouse file; a connection is opened per step, never at load time."""

    duckdb_path: str = Field(description="Path of the DuckDB file holding the km_* tables.")

    @contextmanager
    def connect(self) -> Iterator[DuckDBWarehouse]:
        with DuckDBWarehouse.connect(self.duckdb_path) as warehouse:
            yield warehouse

    def known_names(self) -> KnownNames | None:
        """Names already loaded, read-only (None: no warehouse file yet, nothing is known)."""
        with DuckDBWarehouse.read_only(self.duckdb_path) as warehouse:
            return warehouse.known_names() if warehouse else KnownNames(frozenset(), frozenset())


def build_resources(config: KmConfig) -> dict[str, object]:
    """Resources for all sources. Credentials come from the standard AWS chain when used."""
    return {
        S3_RESOURCE_KEY: S3Resource(
            endpoint_url=config.s3.endpoint_url,
            region_name=config.s3.region_name,
            max_attempts=config.s3.max_attempts,
        ),
        WAREHOUSE_RESOURCE_KEY: WarehouseResource(duckdb_path=config.warehouse.duckdb_path),
    }
