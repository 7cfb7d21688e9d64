"""Markdown renderings of the preview, the permission check and the status report.

The same text serves the terminal (pipe tables read well as plain text) and the Dagster
UI (asset metadata rendered as Markdown), so both show the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kmdagster.preview import FilePreview
from kmdagster.status import FileState
from kmdagster.storage.permissions import PermissionResult


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
    if not rows:
        return "_none_"
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join(lines)


def preview_markdown(preview: FilePreview) -> str:
    s = preview.summary
    file = preview.file
    parts = [
        f"## Preview of s3://{preview.bucket}/{file.key}",
        f"{file.size:,} bytes, ETag {file.etag}. Nothing has been written anywhere.",
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


def status_markdown(
    source: str, bucket: str, states: list[FileState], backlog: int, eta: datetime | None
) -> str:
    rows = [
        [
            state.key,
            state.state,
            state.size_bytes,
            f"{state.next_offset:,} ({state.percent_done:g}%)"
            if state.state == "in_progress"
            else "",
            state.lines_loaded,
            state.lines_rejected,
            state.archived_key or state.error or "",
        ]
        for state in states
    ]
    when = (
        f"at one file per tick, the backlog is done by the tick at {eta:%Y-%m-%d %H:%M} UTC"
        if eta is not None
        else "nothing is waiting"
    )
    return (
        f"## Files of source {source} (s3://{bucket})\n\n"
        + markdown_table(
            ["key", "state", "bytes", "resume offset", "loaded", "rejected", "archive key / error"],
            rows,
        )
        + f"\n\nBacklog: {backlog} files; {when}.\n"
    )
