"""Alerts: what an operator is told, as pure values (no Dagster, no network).

A source's health is a set of conditions, each raised once when it starts and cleared once
when it ends: a file failed, a file quarantined, the backlog older than its threshold, a
file's reject rate over its threshold, the health evaluation itself failing. The thresholds
are the data checks' own (``backlog_warn_hours``, ``reject_rate_warn_percent``). Each
change is one alert: one POST of JSON whose ``text`` a person reads (Slack-compatible) and
whose fields a program reads (docs/reference.md, "Alerts").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kmdagster.config import SourceConfig
from kmdagster.file_state import COMPLETE, State
from kmdagster.status import FileState

FILE_FAILED = "file_failed"
FILE_QUARANTINED = "file_quarantined"
BACKLOG_STALE = "backlog_stale"
REJECT_RATE = "reject_rate"
HEALTH_ERROR = "health_error"
TEST_ALERT = "test_alert"  # sent by `kmdagster test-alert`, never by a condition
CLEARED = "_cleared"
_SAID = {
    FILE_FAILED: "import of {file} failed",
    FILE_QUARANTINED: "{file} is quarantined: later files go first",
    BACKLOG_STALE: "the backlog is older than its threshold",
    REJECT_RATE: "{file} rejected more lines than its threshold",
    HEALTH_ERROR: "the source's health could not be evaluated",
    TEST_ALERT: "a test alert: alerts reach this webhook",
}
_CLEARED = {
    FILE_FAILED: "{file} imports again",
    FILE_QUARANTINED: "{file} is no longer quarantined",
    BACKLOG_STALE: "the backlog is within its threshold again",
    REJECT_RATE: "{file} is within its reject threshold again",
    HEALTH_ERROR: "the source's health is evaluated again",
}


@dataclass(frozen=True)
class Condition:
    """Something wrong with a source now; ``file_key`` when it is one file's."""

    event: str
    detail: str
    file_key: str | None = None

    @property
    def key(self) -> str:
        return f"{self.event}:{self.file_key or ''}"


def file_conditions(
    source: SourceConfig, files: Iterable[FileState], backlog_passed: bool, backlog_detail: str
) -> list[Condition]:
    """The conditions a health evaluation finds: failed and quarantined files, a stale
    backlog, complete files over the reject threshold."""
    found: list[Condition] = []
    for file in files:
        if file.state is State.QUARANTINED:
            found.append(Condition(FILE_QUARANTINED, file.error or "", file.key))
        elif file.state is State.FAILED:
            found.append(Condition(FILE_FAILED, file.error or "", file.key))
        elif file.state in COMPLETE:
            non_blank = file.lines_loaded + file.lines_rejected
            rate = 100.0 * file.lines_rejected / non_blank if non_blank else 0.0
            if rate > source.reject_rate_warn_percent:
                detail = (
                    f"{rate:.1f}% of its non-blank lines rejected ({file.lines_rejected:,}), "
                    f"over reject_rate_warn_percent {source.reject_rate_warn_percent:g}%"
                )
                found.append(Condition(REJECT_RATE, detail, file.key))
    if not backlog_passed:
        found.append(Condition(BACKLOG_STALE, backlog_detail))
    return found


@dataclass(frozen=True)
class Alert:
    """One change of a condition: raised (``event``) or cleared (``event_cleared``)."""

    event: str
    source: str
    detail: str
    at: datetime
    file_key: str | None = None

    @property
    def text(self) -> str:
        base = self.event.removesuffix(CLEARED)
        said = (_CLEARED if self.event.endswith(CLEARED) else _SAID)[base]
        headline = said.format(file=self.file_key or "")
        mark = "resolved" if self.event.endswith(CLEARED) else "ALERT"
        tail = f": {self.detail}" if self.detail else ""
        return f"[kmdagster {mark}] {self.source}: {headline}{tail}"

    @property
    def id(self) -> str:
        """The same for the same change: a receiver may drop a repeat."""
        raw = f"{self.source}|{self.event}|{self.file_key}|{self.at.isoformat()}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def payload(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "event": self.event,
            "source": self.source,
            "file_key": self.file_key,
            "detail": self.detail,
            "at": self.at.isoformat(),
            "id": self.id,
        }


def changed(
    source: str,
    active: Mapping[str, Condition],
    now_found: Iterable[Condition],
    still_known: set[str],
    at: datetime,
    first: bool = False,
) -> tuple[list[Alert], dict[str, Condition]]:
    """The alerts for what changed since ``active`` (the conditions raised before), and the
    conditions active now. A file's condition that is gone is cleared only while the file
    is still known (``still_known``: the files the evaluation saw); one that left the view
    (an old file no longer listed) is forgotten without an alert. At the ``first``
    evaluation, files already imported over their reject threshold are taken as known,
    not announced one by one."""
    found = {condition.key: condition for condition in now_found}
    alerts = [  # what ended first, then what began
        Alert(c.event + CLEARED, source, "", at, c.file_key)
        for key, c in active.items()
        if key not in found and (c.file_key is None or c.file_key in still_known)
    ]
    alerts += [
        Alert(c.event, source, c.detail, at, c.file_key)
        for key, c in found.items()
        if key not in active and not (first and c.event == REJECT_RATE)
    ]
    return alerts, found


def conditions_to_json(conditions: Mapping[str, Condition]) -> list[list[str | None]]:
    return [[c.event, c.detail, c.file_key] for c in conditions.values()]


def conditions_from_json(saved: Any) -> dict[str, Condition]:
    """The cursor's conditions; anything unreadable is dropped (they are raised anew)."""
    found: dict[str, Condition] = {}
    for entry in saved if isinstance(saved, list) else []:
        if isinstance(entry, list) and len(entry) == 3:
            condition = Condition(str(entry[0]), str(entry[1]), entry[2])
            found[condition.key] = condition
    return found
