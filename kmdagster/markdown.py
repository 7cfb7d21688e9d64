"""Markdown renderings of the preview, the permission check and the status report.

The same text serves the terminal (pipe tables read well as plain text) and the Dagster
UI (asset metadata rendered as Markdown), so both show the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import polars as pl
from tabulate import tabulate

from kmdagster.config import SourceConfig
from kmdagster.file_state import AT_A_GLANCE, DONE, RESUMABLE, RETIRED, WITH_ERROR, State
from kmdagster.preview import FilePreview
from kmdagster.s3.objects import compression_of
from kmdagster.s3.permissions import PermissionResult
from kmdagster.status import FileState, import_now_advice, is_set_aside, set_aside
from kmdagster.wording import counted, sentence


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(_cell(item) for item in value)
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A pipe table (GitHub Markdown), each value formatted by ``_cell``."""
    if not rows:
        return "_none_"
    cells = [[_cell(value) for value in row] for row in rows]
    return tabulate(cells, headers=list(headers), tablefmt="github", disable_numparse=True)


def preview_markdown(preview: FilePreview) -> str:
    s = preview.summary
    file = preview.file
    parts = [
        f"## Preview of s3://{preview.bucket}/{file.key}",
        f"{file.size:,} bytes{_compressed(file.key)}, ETag {file.etag}. Nothing has been "
        "written anywhere.",
        markdown_table(
            ["lines", "valid", "rejected", "blank", "people"],
            [[s.lines, s.valid_lines, s.rejected_lines, s.blank_lines, s.people]],
        ),
        "### Events",
        markdown_table(
            ["event", "as sent", "count", "people", "first", "last"],
            s.events.select("name", "label", "count", "people", "first_seen", "last_seen").rows(),
        ),
        "### Properties",
        markdown_table(
            ["property", "as sent", "count", "type", "examples"],
            s.properties.select("name", "label", "count", "value_type", "examples").rows(),
        ),
        "### Aliases",
        markdown_table(
            ["aliases", "people", "first", "last"],
            [[s.aliases, s.alias_people, s.alias_first_seen, s.alias_last_seen]],
        ),
        "### Rejected lines",
        markdown_table(["reason", "lines"], s.reject_counts.rows()),
        markdown_table(["line", "reason", "line as sent"], s.reject_examples.rows()),
    ]
    if s.warnings:
        parts += ["### Warnings", "\n".join(f"- {warning}" for warning in s.warnings)]
    return "\n\n".join(parts) + "\n"


def check_markdown(bucket: str, results: list[PermissionResult]) -> str:
    rows = [
        [r.permission.name, r.permission.action, "pass" if r.passed else "FAIL", r.detail]
        for r in results
    ]
    parts = [
        f"## S3 permissions on bucket {bucket}",
        markdown_table(["permission", "action", "result", "detail"], rows),
    ]
    for result in results:
        if not result.passed:
            statement = json.dumps(result.permission.statement(bucket), indent=2)
            parts.append(
                f"Grant `{result.permission.name}` ({result.permission.purpose}) with this "
                f"IAM policy statement:\n\n```json\n{statement}\n```"
            )
    return "\n\n".join(parts) + "\n"


def _compressed(key: str) -> str:
    compression = compression_of(key)
    return f" ({compression}-compressed, read as its uncompressed lines)" if compression else ""


def _progress(state: FileState) -> str:
    if state.state in RETIRED and state.next_offset:
        # Never resumes: its content is gone from S3; its rows are kept for audit only.
        return f"{state.percent_done:g}% when replaced, never resumed"
    if state.state in RESUMABLE and state.next_offset:
        where = "uncompressed byte" if state.compression else "byte"
        return f"{state.percent_done:g}% (resume at {where} {state.next_offset:,})"
    return "100%" if state.state in DONE else ""


def file_states_markdown(states: list[FileState], limit: int | None = None, unread: int = 0) -> str:
    """One row per file version: the backlog in import order (``#``), then the rest.

    With ``limit``, at most that many of the backlog's first files and of the most recently
    updated other files, and a line saying how many are left out (with ``unread``, older
    finished versions not even read).
    """
    shown = states
    if limit is not None:
        queued = [s for s in states if s.queue_position is not None]
        others = [s for s in states if s.queue_position is None]
        recent = sorted(
            others, key=lambda s: s.updated_at.timestamp() if s.updated_at else 0, reverse=True
        )
        shown = queued[:limit] + sorted(recent[:limit], key=lambda s: s.key)
    rows = [
        [
            state.queue_position or ("set aside" if is_set_aside(state) else ""),
            state.key,
            state.state,
            f"{state.size_bytes:,} {state.compression}" if state.compression else state.size_bytes,
            _progress(state),
            state.lines_loaded,
            state.lines_rejected,
            state.archived_key or state.error or "",
        ]
        for state in shown
    ]
    table = markdown_table(
        ["#", "key", "state", "bytes", "progress", "loaded", "rejected", "archive key / error"],
        rows,
    )
    left_out = len(states) - len(shown) + unread
    if left_out:
        table += (
            f"\n\n{left_out:,} more files not shown (the backlog past the first {limit} and "
            "older finished files); `kmdagster status SOURCE` lists every one."
        )
    return table


