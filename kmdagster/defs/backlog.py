"""The per-source ``backlog`` check on ``<source>/s3_file``: every file's state, at a glance.

Its metadata holds the table of every file of the source in import order (state, percent
and resume offset, rows, archive key or error); it warns when the oldest file waiting at
the bucket root was written more than ``backlog_warn_hours`` ago. The file sensor
evaluates it at every tick where the table changed (so it warns even when no run
happens: a stopped schedule, a stuck file), and it can be executed from the UI.
"""

import hashlib
from datetime import datetime, timezone
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)
from dagster_aws.s3 import S3Resource

from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.naming import BACKLOG_CHECK
from kmdagster.defs.resources import TICK_LEDGER_WAIT_SECONDS, WarehouseResource
from kmdagster.defs.run_history import run_outcomes
from kmdagster.defs.specs import SourceSpecs
from kmdagster.markdown import file_states_markdown
from kmdagster.s3.objects import RootFiles, list_root
from kmdagster.status import (
    RunOutcomes,
    SourceStatus,
    backlog,
    backlog_eta,
    import_now_advice,
    oldest_waiting,
    read_source_status,
)

FILES_SHOWN = 100  # of the backlog's head and of the latest finished files, each


def backlog_outcome(
    source: SourceConfig, status: SourceStatus, now: datetime
) -> tuple[bool, dict[str, Any]]:
    """(passed, metadata) of the backlog check for this status of the source."""
    waiting = backlog(status.states)
    oldest = oldest_waiting(status.states)
    hours = (
        (now - oldest.waiting_since).total_seconds() / 3600
        if oldest is not None and oldest.waiting_since is not None
        else 0.0
    )
    metadata: dict[str, Any] = {
        "files": MetadataValue.md(
            file_states_markdown(status.states, FILES_SHOWN, sum(status.left_out.values()))
        ),
        "backlog_files": len(waiting),
        "backlog_bytes": sum(state.bytes_left for state in waiting),
        "oldest_waiting_hours": round(hours, 4),
        "oldest_waiting_key": oldest.key if oldest else "",
        "threshold_hours": source.backlog_warn_hours,
    }
    eta = backlog_eta(source, waiting, status.bytes_per_second, now)
    if eta is not None:  # as the schedule's runs take the files (status says how)
        metadata["backlog_done_by"] = MetadataValue.timestamp(eta)
    advice = import_now_advice(source, len(waiting))
    if advice:
        metadata["import_now"] = advice
    if status.ledger_note:
        metadata["ledger_note"] = status.ledger_note
    if status.before_start:
        metadata["before_start_after_files"] = status.before_start
    return hours <= source.backlog_warn_hours, metadata


def read_backlog_outcome(
    client: Any,
    source: SourceConfig,
    warehouse: WarehouseSettings,
    outcomes: RunOutcomes,
    root: RootFiles | None = None,
) -> tuple[SourceStatus, bool, dict[str, Any]]:
    """The source's status, read as a tick may (waiting briefly for the ledger), and the
    backlog check's (passed, metadata) for it."""
    status = read_source_status(
        client, source, warehouse, TICK_LEDGER_WAIT_SECONDS, root, outcomes, FILES_SHOWN
    )
    return status, *backlog_outcome(source, status, datetime.now(timezone.utc))


def backlog_evaluation(
    file_key: AssetKey, passed: bool, metadata: dict[str, Any]
) -> AssetCheckEvaluation:
    """The check result as an event a sensor reports."""
    return AssetCheckEvaluation(
        asset_key=file_key,
        check_name=BACKLOG_CHECK,
        passed=passed,
        metadata=metadata,
        severity=AssetCheckSeverity.WARN,
    )


_MOVING = ("oldest_waiting_hours", "backlog_done_by")  # move with the clock alone


def outcome_fingerprint(passed: bool, metadata: dict[str, Any]) -> str:
    """Changes when the result, the file table or the backlog's size changes, not as time
    passes (the table shows at most ``FILES_SHOWN`` files of each kind)."""
    settled = {k: str(v) for k, v in metadata.items() if k not in _MOVING}
    return hashlib.sha256(f"{passed}|{sorted(settled.items())}".encode()).hexdigest()[:16]


def build_backlog_check(specs: SourceSpecs) -> AssetChecksDefinition:
    source, spec = specs.source, specs.backlog_check

    @asset_check(asset=spec.asset_key, name=spec.name, description=spec.description)
    def backlog_check(
        context: AssetCheckExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ) -> AssetCheckResult:
        client, settings = km_s3.get_client(), km_warehouse.settings
        root = list_root(client, source)
        outcomes = run_outcomes(context.instance, source, settings, root.files)
        _, passed, metadata = read_backlog_outcome(client, source, settings, outcomes, root)
        return AssetCheckResult(passed=passed, metadata=metadata, severity=AssetCheckSeverity.WARN)

    return backlog_check
