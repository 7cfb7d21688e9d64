"""The setup preview: what a whole file would import, summarised chunk by chunk.

Pure polars over the same ``SplitLines`` the import produces, so the preview can never
disagree with the import. ``PreviewAccumulator.add`` folds one chunk into running
aggregates whose size depends on the distinct names and people, not on the file size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from kmdagster.km_format.reasons import REASON_ORDER
from kmdagster.km_format.split import MAX_NAME_CHARS, MAX_VALUE_BYTES, SplitLines

EXAMPLE_VALUES = 3
EXAMPLE_REJECTS_PER_REASON = 5
EXAMPLE_LINE_CHARS = 200

# Reject reasons a user should hear about before confirming, with the advice to give.
WARN_ON_REASONS = {
    "timestamp_in_milliseconds": "_t looks like milliseconds: send seconds since the epoch",
    "timestamp_before_2009": "_t is before 2009-01-01, which KISSmetrics cannot store",
    "event_name_too_long": f"event names over {MAX_NAME_CHARS} characters",
    "property_name_too_long": f"property names over {MAX_NAME_CHARS} characters",
    "property_value_too_long": f"property values over {MAX_VALUE_BYTES} bytes",
    "identity_too_long": "_p identities over 255 characters",
    "alias_too_long": "_p2 aliases over 255 characters",
}

_TS = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class PreviewSummary:
    """Everything the preview shows about one file (or the part of it read so far)."""

    lines: int
    valid_lines: int
    rejected_lines: int
    blank_lines: int
    people: int
    events: pl.DataFrame  # name, label, count, people, first_seen, last_seen
    properties: pl.DataFrame  # name, label, count, value_type, examples
    aliases: int
    alias_people: int
    alias_first_seen: datetime | None
    alias_last_seen: datetime | None
    reject_counts: pl.DataFrame  # reason, count (in the reasons' priority order)
    reject_examples: pl.DataFrame  # line_no, reason, raw_line
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (times as ISO 8601 strings)."""
        return {
            "lines": self.lines,
            "valid_lines": self.valid_lines,
            "rejected_lines": self.rejected_lines,
            "blank_lines": self.blank_lines,
            "people": self.people,
            "events": _records(self.events),
            "properties": _records(self.properties),
            "aliases": {
                "count": self.aliases,
                "people": self.alias_people,
                "first_seen": _iso(self.alias_first_seen),
                "last_seen": _iso(self.alias_last_seen),
            },
            "reject_counts": _records(self.reject_counts),
            "rejects": _records(self.reject_examples),
            "warnings": list(self.warnings),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: _iso(v) if isinstance(v, datetime) else v for k, v in row.items()}
        for row in frame.iter_rows(named=True)
    ]


def _all_labels() -> pl.Expr:
    """Every spelling a name was sent under, across chunks (few: names differ by case)."""
    return pl.col("labels").list.explode().unique().sort().implode()


def _as_sent() -> pl.Expr:
    """The spellings of a name, as one text (``Signed Up, signed up``)."""
    return pl.col("labels").list.sort().list.join(", ").alias("label")


