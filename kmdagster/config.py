"""The kmdagster YAML configuration: parsed once, validated field by field.

Credentials never live here: boto3 takes them from the standard AWS chain.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_ENV_VAR = "KMDAGSTER_CONFIG"
DEFAULT_CONFIG_FILE = "kmdagster.yaml"
DEFAULT_CRON = "0 * * * *"
DEFAULT_TIME_BUDGET_SECONDS = 300.0
# Bytes per warehouse transaction: enough lines that each large table gets more rows than
# a DuckDB row group (122,880), which DuckDB then writes compressed straight to the file
# instead of logging every row and compressing it again at a checkpoint.
DEFAULT_CHUNK_BYTES = 48 * 1024 * 1024
# A chunk is read and split in pieces of about this size: the split's working memory is
# ~15-20x its input, so memory is bounded by the pieces in hand, not by the chunk.
SPLIT_PIECE_BYTES = 2 * 1024 * 1024
DEFAULT_SENSOR_INTERVAL_SECONDS = 180
# The reject_rate check warns above this share of a file's non-blank lines.
DEFAULT_REJECT_RATE_WARN_PERCENT = 5.0
# The backlog check warns when the oldest file waiting at the bucket root is older than this.
DEFAULT_BACKLOG_WARN_HOURS = 24.0
DEFAULT_DUCKDB_PATH = ".kmdagster/warehouse.duckdb"
MIN_CHUNK_BYTES = 1024

_SOURCE_NAME = re.compile(r"^[a-z0-9_]+$")


class ConfigError(ValueError):
    """The configuration file is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region_name: str | None = None
    max_attempts: int = 8
    retry_mode: str = "standard"  # botocore's "standard" or "adaptive" (client-side rate limit)
    connect_timeout_seconds: int = 10
    read_timeout_seconds: int = 60


@dataclass(frozen=True)
class WarehouseSettings:
    duckdb_path: str = DEFAULT_DUCKDB_PATH


@dataclass(frozen=True)
class SourceConfig:
    name: str
    bucket: str
    base_filename: str
    cron: str = DEFAULT_CRON
    time_budget_seconds: float = DEFAULT_TIME_BUDGET_SECONDS
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    sensor_interval_seconds: int = DEFAULT_SENSOR_INTERVAL_SECONDS
    reject_rate_warn_percent: float = DEFAULT_REJECT_RATE_WARN_PERCENT
    backlog_warn_hours: float = DEFAULT_BACKLOG_WARN_HOURS


@dataclass(frozen=True)
class KmConfig:
    s3: S3Settings = field(default_factory=S3Settings)
    warehouse: WarehouseSettings = field(default_factory=WarehouseSettings)
    sources: tuple[SourceConfig, ...] = ()

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"no source named {name!r} in the configuration (known: {known})")


def config_path_from_env() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE)


def load_config(path: Path | None = None) -> KmConfig:
    """Read and validate the configuration file (``KMDAGSTER_CONFIG`` or ./kmdagster.yaml)."""
    path = path or config_path_from_env()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found; set {CONFIG_ENV_VAR} to its path "
            f"or create {DEFAULT_CONFIG_FILE} in the working directory"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, origin=str(path))


def parse_config(raw: Any, origin: str = "configuration") -> KmConfig:
    """Validate an already-parsed YAML document; every error names the offending field."""
    top = _mapping(raw if raw is not None else {}, origin, "top level")
    _reject_unknown(top, {"s3", "warehouse", "sources"}, origin, "")
    s3 = _parse_s3(_mapping(top.get("s3") or {}, origin, "s3"), origin)
    warehouse = _parse_warehouse(_mapping(top.get("warehouse") or {}, origin, "warehouse"), origin)
    raw_sources = top.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise ConfigError(f"{origin}: sources: give a list with at least one source")
    sources = tuple(_parse_source(item, origin, i) for i, item in enumerate(raw_sources))
    seen: set[str] = set()
    for i, source in enumerate(sources):
        if source.name in seen:
            raise ConfigError(f"{origin}: sources[{i}].name: duplicate source name {source.name!r}")
        seen.add(source.name)
    return KmConfig(s3=s3, warehouse=warehouse, sources=sources)


def _parse_s3(raw: dict[str, Any], origin: str) -> S3Settings:
    known = {
        "endpoint_url",
        "region_name",
        "max_attempts",
        "retry_mode",
        "connect_timeout_seconds",
        "read_timeout_seconds",
    }
    _reject_unknown(raw, known, origin, "s3.")
    retry_mode = raw.get("retry_mode", "standard")
    if retry_mode not in ("standard", "adaptive"):
        raise ConfigError(f"{origin}: s3.retry_mode: give 'standard' or 'adaptive'")
    return S3Settings(
        endpoint_url=_optional_str(raw, "endpoint_url", origin, "s3."),
        region_name=_optional_str(raw, "region_name", origin, "s3."),
        max_attempts=_positive_int(raw, "max_attempts", 8, origin, "s3."),
        retry_mode=retry_mode,
        connect_timeout_seconds=_positive_int(raw, "connect_timeout_seconds", 10, origin, "s3."),
        read_timeout_seconds=_positive_int(raw, "read_timeout_seconds", 60, origin, "s3."),
    )


