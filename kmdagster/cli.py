"""kmdagster: set up and watch sources from a terminal.

preview, check, status and policy only read (S3 and, read-only, the warehouse); confirm
runs check and preview, then switches the source's sensor and schedule on in the Dagster
instance with Dagster's own CLI, so the daemon sees exactly what the UI toggle would do.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import polars as pl
import yaml
from botocore.exceptions import BotoCoreError, NoCredentialsError
from dagster import DagsterInstance

from kmdagster.alerts import TEST_ALERT, Alert
from kmdagster.config import CONFIG_ENV_VAR, ConfigError, KmConfig, SourceConfig, load_config
from kmdagster.dagster_internals import add_asset_backfill
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.file_import.pending import next_files
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.resources import WarehouseResource, build_s3_resource
from kmdagster.defs.run_history import (
    RunProgress,
    lift_quarantine,
    quarantine_for_key,
    quarantined_files,
    run_outcomes,
)
from kmdagster.defs.runs import import_run_tags
from kmdagster.defs.setup_assets import record_confirmed_setup
from kmdagster.dg_project import find_dg_project
from kmdagster.instance_settings import instance_settings_yaml
from kmdagster.markdown import (
    backlog_done_by,
    check_markdown,
    pace,
    preview_markdown,
    status_markdown,
)
from kmdagster.preview import FilePreview, SetupRuleError, setup_preview
from kmdagster.s3.objects import FilePattern, S3AccessError, list_root
from kmdagster.s3.permissions import PermissionResult, check_permissions, iam_policy
from kmdagster.status import (
    backfill_runs,
    backlog,
    backlog_eta,
    import_now_advice,
    read_source_status,
    set_aside,
)
from kmdagster.warehouse.backends import backend_of, one_writer, open_warehouse, read_warehouse
from kmdagster.warehouse.schema import ROW_TABLES, SCHEMA_VERSION, WarehouseSchemaError
from kmdagster.warehouse.warehouse import WarehouseUnavailable
from kmdagster.webhook import post_alert, webhook_url
from kmdagster.wording import counted, names_and_more, sentence

DEFINITIONS_MODULE = "kmdagster.definitions"


class CommandFailed(RuntimeError):
    """A check or rule failed; the message has already been explained to the user."""


def s3_client(config: KmConfig) -> Any:
    """The same client the Dagster resource builds, from the standard AWS credential chain."""
    return build_s3_resource(config).get_client()


def run_preview(config: KmConfig, source: SourceConfig, key: str | None) -> FilePreview:
    try:
        names = WarehouseResource(settings=config.warehouse).known_names()
    except WarehouseUnavailable as exc:
        click.echo(f"note: names are not compared with the warehouse: {exc}", err=True)
        names = None
    client = s3_client(config)
    quarantined = quarantined_keys(client, config, source)
    return setup_preview(client, source, names, key=key, set_aside=quarantined)


def quarantined_keys(client: Any, config: KmConfig, source: SourceConfig) -> set[str]:
    """The source's quarantined files, as the instance at DAGSTER_HOME knows them (none
    when it is not set: the preview then says nothing of quarantine)."""
    if not os.environ.get("DAGSTER_HOME"):
        return set()
    progress = RunProgress.at_root_now(client, source, config.warehouse)
    with DagsterInstance.get() as instance:
        return set(quarantined_files(instance, source, progress))


def run_check(config: KmConfig, source: SourceConfig) -> list[PermissionResult]:
    pattern = FilePattern.of_source(source)
    return check_permissions(s3_client(config), source.bucket, pattern)


UNLIMITED_WIDTH = 65_535  # characters (polars' most): a table printed where no terminal is
WAIT_HELP = "seconds to wait for a running import to release the warehouse"
JSON_HELP = "print one JSON object"


@click.group(help=__doc__)
@click.option(
    "--config",
    "config_file",
    help="configuration file (default: $KMDAGSTER_CONFIG or ./kmdagster.yaml)",
)
def cli(config_file: str | None) -> None:
    # Read by each command when it runs (so --help needs no configuration), and handed to
    # the dagster commands confirm starts.
    click.get_current_context().obj = config_file


def given_config_path() -> str | None:
    """The path --config gave, if it was given."""
    return click.get_current_context().find_root().obj


def given_config() -> KmConfig:
    """The configuration the command line names (--config), or the usual one."""
    given = given_config_path()
    return load_config(Path(given), "--config") if given else load_config()


def source_command(help_text: str) -> Any:
    """A command about one source: it is given the configuration and that source."""

    def decorate(function: Any) -> Any:
        @click.argument("source_name", metavar="SOURCE")
        @functools.wraps(function)
        def command(source_name: str, **options: Any) -> None:
            config = given_config()
            function(config, config.source(source_name), **options)

        return cli.command(function.__name__.replace("_", "-"), help=help_text)(command)

    return decorate


@source_command("show what the first pending file would import")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.option("--key", help="preview this key instead of the first pending")
def preview(config: KmConfig, source: SourceConfig, as_json: bool, key: str | None) -> None:
    failure = None
    try:
        result = run_preview(config, source, key)
    except SetupRuleError as exc:
        if exc.preview is None:
            raise
        # Every line rejected: the preview's reject reasons are what the user needs.
        result, failure = exc.preview, exc
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else preview_markdown(result))
    if failure is not None:
        raise failure


@source_command("verify each S3 permission the import needs")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def check(config: KmConfig, source: SourceConfig, as_json: bool) -> None:
    results = run_check(config, source)
    if as_json:
        rows = [
            {
                "permission": r.permission.name,
                "action": r.permission.action,
                "passed": r.passed,
                "detail": r.detail,
                "statement": None if r.passed else r.permission.statement(source.bucket),
            }
            for r in results
        ]
        click.echo(json.dumps({"bucket": source.bucket, "permissions": rows}, indent=2))
    else:
        click.echo(check_markdown(source.bucket, results))
    if not all(r.passed for r in results):
        raise CommandFailed(f"missing S3 permissions on bucket {source.bucket!r}")


@source_command("list every known file and the backlog")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.option("--wait", type=float, default=10.0, show_default=True, help=WAIT_HELP)
def status(config: KmConfig, source: SourceConfig, as_json: bool, wait: float) -> None:
    outcomes = None
    client = s3_client(config)
    root = list_root(client, source)
    if os.environ.get("DAGSTER_HOME"):
        with DagsterInstance.get() as instance:
            outcomes = run_outcomes(instance, source, config.warehouse, root.files)
    else:
        click.echo(
            "note: DAGSTER_HOME is not set, so quarantined files and failed runs are not shown",
            err=True,
        )
    found = read_source_status(client, source, config.warehouse, wait, root, outcomes)
    if found.ledger_note:
        click.echo(f"note: {found.ledger_note}", err=True)
    states = found.states
    waiting = backlog(states)
    speed = found.bytes_per_second
    eta = backlog_eta(source, waiting, speed, datetime.now(timezone.utc))
    if as_json:
        report = {
            "source": source.name,
            "bucket": source.bucket,
            "files": [state.to_dict() for state in states],
            "backlog": len(waiting),
            "set_aside": [state.key for state in set_aside(states)],
            "backlog_bytes": sum(state.bytes_left for state in waiting),
            "backlog_done_by": eta.isoformat() if eta else None,
            "bytes_per_second": round(speed) if speed else None,
            "import_now": import_now_advice(source, len(waiting)),
            "ledger_note": found.ledger_note,
            "start_after": source.start_after,
            "before_start_after": found.before_start,
        }
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(
            status_markdown(
                source, states, len(waiting), eta, speed, before_start=found.before_start
            )
        )


@source_command("lift a file's quarantine: it is first in line again at the next tick")
@click.argument("key")
def retry(config: KmConfig, source: SourceConfig, key: str) -> None:
    _require_dagster_home("retry records the lift in the Dagster instance")
    progress = RunProgress.at_root_now(s3_client(config), source, config.warehouse)
    with DagsterInstance.get() as instance:
        found = quarantine_for_key(instance, source, key, progress)
        if found is None:
            raise CommandFailed(
                f"s3://{source.bucket}/{key} is not quarantined: nothing to lift "
                f"(`kmdagster status {source.name}` lists every file's state)"
            )
        lift_quarantine(instance, source, key, by="kmdagster retry")
    click.echo(
        f"lifted: s3://{source.bucket}/{key} (after {found.failed_runs} failed runs; last: "
        f"{found.last_error or 'see run ' + found.last_run_id}) is first in line again and "
        "resumes from its committed offset at the next tick"
    )


@source_command("import every waiting file now, through Dagster's backfill (the daemon runs it)")
def backfill(config: KmConfig, source: SourceConfig) -> None:
    _require_dagster_home("the backfill is recorded in the Dagster instance its daemon reads")
    client = s3_client(config)
    files = list_root(client, source).files
    progress = RunProgress.read_only(config.warehouse, source, files)
    names = SourceNames.of(source)
    with DagsterInstance.get() as instance:
        registered = set(instance.get_dynamic_partitions(names.partitions))
        found = next_files(instance, source, files, registered, progress, limit=len(files))
        if not found.keys:
            raise CommandFailed(
                f"nothing waits at the root of s3://{source.bucket}: no registered "
                f"{FilePattern.of_source(source).describe()} file to import "
                f"(`kmdagster status {source.name}` lists every file)"
            )
        defs = build_definitions(config)
        backfill_id = add_asset_backfill(
            instance,
            defs.resolve_asset_graph(),
            [*(names.table(table) for table in ROW_TABLES), names.archive],
            found.keys,
            # As the job's runs: the run queue's limits, and run monitoring's first limit.
            tags=import_run_tags(source, one_writer(config.warehouse)),
            title=f"{source.name}: {counted(len(found.keys), 'waiting file')}",
        )
    runs = counted(backfill_runs(source, len(found.keys)), "run")
    click.echo(
        f"backfill {backfill_id}: {counted(len(found.keys), 'file')} of {source.name} "
        f"({names_and_more(found.keys, 3)}) in {runs} of up to "
        f"{source.backfill_files_per_run:,}, each in key order; the Dagster daemon launches "
        "them (Runs > Backfills in the UI), one at a time beside the schedule, which waits "
        "while one imports"
    )
    if found.set_aside:
        click.echo(
            f"left out: {counted(len(found.set_aside), 'quarantined file')} "
            f"({names_and_more(found.set_aside, 5)}); `kmdagster retry {source.name} KEY` "
            "lifts one"
        )


def _require_dagster_home(why: str) -> None:
    if not os.environ.get("DAGSTER_HOME"):
        raise CommandFailed(
            f"DAGSTER_HOME is not set: {why}, so set it to the instance your daemon uses"
        )


@source_command("check, preview, then switch the sensor and schedule on")
@click.option(
    "--workspace",
    help="workspace.yaml to load (default: the dg project around the working directory, as "
    f"dg dev loads it, else -m {DEFINITIONS_MODULE})",
)
def confirm(config: KmConfig, source: SourceConfig, workspace: str | None) -> None:
    _require_dagster_home("confirm switches the sensor and schedule on in the instance")
    results = run_check(config, source)
    click.echo(check_markdown(source.bucket, results))
    problems = []
    if not all(r.passed for r in results):
        problems.append(f"fix the S3 permissions on bucket {source.bucket!r}")
    found = None
    try:
        found = run_preview(config, source, None)
        click.echo(preview_markdown(found))
    except SetupRuleError as exc:
        problems.append(str(exc))
    if problems or found is None:
        raise CommandFailed("not confirmed: " + "; ".join(problems))
    with DagsterInstance.get() as instance:  # the UI shows what was confirmed
        record_confirmed_setup(instance, source, results, found)
    given = given_config_path()
    with dagster_target(workspace) as target:
        for kind, name in (
            ("sensor", SourceNames.of(source).sensor),
            ("schedule", SourceNames.of(source).schedule),
        ):
            done = subprocess.run(
                [sys.executable, "-m", "dagster", kind, "start", name, *target],
                capture_output=True,
                text=True,
                env={**os.environ, **({CONFIG_ENV_VAR: given} if given else {})},
            )
            if done.returncode != 0:
                raise CommandFailed(f"could not start {kind} {name}: {done.stderr.strip()[-2000:]}")
            click.echo(f"{kind} {name} is now running")
    click.echo(
        f"confirmed: {source.name} registers new files and imports them "
        f"{pace(source, None)} ({source.cron})"
    )
    click.echo(waiting_files_summary(config, source))


def waiting_files_summary(config: KmConfig, source: SourceConfig) -> str:
    """What waits at the root as the import is switched on: how many files, when the
    ticks have imported them and how to take them at once."""
    found = read_source_status(s3_client(config), source, config.warehouse, 0)
    waiting = backlog(found.states)
    if not waiting:
        return "Nothing waits at the root: each new file is imported at the tick after it comes."
    speed = found.bytes_per_second
    eta = backlog_eta(source, waiting, speed, datetime.now(timezone.utc))
    text = sentence(
        f"waiting: {counted(len(waiting), 'file')}; {backlog_done_by(source, eta, speed)}"
    )
    advice = import_now_advice(source, len(waiting))
    if advice:  # files the ticks would take one by one: say how to take them at once
        text += "\n" + sentence(f"{advice} (once the sensor has registered them)")
    return text


@contextmanager
def dagster_target(workspace: str | None) -> Iterator[list[str]]:
    """The code location to start sensors and schedules in, as ``dagster`` options: the
    workspace given, else the dg project around the working directory as ``dg dev`` loads
    it (same location name, so its daemon sees them running), else kmdagster's module."""
    project = None if workspace else find_dg_project(Path.cwd())
    if workspace:
        yield ["-w", workspace]
    elif project is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "workspace.yaml"
            path.write_text(yaml.safe_dump(project.workspace()))
            yield ["-w", str(path)]
    else:
        yield ["-m", DEFINITIONS_MODULE]


