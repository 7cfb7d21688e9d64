"""Dagster resources: the S3 client (dagster-aws) and the warehouse connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from boto3.session import Session
from botocore.config import Config
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from kmdagster.config import KmConfig, WarehouseSettings
from kmdagster.km_format.summary import KnownNames
from kmdagster.warehouse.warehouse import Warehouse

S3_RESOURCE_KEY = "km_s3"
WAREHOUSE_RESOURCE_KEY = "km_warehouse"
# A sensor or schedule tick waits this long at most for a DuckDB file an import holds.
TICK_LEDGER_WAIT_SECONDS = 2.0


class WarehouseResource(ConfigurableResource):
    """The warehouse (``WarehouseSettings``); a connection is opened per step, never at
    load time. Its fields hold no secret: a PostgreSQL password comes from PGPASSWORD."""

    backend: str = Field(description="duckdb or postgres.")
    duckdb_path: str = Field(description="Path of the DuckDB file holding the km_* tables.")
    postgres_url: str | None = Field(description="PostgreSQL URL, without the password.")

    @classmethod
    def of(cls, settings: WarehouseSettings) -> WarehouseResource:
        return cls(**settings.model_dump())

    @property
    def settings(self) -> WarehouseSettings:
        return WarehouseSettings(
            backend=self.backend,  # type: ignore[arg-type]  # checked by WarehouseSettings
            duckdb_path=self.duckdb_path,
            postgres_url=self.postgres_url,
        )

    @contextmanager
    def connect(self) -> Iterator[Warehouse]:
        with Warehouse.open(self.settings) as warehouse:
            yield warehouse

    def known_names(self) -> KnownNames:
        """Names already loaded, read-only (none when there is no warehouse yet)."""
        with Warehouse.read_only(self.settings) as warehouse:
            return warehouse.known_names() if warehouse else KnownNames(frozenset(), frozenset())


class KmS3Resource(S3Resource):
    """dagster-aws's S3 resource with the retry mode and timeouts the import relies on."""

    # Defaults and rules live in ``S3Settings``; the YAML's values arrive here as they are.
    retry_mode: str = Field(description="botocore retry mode: standard or adaptive.")
    connect_timeout_seconds: int = Field(description="Connect timeout per attempt.")
    read_timeout_seconds: int = Field(description="Read timeout per attempt.")

    def get_client(self) -> Any:
        session = Session(profile_name=self.profile_name)
        return session.client(
            "s3",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=Config(
                retries={"max_attempts": self.max_attempts, "mode": self.retry_mode},  # type: ignore[typeddict-item]
                connect_timeout=self.connect_timeout_seconds,
                read_timeout=self.read_timeout_seconds,
            ),
        )


def build_s3_resource(config: KmConfig) -> KmS3Resource:
    """The S3 client settings every component shares. Credentials: the standard AWS chain."""
    return KmS3Resource(**config.s3.model_dump())


def build_resources(config: KmConfig) -> dict[str, object]:
    """Resources for all sources. Credentials come from the standard AWS chain when used."""
    return {
        S3_RESOURCE_KEY: build_s3_resource(config),
        WAREHOUSE_RESOURCE_KEY: WarehouseResource.of(config.warehouse),
    }