class PreviewAccumulator:
    """Folds chunks of ``SplitLines`` (made with ``with_sent_names=True``) into a summary."""

    def __init__(self) -> None:
        self.lines = self.blank = self.rejected = 0
        self.octal_repaired = self.octal_recoverable = 0
        self._events = pl.DataFrame(
            schema={"name": pl.String, "labels": pl.List(pl.String), "count": pl.Int64}
            | {"first_seen": _TS, "last_seen": _TS}
        )
        self._event_people = pl.DataFrame(schema={"name": pl.String, "person": pl.String})
        self._properties = pl.DataFrame(
            schema={"name": pl.String, "labels": pl.List(pl.String), "count": pl.Int64}
            | {"numbers": pl.Int64, "examples": pl.List(pl.String)}
        )
        self._people = pl.DataFrame(schema={"person": pl.String})
        self.alias_count = 0
        self.alias_first_seen: datetime | None = None
        self.alias_last_seen: datetime | None = None
        self._alias_people = pl.DataFrame(schema={"person": pl.String})
        self._rejects = pl.DataFrame(schema={"reason": pl.String, "count": pl.Int64})
        self._reject_examples = pl.DataFrame(
            schema={"line_no": pl.Int64, "reason": pl.String, "raw_line": pl.String}
        )
        self._sent_names = pl.DataFrame(
            schema={"kind": pl.String, "sent": pl.String, "name": pl.String}
        )

    @property
    def valid_lines(self) -> int:
        return self.lines - self.blank - self.rejected

    def add(self, split: SplitLines) -> None:
        if split.sent_names is None:
            raise ValueError("the preview needs split_km_lines(..., with_sent_names=True)")
        self.lines += split.lines_read
        self.blank += split.blank_lines
        self.rejected += split.rejected_lines
        self.octal_repaired += split.octal_repaired
        self.octal_recoverable += split.octal_recoverable
        self._add_events(split.events)
        self._add_properties(split.properties)
        self._add_aliases(split.aliases)
        self._add_rejects(split.rejects)
        self._sent_names = pl.concat([self._sent_names, split.sent_names]).unique()
        people = pl.concat(
            [frame.select("person") for frame in (split.events, split.properties, split.aliases)]
        )
        self._people = pl.concat([self._people, people]).unique()

    def _add_events(self, events: pl.DataFrame) -> None:
        chunk = events.group_by("event").agg(
            labels=pl.col("event_label").unique(),
            count=pl.len().cast(pl.Int64),
            first_seen=pl.col("ts").min(),
            last_seen=pl.col("ts").max(),
        )
        self._events = (
            pl.concat([self._events, chunk.rename({"event": "name"})])
            .group_by("name", maintain_order=True)
            .agg(
                _all_labels(),
                pl.col("count").sum(),
                pl.col("first_seen").min(),
                pl.col("last_seen").max(),
            )
        )
        pairs = events.select(name="event", person="person").unique()
        self._event_people = pl.concat([self._event_people, pairs]).unique()

    def _add_properties(self, properties: pl.DataFrame) -> None:
        chunk = properties.group_by("name", maintain_order=True).agg(
            labels=pl.col("name_label").unique(),
            count=pl.len().cast(pl.Int64),
            numbers=pl.col("value_number").is_not_null().sum().cast(pl.Int64),
            examples=pl.col("value").unique(maintain_order=True).head(EXAMPLE_VALUES),
        )
        self._properties = (
            pl.concat([self._properties, chunk])
            .group_by("name", maintain_order=True)
            .agg(
                _all_labels(),
                pl.col("count").sum(),
                pl.col("numbers").sum(),
                pl.col("examples")
                .list.explode(keep_nulls=False, empty_as_null=False)
                .unique(maintain_order=True)
                .head(EXAMPLE_VALUES),
            )
        )

    def _add_aliases(self, aliases: pl.DataFrame) -> None:
        if not aliases.height:
            return
        self.alias_count += aliases.height
        first, last = aliases["ts"].min(), aliases["ts"].max()
        self.alias_first_seen = min(filter(None, (self.alias_first_seen, first)))  # type: ignore[arg-type]
        self.alias_last_seen = max(filter(None, (self.alias_last_seen, last)))  # type: ignore[arg-type]
        people = pl.concat([aliases.select("person"), aliases.select(person="alias")])
        self._alias_people = pl.concat([self._alias_people, people]).unique()

    def _add_rejects(self, rejects: pl.DataFrame) -> None:
        counts = rejects.group_by("reason").agg(count=pl.len().cast(pl.Int64))
        self._rejects = (
            pl.concat([self._rejects, counts]).group_by("reason").agg(pl.col("count").sum())
        )
        examples = rejects.select(
            "line_no", "reason", raw_line=pl.col("raw_line").str.slice(0, EXAMPLE_LINE_CHARS)
        )
        self._reject_examples = (
            pl.concat([self._reject_examples, examples])
            .sort("line_no")
            .group_by("reason", maintain_order=True)
            .head(EXAMPLE_REJECTS_PER_REASON)
            .select("line_no", "reason", "raw_line")
            .sort("line_no")
        )

    def summary(self, known_names: KnownNames | None = None) -> PreviewSummary:
        people_per_event = self._event_people.group_by("name").agg(people=pl.len().cast(pl.Int64))
        events = (
            self._events.join(people_per_event, on="name", how="left")
            .select("name", _as_sent(), "count", "people", "first_seen", "last_seen")
            .sort(["count", "name"], descending=[True, False])
        )
        properties = self._properties.select(
            "name",
            _as_sent(),
            "count",
            value_type=pl.when(pl.col("numbers") == pl.col("count"))
            .then(pl.lit("number"))
            .when(pl.col("numbers") == 0)
            .then(pl.lit("text"))
            .otherwise(pl.lit("mixed")),
            examples=pl.col("examples"),
        ).sort(["count", "name"], descending=[True, False])
        reject_counts = self._rejects.sort(
            pl.col("reason").replace_strict(REASON_ORDER, return_dtype=pl.Int32)
        )
        return PreviewSummary(
            lines=self.lines,
            valid_lines=self.valid_lines,
            rejected_lines=self.rejected,
            blank_lines=self.blank,
            people=self._people.height,
            events=events,
            properties=properties,
            aliases=self.alias_count,
            alias_people=self._alias_people.height,
            alias_first_seen=self.alias_first_seen,
            alias_last_seen=self.alias_last_seen,
            reject_counts=reject_counts,
            reject_examples=self._reject_examples,
            warnings=self._warnings(reject_counts, events, properties, known_names),
        )

    def _warnings(
        self,
        reject_counts: pl.DataFrame,
        events: pl.DataFrame,
        properties: pl.DataFrame,
        known_names: KnownNames | None,
    ) -> list[str]:
        warnings = []
        collisions = (
            self._sent_names.group_by("kind", "name")
            .agg(pl.col("sent").sort())
            .filter(pl.col("sent").list.len() > 1)
            .sort("kind", "name")
        )
        for kind, name, sent in collisions.iter_rows():
            variants = ", ".join(repr(s) for s in sent)
            warnings.append(f"{kind} names {variants} are stored as one {kind}, {name!r}")
        counts = dict(reject_counts.iter_rows())
        for reason, advice in WARN_ON_REASONS.items():
            if counts.get(reason):
                warnings.append(f"{counts[reason]} lines rejected ({reason}): {advice}")
        if self.octal_recoverable:
            warnings.append(
                f"{self.octal_recoverable} lines rejected (octal_escape) would load with "
                "repair_octal_escapes: true on the source (KISSmetrics' escapes such as \\231 "
                "decoded as UTF-8)"
            )
        if self.octal_repaired:
            warnings.append(
                f"{self.octal_repaired} lines hold KISSmetrics' octal escapes (such as \\231), "
                "decoded as UTF-8 (repair_octal_escapes); those that are not UTF-8 are rejected "
                "as invalid_utf8"
            )
        if known_names is not None:
            for kind, frame, seen in (
                ("event", events, known_names.events),
                ("property", properties, known_names.properties),
            ):
                new = [name for name in frame["name"].sort().to_list() if name not in seen]
                if new:
                    shown = ", ".join(repr(n) for n in new[:10])
                    more = f" and {len(new) - 10} more" if len(new) > 10 else ""
                    warnings.append(f"{len(new)} {kind} names new to the warehouse: {shown}{more}")
        return warnings


@dataclass(frozen=True)
class KnownNames:
    """Event and property names (lower-cased) the warehouse already holds."""

    events: frozenset[str]
    properties: frozenset[str]
