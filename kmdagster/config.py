"""The kmdagster YAML configuration: one typed model per section, validated by pydantic.

Every setting is declared once, here, with its default and its rule; a wrong value fails
with a ``ConfigError`` naming the file and the field. Credentials never live here: boto3
takes them from the standard AWS chain.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dagster import Config
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from kmdagster.dagster_internals import is_valid_cron
from kmdagster.dg_project import COMPONENT_TYPE, find_dg_project
from kmdagster.urls import has_password, is_postgres_url

CONFIG_ENV_VAR = "KMDAGSTER_CONFIG"
DEFAULT_CONFIG_FILE = "kmdagster.yaml"
# Bytes per warehouse transaction: enough lines that each large table gets more rows than
# a DuckDB row group (122,880), which DuckDB then writes compressed straight to the file
# instead of logging every row and compressing it again at a checkpoint.
DEFAULT_CHUNK_BYTES = 48 * 1024 * 1024
MIN_CHUNK_BYTES = 1024
# A run logs some 16 Dagster events per file: a thousand keeps a run's event log readable.
MAX_FILES_PER_RUN = 1000
_SOURCE_NAME = re.compile(r"^[a-z0-9_]+$")

# Whole numbers and numbers as YAML writes them: no strings, no booleans.
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
PositiveNumber = Annotated[float, Field(strict=True, gt=0)]
Text = Annotated[str, Field(strict=True, min_length=1)]


class ConfigError(ValueError):
    """The configuration file is invalid; the message names the file and the field."""


_SECTION_RULES = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class _Section(BaseModel):
    model_config = _SECTION_RULES


class _ResourceSection(Config):
    """A section a Dagster resource holds as it is (a ``dagster.Config``: a pydantic model
    Dagster can show and pass to run workers), with the same rules as the others."""

    model_config = _SECTION_RULES


class S3Settings(_ResourceSection):
    """How the S3 client connects; the S3 resource holds these settings as they are."""

    endpoint_url: Text | None = None
    region_name: Text | None = None
    max_attempts: PositiveInt = 8
    retry_mode: Literal["standard", "adaptive"] = "standard"  # adaptive: client-side rate limit
    connect_timeout_seconds: PositiveInt = 10
    read_timeout_seconds: PositiveInt = 60


def _no_password(url: str) -> str:
    if not is_postgres_url(url):
        raise ValueError("give a URL starting with postgresql://")
    if has_password(url):
        raise ValueError(
            "holds a password; remove it and set PGPASSWORD (or ~/.pgpass) instead: "
            "passwords never live in the configuration file"
        )
    return url


class WarehouseSettings(_ResourceSection):
    """Where the km_* relations live: an embedded DuckDB file (the default), PostgreSQL,
    or a DuckLake lakehouse (Parquet files in a folder or on S3, and a catalog)."""

    backend: Literal["duckdb", "postgres", "ducklake"] = "duckdb"
    duckdb_path: Text = ".kmdagster/warehouse.duckdb"
    # A libpq URL without the password (libpq reads PGPASSWORD or ~/.pgpass; PGHOST and
    # the other PG* variables fill in what the URL leaves out).
    postgres_url: Text | None = None
    # The lake's catalog: a DuckDB file (one process at a time, as the DuckDB warehouse),
    # or a PostgreSQL URL without password (many writers and readers, many machines).
    ducklake_catalog: Text = ".kmdagster/lake/catalog.ducklake"
    # Where its Parquet files go: a folder, or s3://bucket/prefix/ (read and written with
    # the s3 section's endpoint and region and the standard AWS credential chain).
    ducklake_data_path: Text = ".kmdagster/lake/data/"
    # The lake's maintenance job runs on this cron (UTC) and keeps snapshots this long (the
    # time an analyst can travel back; files only old snapshots read are deleted after).
    ducklake_maintenance_cron: Text = "17 3 * * *"
    ducklake_snapshot_retention_days: PositiveNumber = 7.0
    # Copied from the configuration's s3 section when the file is read; never set here.
    s3: S3Settings | None = None

    @field_validator("postgres_url")
    @classmethod
    def _no_password_in_file(cls, url: str | None) -> str | None:
        return None if url is None else _no_password(url)

    @field_validator("ducklake_catalog")
    @classmethod
    def _catalog_without_password(cls, catalog: str) -> str:
        return _no_password(catalog) if "://" in catalog else catalog

    @field_validator("ducklake_data_path")
    @classmethod
    def _a_folder_or_prefix(cls, path: str) -> str:
        if "://" in path and not path.startswith("s3://"):
            raise ValueError("give a local folder or an s3://bucket/prefix/")
        return path if path.endswith("/") else path + "/"

    @field_validator("ducklake_maintenance_cron")
    @classmethod
    def _a_cron_for_maintenance(cls, value: str) -> str:
        if not is_valid_cron(value):
            raise ValueError(f"{value!r} is not a cron expression Dagster runs")
        return value

    @model_validator(mode="after")
    def _postgres_has_a_url(self) -> WarehouseSettings:
        if self.backend == "postgres" and self.postgres_url is None:
            raise ValueError(
                "backend postgres needs postgres_url (e.g. postgresql://kmdagster@db:5432/km)"
            )
        return self

    @property
    def one_writer(self) -> bool:
        """Whether one process at a time may write (a DuckDB file, or a lake whose catalog
        is one): the import runs of every source then take turns."""
        if self.backend == "ducklake":
            return not is_postgres_url(self.ducklake_catalog)
        return self.backend == "duckdb"

    @property
    def run_tag(self) -> str:
        """The import runs' ``kmdagster/warehouse`` tag: ``duckdb`` for one writer in all
        (deploy/dagster.yaml limits those runs to one at a time), else the backend."""
        return "duckdb" if self.one_writer else self.backend


class SourceConfig(_Section):
    """One recurring import: the files ``base_filename`` matches at the root of ``bucket``."""

    name: Text
    bucket: Text
    base_filename: Text
    cron: Text = "0 * * * *"
    time_budget_seconds: PositiveNumber = 300.0
    chunk_bytes: Annotated[int, Field(strict=True, ge=MIN_CHUNK_BYTES)] = DEFAULT_CHUNK_BYTES
    sensor_interval_seconds: PositiveInt = 180
    # The reject_rate check warns above this share of a file's non-blank lines.
    reject_rate_warn_percent: Annotated[float, Field(strict=True, gt=0, le=100)] = 5.0
    # The backlog check warns when the oldest file waiting at the bucket root is older.
    backlog_warn_hours: PositiveNumber = 24.0
    # Files one run may import, in key order, within its one time budget: 1 is
    # KISSmetrics' rule; more lets a source that fell behind catch up.
    max_files_per_run: Annotated[int, Field(strict=True, ge=1, le=MAX_FILES_PER_RUN)] = 1
    # A file whose runs failed this many times in a row is set aside (quarantined).
    quarantine_after_failed_runs: PositiveInt = 3
    # Run monitoring fails a run still going this long past its budget: the last chunk, the
    # archive copy and start-up fit well inside; a dead run worker blocks no longer.
    run_grace_seconds: PositiveInt = 900
    # Decode KISSmetrics' octal escapes (``\231``) as UTF-8 instead of rejecting the line.
    repair_octal_escapes: StrictBool = False
    # The sensor removes the Dagster partitions of files archived longer ago than this
    # (the ledger, the rows and the archive stay), so partitions stay well under Dagster's
    # recommended 100,000 per asset: 30 days of a file a minute is 43,200.
    retain_partitions_days: PositiveNumber = 30.0
    # ``accounts.json`` also matches ``accounts*.json.gz`` and ``accounts*.json.zst``.
    compressed_files: StrictBool = True
    # A compressed file expanding past this is taken for a decompression bomb and fails.
    max_uncompressed_bytes: PositiveInt = 64 * 1024**3

    @field_validator("name")
    @classmethod
    def _a_dagster_name(cls, value: str) -> str:
        # Asset keys, jobs and tags are named after it.
        if not _SOURCE_NAME.match(value):
            raise ValueError(f"{value!r} must be lower-case letters, digits and underscores")
        return value

    @field_validator("base_filename")
    @classmethod
    def _a_file_at_the_root(cls, value: str) -> str:
        if "/" in value:
            raise ValueError(f"{value!r} must be a file name at the bucket root, without '/'")
        stem, dot, extension = value.rpartition(".")
        if not dot or not stem or not extension:
            raise ValueError(f"{value!r} needs a stem and an extension, such as accounts.json")
        return value

    @field_validator("cron")
    @classmethod
    def _a_cron_dagster_runs(cls, value: str) -> str:
        # Checked here so the error names the field; Dagster would only fail later, less clearly.
        if not is_valid_cron(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value


class KmConfig(_Section):
    s3: S3Settings = S3Settings()
    warehouse: WarehouseSettings = WarehouseSettings()
    sources: Annotated[tuple[SourceConfig, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _lake_reads_s3_as_the_sources_do(self) -> KmConfig:
        # The lake's data path on S3 is reached with the same settings as the buckets.
        if self.warehouse.s3 != self.s3:
            object.__setattr__(self, "warehouse", self.warehouse.model_copy(update={"s3": self.s3}))
        return self

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"no source named {name!r} in the configuration (known: {known})")


def config_yaml(config: KmConfig) -> str:
    """``config`` as the YAML file ``load_config`` reads (defaults left out)."""
    written = config.model_dump(mode="json", exclude_defaults=True, exclude={"warehouse": {"s3"}})
    return yaml.safe_dump(written, sort_keys=False)


def config_path_from_env() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE)


def load_config(path: Path | None = None, given_by: str | None = None) -> KmConfig:
    """Read and validate the configuration file: ``path`` (which ``given_by`` names, such
    as ``--config``), else ``KMDAGSTER_CONFIG``, else ./kmdagster.yaml, else, inside a
    ``dg`` project, the one ``defs.yaml`` that declares the kmdagster component. A
    component's ``defs.yaml`` given as the path is read for its attributes."""
    if path is None and os.environ.get(CONFIG_ENV_VAR):
        given_by = CONFIG_ENV_VAR
    if path is None and given_by is None and not Path(DEFAULT_CONFIG_FILE).exists():
        path = _component_file_of_project()
    path = path or config_path_from_env()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if given_by is not None:
            fix = f"check the path given by {given_by}"
        else:
            fix = (
                f"create {DEFAULT_CONFIG_FILE} in the working directory, or give its path "
                f"with --config or {CONFIG_ENV_VAR} (in a dg project: run from the project, "
                f"or give the defs.yaml of its {COMPONENT_TYPE} component)"
            )
        raise ConfigError(f"{path}: configuration file not found; {fix}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(raw, dict) and raw.get("type") == COMPONENT_TYPE:
        raw = raw.get("attributes")  # a dg component's defs.yaml: its sections
    return parse_config(raw, origin=str(path))


def _component_file_of_project() -> Path | None:
    """The defs.yaml of the kmdagster component of the dg project around the working
    directory, when there is exactly one."""
    project = find_dg_project(Path.cwd())
    if project is None:
        return None
    found = project.component_files()
    if len(found) > 1:
        listed = ", ".join(str(path) for path in found)
        raise ConfigError(
            f"the dg project {project.root} declares {len(found)} {COMPONENT_TYPE} "
            f"components ({listed}): give one with --config or {CONFIG_ENV_VAR}"
        )
    return found[0] if found else None


def parse_config(raw: Any, origin: str = "configuration") -> KmConfig:
    """Validate an already-parsed YAML document; every error names the offending field."""
    try:
        config = KmConfig.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_first_error(exc)}") from None
    seen: set[str] = set()
    for i, source in enumerate(config.sources):
        if source.name in seen:
            raise ConfigError(f"{origin}: sources[{i}].name: duplicate source name {source.name!r}")
        seen.add(source.name)
    return config


def _first_error(exc: ValidationError) -> str:
    """pydantic's first error as ``field.path: what to give``; a misspelt key comes first,
    since it is often why a required key is missing."""
    errors = exc.errors()
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    location = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    field = location.lstrip(".") or "top level"
    kind = error["type"]
    if kind == "extra_forbidden":
        known = ", ".join(_model_at(error["loc"][:-1]).model_fields)
        return f"{field}: unknown key (known keys: {known})"
    if kind == "too_short":
        return f"{field}: give at least one"
    if kind == "missing":
        return f"{field}: required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{field}: expected a mapping of keys to values"
    if kind == "value_error":  # our own validators: their message as written
        return f"{field}: {error.get('ctx', {}).get('error', error['msg'])}"
    given = "" if isinstance(error["input"], (dict, list)) else f" (given {error['input']!r})"
    return f"{field}: {error['msg']}{given}"


def _model_at(location: tuple[int | str, ...]) -> type[BaseModel]:
    """The section whose key is unknown at ``location``, for its list of known keys."""
    if not location:
        return KmConfig
    return {"s3": S3Settings, "warehouse": WarehouseSettings, "sources": SourceConfig}[
        str(location[0])
    ]
