"""kmdagster as a Component in a fresh ``dg`` project: ``dg check defs`` passes, the
definitions it loads import a file, and a configuration error reads as in kmdagster.yaml."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, load_from_defs_folder

from kmdagster.config import CONFIG_ENV_VAR, ConfigError, SourceConfig, load_config
from kmdagster.defs.runs import MAX_RUNTIME_TAG, OUTCOME_TAG
from kmdagster.s3.objects import ARCHIVE_PREFIX
from kmdagster_dev.km_files import km_file
from kmdagster_dev.processes import stop_process_group
from kmdagster_dev.seaweed import SeaweedS3, free_ports
from kmdagster_tests.helpers import ACCOUNTS, assert_file_loaded_once, make_config, write_config

KEY = "accounts.20261201.json"
COMPONENT = "kmdagster.component.KmImports"
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def dg_project(root: Path) -> Path:
    """A fresh ``dg`` project as ``create-dagster project`` lays it out (that command
    would install its own environment; this one is kmdagster's), kmdagster a dependency."""
    package = root / "src" / "km_project"
    (package / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "km-project"\nversion = "0.1.0"\ndependencies = ["kmdagster"]\n\n'
        '[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "km_project"\n'
    )
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n@dg.definitions\ndef defs():\n"
        "    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    return root


def declare_sources(project: Path, attributes: dict[str, Any]) -> Path:
    """``dg scaffold defs`` of the kmdagster component, then its settings in YAML."""
    scaffolded = dg(project, "scaffold", "defs", COMPONENT, "km_imports")
    assert scaffolded.returncode == 0, scaffolded.stdout + scaffolded.stderr
    path = project / "src" / "km_project" / "defs" / "km_imports" / "defs.yaml"
    declared = yaml.safe_load(path.read_text())
    assert declared == {"type": COMPONENT, "attributes": {}}
    path.write_text(yaml.safe_dump({**declared, "attributes": attributes}, sort_keys=False))
    return path


def dg(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dg`` as a user runs it in the project, in this environment (kmdagster installed)."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(BIN.parent),
        "PYTHONPATH": str(project / "src"),
    }
    return subprocess.run(
        [str(BIN / "dg"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_dg_project_declares_a_source_in_yaml_and_imports_from_it(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    instance: DagsterInstance,
) -> None:
    config = make_config(s3_server, bucket, tmp_path / "warehouse.duckdb")
    attributes = yaml.safe_load(write_config(tmp_path / "kmdagster.yaml", config).read_text())
    project = dg_project(tmp_path / "km-project")
    listed = dg(project, "list", "components")
    assert COMPONENT in listed.stdout, listed.stdout + listed.stderr
    declare_sources(project, attributes)

    checked = dg(project, "check", "defs")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout

    file = km_file(seed=31, repeats=20)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    sys.path.insert(0, str(project / "src"))
    try:
        defs = load_from_defs_folder(
            path_within_project=project / "src" / "km_project" / "definitions.py"
        )
    finally:
        sys.path.remove(str(project / "src"))
    # The same names as the code location's.
    assert defs.resolve_sensor_def(ACCOUNTS.sensor).name == ACCOUNTS.sensor
    assert defs.resolve_schedule_def(ACCOUNTS.schedule).name == ACCOUNTS.schedule
    instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])
    result = defs.resolve_job_def(ACCOUNTS.job).execute_in_process(
        instance=instance, partition_key=KEY
    )
    assert result.success
    assert_file_loaded_once(config.warehouse, KEY, file)


def test_dg_checks_the_attributes_by_their_schema_and_kmdagster_by_its_rules(
    tmp_path: Path,
) -> None:
    """A misspelt key fails ``dg check defs`` at its line, by the schema ``dg`` shows; a
    rule no schema can state (two sources of one name) fails it in kmdagster.yaml's words."""
    project = dg_project(tmp_path / "km-project")
    shown = dg(project, "utils", "inspect-component", COMPONENT, "--defs-yaml-schema")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    for key, field in SourceConfig.model_fields.items():  # each with its description
        assert f"      {key}: <" in shown.stdout, key
        assert f"{field.description}\n" in shown.stdout, key
    assert "base_filename: <string>  # Required" in shown.stdout

    source = {"name": "accounts", "bucket": "b", "base_filename": "a.json"}
    declared = declare_sources(project, {"sources": [{**source, "bukcet": "b"}]})
    checked = dg(project, "check", "defs")
    assert checked.returncode != 0
    line = declared.read_text().splitlines().index("    bukcet: b") + 1
    assert f"{declared}:{line}" in checked.stdout + checked.stderr
    assert "'bukcet' was unexpected" in checked.stdout + checked.stderr

    twice = {"sources": [source, source]}
    declared.write_text(yaml.safe_dump({"type": COMPONENT, "attributes": twice}))
    standalone = tmp_path / "kmdagster.yaml"
    standalone.write_text(yaml.safe_dump(twice))
    with pytest.raises(ConfigError) as raised:
        load_config(standalone)
    said = str(raised.value).split(": ", 1)[1]  # after the file's name
    assert said.startswith("sources[1].name: duplicate source name")
    checked = dg(project, "check", "defs")
    assert checked.returncode != 0
    assert f"{declared}: {said}" in checked.stdout + checked.stderr


COMPONENT_VENV = ROOT / ".venv-component"


@pytest.mark.e2e
def test_the_component_from_a_clean_venv_is_confirmed_and_imports_under_dg_dev(
    s3_server: SeaweedS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """As a team adds kmdagster to its dg project: installed as a user installs it (not
    editable, no dev extras: ``make`` builds that environment), the instance given
    ``kmdagster instance-settings``, the source confirmed with ``kmdagster confirm`` from
    the project (no kmdagster.yaml: the component's defs.yaml is the configuration), then
    ``dg dev``'s daemon registers the file, launches the schedule's run and archives it."""
    if not (COMPONENT_VENV / "bin" / "dg").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{COMPONENT_VENV} is missing: `make test` builds it")
        pytest.skip(f"{COMPONENT_VENV} is missing: `make test` builds it")
    venv_bin = COMPONENT_VENV / "bin"
    config = make_config(
        s3_server,
        bucket,
        tmp_path / "warehouse.duckdb",
        cron="* * * * *",
        sensor_interval_seconds=5,
    )
    attributes = yaml.safe_load(write_config(tmp_path / "unused.yaml", config).read_text())
    project = dg_project(tmp_path / "km-project")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(COMPONENT_VENV),
        "PYTHONPATH": str(project / "src"),
        "DAGSTER_HOME": str(home),
    }
    env.pop(CONFIG_ENV_VAR, None)

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            command, cwd=project, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done

    settings = run(str(venv_bin / "kmdagster"), "instance-settings").stdout
    (home / "dagster.yaml").write_text(settings + "telemetry:\n  enabled: false\n")
    run(str(venv_bin / "dg"), "scaffold", "defs", COMPONENT, "km_imports")
    declared = project / "src" / "km_project" / "defs" / "km_imports" / "defs.yaml"
    declared.write_text(yaml.safe_dump({"type": COMPONENT, "attributes": attributes}))
    file = km_file(seed=41, repeats=20)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)

    confirmed = run(str(venv_bin / "kmdagster"), "confirm", "accounts").stdout
    assert f"sensor {ACCOUNTS.sensor} is now running" in confirmed
    assert f"schedule {ACCOUNTS.schedule} is now running" in confirmed

    [port] = free_ports(1)
    with (tmp_path / "dg-dev.log").open("w") as log:
        dev = subprocess.Popen(
            [str(venv_bin / "dg"), "dev", "--host", "127.0.0.1", "--port", str(port)],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    scheduled = RunsFilter(tags={"dagster/schedule_name": ACCOUNTS.schedule})
    succeeded = RunsFilter(tags=scheduled.tags, statuses=[DagsterRunStatus.SUCCESS])
    try:
        deadline = time.monotonic() + 300
        with DagsterInstance.from_config(str(home)) as instance:
            # Until a run the schedule launched has finished its file, archive included.
            while not instance.get_runs(succeeded):
                assert dev.poll() is None, (tmp_path / "dg-dev.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "dg-dev.log").read_text()[-3000:]
                time.sleep(1)
    finally:
        stop_process_group(dev, signal.SIGINT, grace_seconds=60)

    assert_file_loaded_once(config.warehouse, KEY, file)
    archived = s3.list_objects_v2(Bucket=bucket, Prefix=ARCHIVE_PREFIX).get("Contents", [])
    assert any(item["Key"].endswith(f"/{KEY}") for item in archived)
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_monitoring_enabled
        [scheduled_run] = instance.get_runs(scheduled)
        assert scheduled_run.status == DagsterRunStatus.SUCCESS
        assert MAX_RUNTIME_TAG in scheduled_run.tags
        assert scheduled_run.tags[OUTCOME_TAG].startswith("100% imported: ")