def pace(source: SourceConfig, bytes_per_second: float | None) -> str:
    """How the schedule takes the backlog, as the ETA counts it."""
    per_tick = source.max_files_per_run
    files = "one file per tick" if per_tick == 1 else f"up to {per_tick:,} files a tick"
    if bytes_per_second is None:
        return f"at {files}"
    return (
        f"at {files} within its {source.time_budget_seconds:g} s budget and "
        f"{bytes_per_second / 1e6:,.1f} MB/s (the source's recent imports)"
    )


def backlog_done_by(
    source: SourceConfig, eta: datetime | None, bytes_per_second: float | None
) -> str:
    """When the schedule has imported a backlog (``status.backlog_eta``), and at what pace."""
    if eta is None:
        return "not within 100,000 ticks at the source's recent speed"
    at = f"{eta:%Y-%m-%d %H:%M} UTC"
    return f"{pace(source, bytes_per_second)}, the backlog is done by the tick at {at}"


def status_markdown(
    config: SourceConfig,
    states: list[FileState],
    backlog: int,
    eta: datetime | None,
    bytes_per_second: float | None = None,
    before_start: int = 0,
) -> str:
    source, bucket = config.name, config.bucket
    aside = set_aside(states)
    if backlog:
        when = backlog_done_by(config, eta, bytes_per_second)
    else:
        when = "nothing else is waiting" if aside else "nothing is waiting"
    parts = [
        f"## Files of source {source} (s3://{bucket}), in import order",
        file_states_markdown(states),
        f"Backlog: {counted(backlog, 'file')}; {when}.",
    ]
    advice = import_now_advice(config, backlog)
    if advice:
        parts.append(sentence(advice))
    if aside:
        parts.append(
            f"Set aside: {counted(len(aside), 'file')} quarantined, not imported until "
            f"`kmdagster retry {source} KEY` lifts it ({', '.join(s.key for s in aside)})."
        )
    if before_start:
        parts.append(
            f"Before start_after: {counted(before_start, 'file')} at the bucket root sorting at "
            f"or before {config.start_after!r}, never imported (start_after)."
        )
    errors = [s for s in states if s.error and s.state in WITH_ERROR]
    if errors:  # whole: the table's cells are cut to stay readable
        parts.append("Errors:\n" + "\n".join(f"- {s.key}: {s.error}" for s in errors))
    return "\n\n".join(parts) + "\n"


def top_events_markdown(events: pl.DataFrame) -> str:
    """The file's most frequent events (``file_rows.top_events``)."""
    return markdown_table(
        ["event", "as sent", "rows", "people (est.)"],
        events.select("event", "label", "rows", "people").rows(),
    )


def top_properties_markdown(properties: pl.DataFrame) -> str:
    """The file's most frequent property names (``file_rows.top_properties``)."""
    return markdown_table(
        ["property", "as sent", "rows", "people (est.)", "numeric"],
        properties.select("name", "label", "rows", "people", "numeric_rows").rows(),
    )


def reject_reasons_markdown(reasons: pl.DataFrame) -> str:
    """Rejected lines per reason with the first few (``file_rows.reject_reasons``)."""
    rows = []
    for reason, lines, first_lines, examples in reasons.iter_rows():
        for i, (line_no, example) in enumerate(zip(first_lines, examples, strict=True)):
            rows.append([reason if i == 0 else "", lines if i == 0 else "", line_no, example])
    return markdown_table(["reason", "lines", "line", "line as sent"], rows)


GLANCE_FILES = 5  # files named per state; the rest are counted


def _at_a_glance(state: FileState) -> str:
    if state.state in WITH_ERROR and state.error:
        return f"{state.key}: {state.error[:200]}"
    progress = _progress(state)
    return (
        f"{state.key} {progress}" if progress and state.state is not State.IMPORTED else state.key
    )


def _glance_names(named: list[str], count: int) -> str:
    """The first ``GLANCE_FILES`` of ``named``, and how many of ``count`` files are not."""
    more = count - GLANCE_FILES
    return "; ".join(named[:GLANCE_FILES]) + (f"; and {more:,} more" if more > 0 else "")


def file_states_at_a_glance(
    states: list[FileState], unread: Mapping[str, int] | None = None, before_start: int = 0
) -> dict[str, int | str]:
    """Counts per state and the files in each, as plain values the UI shows inline;
    ``unread`` counts older finished versions by state (``SourceStatus.left_out``),
    ``before_start`` the files at the root before the source's ``start_after``."""
    waiting = [s for s in states if s.at_bucket_root]
    summary: dict[str, int | str] = {}
    queued = [s for s in waiting if s.queue_position is not None]
    if queued:
        summary["next_file"] = _at_a_glance(min(queued, key=lambda s: s.queue_position or 0))
    for name in AT_A_GLANCE:
        files = [s for s in waiting if s.state == name]
        summary[f"{name}_files"] = len(files)
        if files:
            summary[name.value] = _glance_names([_at_a_glance(s) for s in files], len(files))
    archived = sum(1 for s in states if s.state is State.ARCHIVED)
    summary["archived_files"] = archived + (unread or {}).get(State.ARCHIVED, 0)
    for name in RETIRED:  # versions replaced or deleted before they finished
        files = [s for s in states if s.state == name]
        count = len(files) + (unread or {}).get(name, 0)
        if count:
            summary[f"{name}_files"] = count
            named = [f"{s.key} (ETag {s.etag}) {_progress(s)}" for s in files]
            summary[name.value] = _glance_names(named, count)
    if before_start:
        summary["before_start_after_files"] = before_start
    return summary