def _parse_warehouse(raw: dict[str, Any], origin: str) -> WarehouseSettings:
    _reject_unknown(raw, {"duckdb_path"}, origin, "warehouse.")
    path = _optional_str(raw, "duckdb_path", origin, "warehouse.") or DEFAULT_DUCKDB_PATH
    return WarehouseSettings(duckdb_path=path)


def _parse_source(item: Any, origin: str, index: int) -> SourceConfig:
    where = f"sources[{index}]."
    raw = _mapping(item, origin, f"sources[{index}]")
    allowed = {
        "name",
        "bucket",
        "base_filename",
        "cron",
        "time_budget_seconds",
        "chunk_bytes",
        "sensor_interval_seconds",
        "reject_rate_warn_percent",
        "backlog_warn_hours",
    }
    _reject_unknown(raw, allowed, origin, where)
    name = _required_str(raw, "name", origin, where)
    if not _SOURCE_NAME.match(name):
        raise ConfigError(
            f"{origin}: {where}name: {name!r} must be lower-case letters, digits and underscores"
        )
    bucket = _required_str(raw, "bucket", origin, where)
    base_filename = _required_str(raw, "base_filename", origin, where)
    if "/" in base_filename:
        raise ConfigError(
            f"{origin}: {where}base_filename: {base_filename!r} must be a file name at the "
            "bucket root, without '/'"
        )
    stem, dot, extension = base_filename.rpartition(".")
    if not dot or not stem or not extension:
        raise ConfigError(
            f"{origin}: {where}base_filename: {base_filename!r} needs a stem and an extension, "
            "such as accounts.json"
        )
    budget = _positive_number(
        raw, "time_budget_seconds", DEFAULT_TIME_BUDGET_SECONDS, origin, where, "seconds"
    )
    reject_rate = _positive_number(
        raw, "reject_rate_warn_percent", DEFAULT_REJECT_RATE_WARN_PERCENT, origin, where, "percent"
    )
    if reject_rate > 100:
        raise ConfigError(f"{origin}: {where}reject_rate_warn_percent: give at most 100")
    chunk_bytes = _positive_int(raw, "chunk_bytes", DEFAULT_CHUNK_BYTES, origin, where)
    if chunk_bytes < MIN_CHUNK_BYTES:
        raise ConfigError(f"{origin}: {where}chunk_bytes: must be at least {MIN_CHUNK_BYTES}")
    cron = _optional_str(raw, "cron", origin, where) or DEFAULT_CRON
    _check_cron(cron, origin, where)
    return SourceConfig(
        name=name,
        bucket=bucket,
        base_filename=base_filename,
        cron=cron,
        time_budget_seconds=budget,
        chunk_bytes=chunk_bytes,
        sensor_interval_seconds=_positive_int(
            raw, "sensor_interval_seconds", DEFAULT_SENSOR_INTERVAL_SECONDS, origin, where
        ),
        reject_rate_warn_percent=reject_rate,
        backlog_warn_hours=_positive_number(
            raw, "backlog_warn_hours", DEFAULT_BACKLOG_WARN_HOURS, origin, where, "hours"
        ),
    )


def _check_cron(cron: str, origin: str, where: str) -> None:
    # Checked here so the error names the field; Dagster would only fail later, less clearly.
    try:
        from dagster._utils.schedules import is_valid_cron_string
    except ImportError:  # the helper moved: Dagster still validates when the schedule is built
        return
    if not is_valid_cron_string(cron):
        raise ConfigError(f"{origin}: {where}cron: {cron!r} is not a valid cron expression")


def _mapping(value: Any, origin: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: {where}: expected a mapping of keys to values")
    return value


def _reject_unknown(raw: dict[str, Any], allowed: set[str], origin: str, where: str) -> None:
    for key in raw:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"{origin}: {where}{key}: unknown key (known keys: {known})")


def _required_str(raw: dict[str, Any], key: str, origin: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{origin}: {where}{key}: required, give a non-empty string")
    return value.strip()


def _optional_str(raw: dict[str, Any], key: str, origin: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{origin}: {where}{key}: expected a string")
    return value


def _positive_int(raw: dict[str, Any], key: str, default: int, origin: str, where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{origin}: {where}{key}: give a positive whole number")
    return value


def _positive_number(
    raw: dict[str, Any], key: str, default: float, origin: str, where: str, unit: str
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{origin}: {where}{key}: give a positive number of {unit}")
    return float(value)
