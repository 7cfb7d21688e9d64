"""The kmdagster YAML configuration: one typed model per section, validated by pydantic.

Every setting is declared once, here, with its default and its rule; a wrong value fails
with a ``ConfigError`` naming the file and the field. Credentials never live here: boto3
takes them from the standard AWS chain.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class NeededBy:
    """Marks a setting a backend cannot do without: the file fails at load, not at the
    first run, when that backend is chosen and the setting is not given."""

    backend: str
    example: str


# Each field's docstring is its description in the schemas Dagster shows (the resources'
# configuration, the Component's attributes).
_SECTION_RULES = ConfigDict(
    extra="forbid", frozen=True, str_strip_whitespace=True, use_attribute_docstrings=True
)


class _Section(BaseModel):
    model_config = _SECTION_RULES


class _ResourceSection(Config):
    """A section a Dagster resource holds as it is (a ``dagster.Config``: a pydantic model
    Dagster can show and pass to run workers), with the same rules as the others."""

    model_config = _SECTION_RULES


class S3Settings(_ResourceSection):
    """How the S3 client connects; the S3 resource holds these settings as they are."""

    endpoint_url: Text | None = None
    """S3-compatible endpoint, e.g. http://127.0.0.1:8333; AWS when unset."""
    region_name: Text | None = None
    """AWS region; boto3's when unset."""
    max_attempts: PositiveInt = 8
    """Attempts per request, with botocore's backoff."""
    retry_mode: Literal["standard", "adaptive"] = "standard"
    """botocore's retry mode; adaptive also rate-limits the client."""
    connect_timeout_seconds: PositiveInt = 10
    """Connect timeout per attempt."""
    read_timeout_seconds: PositiveInt = 60
    """Read timeout per attempt; a ranged read cut off resumes where it broke."""


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
    """duckdb (an embedded file, one writing process), postgres or ducklake (a lakehouse)."""
    duckdb_path: Text = ".kmdagster/warehouse.duckdb"
    """The DuckDB file."""
    postgres_url: Annotated[
        Text | None, NeededBy("postgres", example="postgresql://kmdagster@db:5432/km")
    ] = None
    """With backend postgres: a libpq URL without password (PGPASSWORD or ~/.pgpass)."""
    ducklake_catalog: Text = ".kmdagster/lake/catalog.ducklake"
    """With backend ducklake: the catalog, a DuckDB file or a PostgreSQL URL without password."""
    ducklake_data_path: Text = ".kmdagster/lake/data/"
    """With backend ducklake: where its Parquet files go, a folder or s3://bucket/prefix/."""
    ducklake_maintenance_cron: Text = "17 3 * * *"
    """With backend ducklake: when the lake_maintenance schedule runs (UTC)."""
    ducklake_snapshot_retention_days: PositiveNumber = 7.0
    """With backend ducklake: how long snapshots are kept (how far back a query can travel)."""
    s3: S3Settings | None = None
    """Never set: a copy of the s3 section, which the lake's data path on S3 is reached with."""

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
    def _needed_settings_given(self) -> WarehouseSettings:
        for name, field in type(self).model_fields.items():
            for need in field.metadata:
                if (
                    isinstance(need, NeededBy)
                    and need.backend == self.backend
                    and getattr(self, name) is None
                ):
                    raise ValueError(f"backend {self.backend} needs {name} (e.g. {need.example})")
        return self


