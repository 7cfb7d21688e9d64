"""``kmdagster``: set up and watch sources from a terminal.

preview, check, status and policy only read (S3 and, read-only, the warehouse); confirm
runs check and preview, then switches the source's sensor and schedule on in the Dagster
instance with Dagster's own CLI, so the daemon sees exactly what the UI toggle would do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, NoCredentialsError
from dagster import DagsterInstance

from kmdagster.config import ConfigError, KmConfig, SourceConfig, load_config
from kmdagster.defs.resources import WarehouseResource, build_s3_resource
from kmdagster.defs.setup_assets import record_confirmed_setup
from kmdagster.preview import FilePreview, SetupRuleError, setup_preview
from kmdagster.report import check_markdown, preview_markdown, status_markdown
from kmdagster.status import backlog, backlog_eta, read_source_status
from kmdagster.storage.permissions import PermissionResult, check_permissions, iam_policy
from kmdagster.storage.s3_objects import FilePattern, S3AccessError
from kmdagster.storage.schema import SCHEMA_VERSION, WarehouseSchemaError
from kmdagster.storage.warehouse import DuckDBWarehouse, WarehouseBusy

DEFINITIONS_MODULE = "kmdagster.definitions"


class CommandFailed(RuntimeError):
    """A check or rule failed; the message has already been explained to the user."""


def s3_client(config: KmConfig) -> Any:
    """The same client the Dagster resource builds, from the standard AWS credential chain."""
    return build_s3_resource(config).get_client()


def run_preview(config: KmConfig, source: SourceConfig, key: str | None) -> FilePreview:
    try:
        names = WarehouseResource(duckdb_path=config.warehouse.duckdb_path).known_names()
    except WarehouseBusy as exc:
        print(f"note: names are not compared with the warehouse: {exc}", file=sys.stderr)
        names = None
    return setup_preview(s3_client(config), source, names, key=key)


def run_check(config: KmConfig, source: SourceConfig) -> list[PermissionResult]:
    pattern = FilePattern.from_base_filename(source.base_filename)
    return check_permissions(s3_client(config), source.bucket, pattern)


def cmd_preview(config: KmConfig, source: SourceConfig, args: argparse.Namespace) -> None:
    preview = run_preview(config, source, args.key)
    if args.json:
        print(json.dumps(preview.to_dict(), indent=2))
    else:
        print(preview_markdown(preview))


def cmd_check(config: KmConfig, source: SourceConfig, args: argparse.Namespace) -> None:
    results = run_check(config, source)
    if args.json:
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
        print(json.dumps({"bucket": source.bucket, "permissions": rows}, indent=2))
    else:
        print(check_markdown(source.bucket, results))
    if not all(r.passed for r in results):
        raise CommandFailed(f"missing S3 permissions on bucket {source.bucket!r}")


def cmd_status(config: KmConfig, source: SourceConfig, args: argparse.Namespace) -> None:
    status = read_source_status(s3_client(config), source, config.warehouse.duckdb_path, args.wait)
    if status.ledger_note:
        print(f"note: {status.ledger_note}", file=sys.stderr)
    states, ledger_note = status.states, status.ledger_note
    waiting = backlog(states)
    eta = backlog_eta(source.cron, len(waiting), datetime.now(timezone.utc))
    if args.json:
        report = {
            "source": source.name,
            "bucket": source.bucket,
            "files": [state.to_dict() for state in states],
            "backlog": len(waiting),
            "backlog_bytes": sum(state.size_bytes - state.next_offset for state in waiting),
            "backlog_done_by": eta.isoformat() if eta else None,
            "ledger_note": ledger_note,
        }
        print(json.dumps(report, indent=2))
    else:
        print(status_markdown(source.name, source.bucket, states, len(waiting), eta))


def cmd_policy(config: KmConfig, source: SourceConfig, args: argparse.Namespace) -> None:
    print(json.dumps(iam_policy(source.bucket), indent=2))


def cmd_confirm(config: KmConfig, source: SourceConfig, args: argparse.Namespace) -> None:
    if not os.environ.get("DAGSTER_HOME"):
        raise CommandFailed(
            "DAGSTER_HOME is not set: confirm switches the sensor and schedule on in the "
            "Dagster instance, so set it to the instance your daemon uses"
        )
    results = run_check(config, source)
    print(check_markdown(source.bucket, results))
    problems = []
    if not all(r.passed for r in results):
        problems.append(f"fix the S3 permissions on bucket {source.bucket!r}")
    preview = None
    try:
        preview = run_preview(config, source, None)
        print(preview_markdown(preview))
    except SetupRuleError as exc:
        problems.append(str(exc))
    if problems or preview is None:
        raise CommandFailed("not confirmed: " + "; ".join(problems))
    with DagsterInstance.get() as instance:  # the UI shows what was confirmed
        record_confirmed_setup(instance, source, results, preview)
    target = ["-w", args.workspace] if args.workspace else ["-m", DEFINITIONS_MODULE]
    for kind, name in (
        ("sensor", f"{source.name}_file_sensor"),
        ("schedule", f"{source.name}_hourly_import"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "dagster", kind, "start", name, *target],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise CommandFailed(f"could not start {kind} {name}: {done.stderr.strip()[-2000:]}")
        print(f"{kind} {name} is now running")
    print(f"confirmed: {source.name} registers new files and imports one per tick ({source.cron})")


def cmd_upgrade_warehouse(config: KmConfig, args: argparse.Namespace) -> None:
    path = config.warehouse.duckdb_path
    with DuckDBWarehouse.connect(path, lock_wait_seconds=args.wait) as warehouse:
        found = warehouse.upgraded_from
    if found is None or found == SCHEMA_VERSION:
        print(f"{path}: schema version {SCHEMA_VERSION}, nothing to upgrade")
    else:
        print(f"{path}: upgraded from schema version {found} to {SCHEMA_VERSION}, rows kept")


# Commands about the warehouse as a whole, not one source.
WAREHOUSE_COMMANDS = {
    "upgrade-warehouse": (
        cmd_upgrade_warehouse,
        "upgrade the warehouse file to this version's schema, in one transaction",
    ),
}

COMMANDS = {
    "preview": (cmd_preview, "show what the first pending file would import"),
    "check": (cmd_check, "verify each S3 permission the import needs"),
    "status": (cmd_status, "list every known file and the backlog"),
    "confirm": (cmd_confirm, "check, preview, then switch the sensor and schedule on"),
    "policy": (cmd_policy, "print the least-privilege IAM policy for the source's bucket"),
}


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="kmdagster", description=__doc__)
    main_parser.add_argument(
        "--config", help="configuration file (default: $KMDAGSTER_CONFIG or ./kmdagster.yaml)"
    )
    commands = main_parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in WAREHOUSE_COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument(
            "--wait",
            type=float,
            default=120.0,
            help="seconds to wait for a running import to release the warehouse",
        )
    for name, (_, help_text) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("source", help="the source's name in the configuration")
        if name in ("preview", "check", "status"):
            command.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "preview":
            command.add_argument("--key", help="preview this key instead of the first pending")
        if name == "status":
            command.add_argument(
                "--wait",
                type=float,
                default=10.0,
                help="seconds to wait for a running import to release the warehouse",
            )
        if name == "confirm":
            command.add_argument(
                "--workspace", help=f"workspace.yaml to load (default: -m {DEFINITIONS_MODULE})"
            )
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.config:
            os.environ["KMDAGSTER_CONFIG"] = args.config  # confirm's dagster calls read it too
        config = load_config()
        if args.command in WAREHOUSE_COMMANDS:
            WAREHOUSE_COMMANDS[args.command][0](config, args)
        else:
            COMMANDS[args.command][0](config, config.source(args.source), args)
    except ConfigError as exc:
        print(f"kmdagster: {exc}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(
            "kmdagster: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance role",
            file=sys.stderr,
        )
        return 1
    except (
        CommandFailed,
        SetupRuleError,
        S3AccessError,
        WarehouseBusy,
        WarehouseSchemaError,
    ) as exc:
        print(f"kmdagster: {exc}", file=sys.stderr)
        return 1
    except BotoCoreError as exc:  # e.g. the endpoint cannot be reached
        print(f"kmdagster: S3 request failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