@cli.command(help="print the Dagster instance settings kmdagster relies on (for dagster.yaml)")
def instance_settings() -> None:
    click.echo(instance_settings_yaml(), nl=False)


@cli.command(help="send a test alert to the configured webhook, to see alerts arrive")
def test_alert() -> None:
    config = given_config()
    settings = config.alerts
    if settings is None:
        raise CommandFailed(
            "the configuration has no alerts section: add one with the variable that holds "
            "the webhook's URL (docs/reference.md#alerts)"
        )
    url = webhook_url(settings.webhook_url_env)
    if url is None:
        raise CommandFailed(
            f"${settings.webhook_url_env} is not set here: set it to the webhook's URL, here "
            "and in the daemon's environment, which sends the alerts"
        )
    alert = Alert(
        event=TEST_ALERT,
        source=", ".join(source.name for source in config.sources),
        detail="sent by `kmdagster test-alert`",
        at=datetime.now(timezone.utc).replace(microsecond=0),
    )
    problem = post_alert(url, alert.payload(), settings.timeout_seconds)
    if problem is not None:
        raise CommandFailed(f"not sent to ${settings.webhook_url_env}'s webhook: {problem}")
    click.echo(f"sent: the webhook in ${settings.webhook_url_env} took a test alert ({alert.id})")