class SourceConfig(_Section):
    """One recurring import: the files ``base_filename`` matches at the root of ``bucket``."""

    name: Text
    """[a-z0-9_]+, unique; prefixes every Dagster name of the source."""
    bucket: Text
    """The bucket whose root holds the files."""
    base_filename: Text
    """accounts.json matches accounts*.json at the bucket root."""
    cron: Text = "0 * * * *"
    """When the schedule ticks (UTC)."""
    time_budget_seconds: PositiveNumber = 300.0
    """Per run: a file past it stops at a committed offset and resumes at the next tick."""
    chunk_bytes: Annotated[int, Field(strict=True, ge=MIN_CHUNK_BYTES)] = DEFAULT_CHUNK_BYTES
    """Bytes per warehouse transaction; the budget is checked between them."""
    sensor_interval_seconds: PositiveInt = 180
    """How often the sensor lists the bucket."""
    reject_rate_warn_percent: Annotated[float, Field(strict=True, gt=0, le=100)] = 5.0
    """The reject_rate check warns above this share of a file's non-blank lines."""
    backlog_warn_hours: PositiveNumber = 24.0
    """The backlog check warns when the oldest file waiting at the root is older."""
    max_files_per_run: Annotated[int, Field(strict=True, ge=1, le=MAX_FILES_PER_RUN)] = 1
    """Files one run imports in key order within its budget; over 1 lets a source catch up."""
    backfill_files_per_run: Annotated[int, Field(strict=True, ge=1, le=MAX_FILES_PER_RUN)] = 500
    """Partitions one run of a Dagster backfill takes, in key order (its backfill policy)."""
    quarantine_after_failed_runs: PositiveInt = 3
    """A file whose runs failed this many times in a row is set aside (quarantined)."""
    run_grace_seconds: PositiveInt = 900
    """Run monitoring fails a run still going this long past its budget."""
    repair_octal_escapes: StrictBool = False
    """Decode KISSmetrics' octal escapes as UTF-8 instead of rejecting the line."""
    retain_partitions_days: PositiveNumber = 30.0
    """The sensor removes the partitions of files archived longer ago than this."""
    compressed_files: StrictBool = True
    """accounts.json also matches accounts*.json.gz and accounts*.json.zst."""
    max_uncompressed_bytes: PositiveInt = 64 * 1024**3
    """A compressed file expanding past this is taken for a decompression bomb."""
    start_after: Text | None = None
    """Keys sorting at or before it are never registered, imported or archived."""

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

    @field_validator("start_after")
    @classmethod
    def _a_key_at_the_root(cls, value: str | None) -> str | None:
        if value is not None and "/" in value:
            raise ValueError(f"{value!r} must be a key at the bucket root, without '/'")
        return value

    def after_start(self, key: str) -> bool:
        """Whether ``key`` sorts after ``start_after`` (every key does when it is unset)."""
        return self.start_after is None or key > self.start_after

    @field_validator("cron")
    @classmethod
    def _a_cron_dagster_runs(cls, value: str) -> str:
        # Checked here so the error names the field; Dagster would only fail later, less clearly.
        if not is_valid_cron(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value


class AlertSettings(_Section):
    """Where alerts go: a webhook whose URL (a secret) is in an environment variable."""

    webhook_url_env: Text = "KMDAGSTER_ALERT_WEBHOOK"
    """The environment variable holding the webhook's URL, read by the daemon when it sends."""
    timeout_seconds: PositiveNumber = 5.0
    """How long one POST may take before it is tried again at the next tick."""
    queue_limit: PositiveInt = 100
    """Alerts kept waiting for the webhook; older ones are dropped, and the next says so."""
    interval_seconds: PositiveInt = 30
    """How often the alert sensor delivers what is waiting."""

    @field_validator("webhook_url_env")
    @classmethod
    def _a_variable_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(  # not repeated: a URL given here by mistake is a secret
                "give the name of the environment variable that holds the webhook's URL, "
                "not the URL itself (a secret never lives in the configuration file)"
            )
        return value


class KmConfig(_Section):
    s3: S3Settings = S3Settings()
    warehouse: WarehouseSettings = WarehouseSettings()
    sources: Annotated[tuple[SourceConfig, ...], Field(min_length=1)]
    alerts: AlertSettings | None = None

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
    written = config.model_dump(mode="json", exclude_defaults=True, exclude={"warehouse": {"s3"}})
    return yaml.safe_dump(written, sort_keys=False)


def config_path_from_env() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE)


def load_config(path: Path | None = None, given_by: str | None = None) -> KmConfig:
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
    sections: dict[str, type[BaseModel]] = {
        "s3": S3Settings,
        "warehouse": WarehouseSettings,
        "sources": SourceConfig,
        "alerts": AlertSettings,
    }
    return sections[str(location[0])]
