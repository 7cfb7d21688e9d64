"""Dagster resources: the S3 client (dagster-aws) and the warehouse connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import botocore.loaders
import botocore.session
from boto3.session import Session
from botocore.config import Config
from dagster import AssetExecutionContext, ConfigurableResource, Failure
from dagster_aws.s3 import S3Resource

from kmdagster.config import KmConfig, S3Settings, WarehouseSettings
from kmdagster.defs.runs import WAREHOUSE_FAULT_TAG
from kmdagster.km_format.summary import KnownNames
from kmdagster.warehouse.backends import open_warehouse, read_warehouse
from kmdagster.warehouse.database import WarehouseBusy, WarehouseUnavailable
from kmdagster.warehouse.warehouse import Warehouse

S3_RESOURCE_KEY = "km_s3"
WAREHOUSE_RESOURCE_KEY = "km_warehouse"
# A sensor or schedule tick waits this long at most for a DuckDB file an import holds.
TICK_LEDGER_WAIT_SECONDS = 2.0
# A new botocore session parses S3's service model and endpoint data (JSON, about 0.2 s)
# again; each step and tick makes a client, so the sessions share one loader, which
# keeps what it parsed. It only reads botocore's own data files.
_SHARED_LOADER = botocore.loaders.create_loader()


def _session(profile_name: str | None) -> Session:
    core = botocore.session.get_session()
    core.register_component("data_loader", _SHARED_LOADER)
    return Session(botocore_session=core, profile_name=profile_name)


class WarehouseFault(Failure):
    """The warehouse, not the file, failed the step (its disk full, its database not
    answering): the step's run is tagged so, and the file's quarantine passes it over."""


@contextmanager
def warehouse_faults_tagged(context: AssetExecutionContext) -> Iterator[None]:
    """Tag the run with ``WAREHOUSE_FAULT_TAG`` when a ``WarehouseFault`` fails it."""
    try:
        yield
    except WarehouseFault:
        context.instance.add_run_tags(context.run.run_id, {WAREHOUSE_FAULT_TAG: "true"})
        raise


class WarehouseResource(ConfigurableResource):
    """The warehouse; a connection is opened per step, never at load time. Its settings
    hold no secret: a PostgreSQL password comes from PGPASSWORD."""

    settings: WarehouseSettings

    @contextmanager
    def connect(self) -> Iterator[Warehouse]:
        """The warehouse for one step; one that cannot be reached fails the step saying
        so and what to do (nothing was read or loaded)."""
        with ExitStack() as stack:
            try:
                warehouse = stack.enter_context(open_warehouse(self.settings))
            except WarehouseUnavailable as exc:
                then = (
                    "once it is free"
                    if isinstance(exc, WarehouseBusy)
                    else "; check that the database runs and that this host may reach it"
                )
                raise WarehouseFault(
                    description=f"{exc}. Nothing was read or loaded; the next run tries again "
                    + then
                ) from exc
            yield warehouse

    def known_names(self) -> KnownNames:
        """Names already loaded, read-only (none when there is no warehouse yet)."""
        with read_warehouse(self.settings) as warehouse:
            return warehouse.known_names() if warehouse else KnownNames(frozenset(), frozenset())


class KmS3Resource(S3Resource):
    """dagster-aws's S3 resource, connected as ``settings`` say (endpoint, region, retries
    and timeouts: S3Settings is the one declaration of them). Credentials come from
    S3Resource's own fields when a deployment sets them, else the standard AWS chain."""

    settings: S3Settings

    def get_client(self) -> Any:
        settings = self.settings
        session = _session(self.profile_name)
        return session.client(
            "s3",
            region_name=settings.region_name,
            endpoint_url=settings.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=Config(
                retries={"max_attempts": settings.max_attempts, "mode": settings.retry_mode},
                connect_timeout=settings.connect_timeout_seconds,
                read_timeout=settings.read_timeout_seconds,
            ),
        )


def build_s3_resource(config: KmConfig) -> KmS3Resource:
    """The S3 client settings every component shares. Credentials: the standard AWS chain."""
    return KmS3Resource(settings=config.s3)


def build_resources(config: KmConfig) -> dict[str, object]:
    """Resources for all sources. Credentials come from the standard AWS chain when used."""
    return {
        S3_RESOURCE_KEY: build_s3_resource(config),
        WAREHOUSE_RESOURCE_KEY: WarehouseResource(settings=config.warehouse),
    }