@source_command("print the least-privilege IAM policy for the source's bucket")
def policy(config: KmConfig, source: SourceConfig) -> None:
    click.echo(json.dumps(iam_policy(source.bucket), indent=2))


@cli.command(help="upgrade the warehouse to this version's schema, in one transaction")
@click.option("--wait", type=float, default=120.0, show_default=True, help=WAIT_HELP)
def upgrade_warehouse(wait: float) -> None:
    with open_warehouse(given_config().warehouse, lock_wait_seconds=wait) as warehouse:
        found = warehouse.upgraded_from
        path = warehouse.database.location
    if found is None or found == SCHEMA_VERSION:
        click.echo(f"{path}: schema version {SCHEMA_VERSION}, nothing to upgrade")
    else:
        click.echo(f"{path}: upgraded from schema version {found} to {SCHEMA_VERSION}, rows kept")


@cli.command(help="make the DuckDB warehouse file from a folder EXPORT DATABASE wrote")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def import_warehouse(export_dir: Path) -> None:
    """How a DuckDB warehouse written by another DuckDB version (another storage format)
    moves to the one kmdagster runs: EXPORT DATABASE with that version, then this."""
    settings = given_config().warehouse
    import_export = backend_of(settings).import_export
    if import_export is None:
        raise CommandFailed("import-warehouse makes a DuckDB file: set warehouse.backend duckdb")
    path = Path(settings.duckdb_path)
    import_export(path, export_dir)
    with open_warehouse(settings) as warehouse:  # checks the schema, upgrading an older one
        files = len(warehouse.database.rows("SELECT 1 FROM km_import_files"))
    click.echo(f"{path}: imported from {export_dir}, {files} file versions in the ledger")


