"""Configuration parsing: good files load, every bad field is named in the error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_core import PydanticUndefined

from kmdagster import IMPORT_ENVIRONMENT
from kmdagster.config import (
    AlertSettings,
    ConfigError,
    S3Settings,
    SourceConfig,
    WarehouseSettings,
    load_config,
    parse_config,
)
from kmdagster.dg_project import COMPONENT_TYPE, find_dg_project


def source(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "accounts",
        "bucket": "km-imports",
        "base_filename": "accounts.json",
        **overrides,
    }


def test_defaults_are_applied() -> None:
    config = parse_config({"sources": [source()]})
    [accounts] = config.sources
    assert accounts.cron == "0 * * * *"
    assert accounts.time_budget_seconds == 300.0
    assert accounts.chunk_bytes == 48 * 1024 * 1024
    assert config.warehouse.duckdb_path == ".kmdagster/warehouse.duckdb"
    assert config.s3.endpoint_url is None


def test_fractional_budget_and_endpoint() -> None:
    config = parse_config(
        {
            "s3": {"endpoint_url": "http://127.0.0.1:8333"},
            "sources": [source(time_budget_seconds=0.5)],
        }
    )
    assert config.sources[0].time_budget_seconds == 0.5
    assert config.s3.endpoint_url == "http://127.0.0.1:8333"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"sources": [source(bukcet="x")]}, "sources[0].bukcet: unknown key"),
        ({"sourcez": []}, "sourcez: unknown key"),
        ({"sources": []}, "sources:"),
        ({"sources": [source(name="Accounts")]}, "sources[0].name"),
        ({"sources": [source(name="bad-name")]}, "sources[0].name"),
        ({"sources": [source(), source()]}, "sources[1].name: duplicate"),
        ({"sources": [{"name": "a", "base_filename": "a.json"}]}, "sources[0].bucket: required"),
        ({"sources": [{"name": "a", "bucket": "b"}]}, "sources[0].base_filename: required"),
        ({"sources": [source(base_filename="accounts")]}, "sources[0].base_filename"),
        ({"sources": [source(base_filename="dir/accounts.json")]}, "sources[0].base_filename"),
        ({"sources": [source(time_budget_seconds=0)]}, "sources[0].time_budget_seconds"),
        ({"sources": [source(chunk_bytes="big")]}, "sources[0].chunk_bytes"),
        ({"sources": [source(cron="every hour")]}, "sources[0].cron"),
        ({"sources": [source(start_after="dir/accounts.1.json")]}, "sources[0].start_after"),
        ({"s3": {"endpoint": "x"}, "sources": [source()]}, "s3.endpoint: unknown key"),
        ({"warehouse": {"path": "x"}, "sources": [source()]}, "warehouse.path: unknown key"),
    ],
)
def test_errors_name_the_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(document, origin="kmdagster.yaml")
    assert f"kmdagster.yaml: {field}" in str(error.value)


def test_a_webhook_url_given_as_the_variable_is_refused_without_being_repeated() -> None:
    url = "https://hooks.slack.com/services/T0/B0/s3cr3t"
    document = {"sources": [source()], "alerts": {"webhook_url_env": url}}
    with pytest.raises(ConfigError) as error:
        parse_config(document, origin="kmdagster.yaml")
    said = str(error.value)
    assert said.startswith("kmdagster.yaml: alerts.webhook_url_env: give the name")
    assert "s3cr3t" not in said


def test_start_after_leaves_the_keys_at_or_before_it() -> None:
    bounded = SourceConfig.model_validate(source(start_after="accounts.2026-12-01.json"))
    assert not bounded.after_start("accounts.2026-11-30.json")
    assert not bounded.after_start("accounts.2026-12-01.json")
    assert bounded.after_start("accounts.2026-12-01.json.gz")  # sorts after it
    assert bounded.after_start("accounts.2026-12-02.json")
    assert SourceConfig.model_validate(source()).after_start("accounts.0.json")


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KMDAGSTER_CONFIG"):
        load_config(tmp_path / "absent.yaml")


def test_importing_kmdagster_changes_no_environment_variable() -> None:
    # polars sets its own allocator default when it loads; kmdagster adds nothing to it.
    probe = (
        "import json, os, polars; before = dict(os.environ); import kmdagster, kmdagster.cli; "
        "print(json.dumps(dict(os.environ) == before))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "true"


def test_the_deployments_set_the_import_environment() -> None:
    root = Path(__file__).resolve().parent.parent
    dockerfile = (root / "deploy" / "Dockerfile").read_text()
    helm = (root / "deploy" / "helm-values.yaml").read_text()
    for name, value in IMPORT_ENVIRONMENT.items():
        assert f"ENV {name}={value}" in dockerfile
        assert f"- name: {name}" in helm and f"value: {value}" in helm


def test_readme_configuration_reference_lists_every_setting_with_its_default() -> None:
    readme = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text()
    reference = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `([\w.\[\]]+)` \| ([^|]+) \|", reference, re.M))
    sections = {
        "s3.": S3Settings,
        "warehouse.": WarehouseSettings,
        "sources[].": SourceConfig,
        "alerts.": AlertSettings,
    }
    settings = {
        prefix + name: field.default
        for prefix, model in sections.items()
        for name, field in model.model_fields.items()
    }
    assert set(documented) == set(settings)
    for key, default in settings.items():
        shown = documented[key].strip().strip("`")
        if default is PydanticUndefined:
            assert shown == "required", key
        elif isinstance(default, bool):
            assert shown == str(default).lower(), key
        elif isinstance(default, (int, float)):
            assert float(shown) == default, key
        elif isinstance(default, str):
            assert shown == default, key


@pytest.mark.parametrize(
    ("warehouse", "message"),
    [
        ({"backend": "postgres"}, "warehouse: backend postgres needs postgres_url"),
        (
            {"backend": "sqlite"},
            "warehouse.backend: Input should be 'duckdb', 'postgres' or 'ducklake'",
        ),
        ({"postgres_url": "mysql://db/km"}, "warehouse.postgres_url: give a URL starting with"),
    ],
)
def test_warehouse_settings_are_checked(warehouse: dict[str, Any], message: str) -> None:
    document = {"warehouse": warehouse, "sources": [source()]}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(document, origin="kmdagster.yaml")


def test_a_password_in_the_postgres_url_is_refused_without_being_repeated() -> None:
    url = "postgresql://kmdagster:s3cret-pw@db.example.com:5432/km"
    document = {"warehouse": {"backend": "postgres", "postgres_url": url}, "sources": [source()]}
    with pytest.raises(ConfigError) as error:
        parse_config(document, origin="kmdagster.yaml")
    assert "set PGPASSWORD" in str(error.value)
    assert "s3cret-pw" not in str(error.value)


def test_inside_a_dg_project_the_components_defs_yaml_is_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "km-project"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "km_project"\n'
    )
    defs = tmp_path / "src" / "km_project" / "defs"
    attributes = {"sources": [{"name": "accounts", "bucket": "b1", "base_filename": "a.json"}]}
    for name in ("km_imports", "other"):
        (defs / name).mkdir(parents=True)
    (defs / "km_imports" / "defs.yaml").write_text(
        yaml.safe_dump({"type": COMPONENT_TYPE, "attributes": attributes})
    )
    (defs / "other" / "defs.yaml").write_text("type: somebody.else.Component\n")
    monkeypatch.delenv("KMDAGSTER_CONFIG", raising=False)
    monkeypatch.chdir(defs / "other")  # anywhere in the project

    project = find_dg_project(Path.cwd())
    assert project is not None
    assert (project.location_name, project.module) == ("km-project", "km_project.definitions")
    assert project.working_directory == tmp_path / "src"
    assert load_config().source("accounts").bucket == "b1"

    (defs / "second").mkdir()
    (defs / "second" / "defs.yaml").write_text(
        yaml.safe_dump({"type": COMPONENT_TYPE, "attributes": attributes})
    )
    with pytest.raises(ConfigError, match="declares 2 kmdagster.component.KmImports"):
        load_config()
    given = load_config(defs / "second" / "defs.yaml", "--config")
    assert given.source("accounts").base_filename == "a.json"