SQL_WAIT_HELP = (
    "seconds to wait for a running import to release a DuckDB warehouse (an import holds it "
    "for at most its time budget)"
)


@cli.command(help="run a read-only query on the warehouse and print the rows")
@click.argument("query", required=False)
@click.option("--csv", "as_csv", is_flag=True, help="print CSV with a header row")
@click.option("--max-rows", type=int, default=50, show_default=True, help="rows printed")
@click.option("--wait", type=float, default=330.0, show_default=True, help=SQL_WAIT_HELP)
@click.option(
    "--attach",
    is_flag=True,
    help="print the SQL that attaches the lake in the DuckDB CLI or a notebook, and stop",
)
def sql(query: str | None, as_csv: bool, max_rows: int, wait: float, attach: bool) -> None:
    """QUERY, or standard input. A DuckDB file is held only while the query runs, so an
    import that starts meanwhile waits for it instead of failing, as it would behind a
    connection left open."""
    settings = given_config().warehouse
    if attach:
        statements = backend_of(settings).attach_statements
        if statements is None:
            raise CommandFailed("--attach is for warehouse.backend ducklake")
        click.echo(statements(settings))
        return
    text = query if query is not None else sys.stdin.read()
    if not text.strip():
        raise click.UsageError("give a query: kmdagster sql 'SELECT count(*) FROM km_events'")
    with read_warehouse(settings, lock_wait_seconds=wait) as warehouse:
        if warehouse is None:
            where = backend_of(settings).location(settings)
            raise CommandFailed(f"the warehouse {where} has no tables yet: nothing is imported")
        try:
            frame = warehouse.database.frame(text)
        except Exception as exc:  # noqa: BLE001  # the database's own message says what is wrong
            raise CommandFailed(f"the query failed: {str(exc).strip()}") from exc
    if as_csv:
        click.echo(frame.write_csv(), nl=False)
        return
    # As wide as the terminal (COLUMNS when set); piped to a file or a program, unlimited.
    width = min(shutil.get_terminal_size(fallback=(UNLIMITED_WIDTH, 24)).columns, UNLIMITED_WIDTH)
    shape = {"tbl_rows": max_rows, "tbl_cols": -1, "fmt_str_lengths": 80}
    with pl.Config(**shape, tbl_width_chars=width, tbl_hide_dataframe_shape=True):  # type: ignore[arg-type]
        click.echo(frame)
    click.echo(f"{frame.height:,} rows")


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code is 0, 1 (a check or S3 failed) or 2 (usage, config)."""
    try:
        cli.main(args=argv, prog_name="kmdagster", standalone_mode=False)
    except click.ClickException as exc:  # usage errors: exit code 2, as before
        exc.show()
        return exc.exit_code
    except click.Abort:
        return 1
    except ConfigError as exc:
        click.echo(f"kmdagster: {exc}", err=True)
        return 2
    except NoCredentialsError:
        click.echo(
            "kmdagster: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance role",
            err=True,
        )
        return 1
    except (
        CommandFailed,
        SetupRuleError,
        S3AccessError,
        WarehouseSchemaError,
        WarehouseUnavailable,
    ) as exc:
        click.echo(f"kmdagster: {exc}", err=True)
        return 1
    except BotoCoreError as exc:  # e.g. the endpoint cannot be reached
        click.echo(f"kmdagster: S3 request failed: {exc}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
