"""What a user would otherwise write: msgspec decoding plus the same checks and split in
Python, line by line; and the orjson parse-only floor (no checks at all)."""

from __future__ import annotations

import re

import msgspec
import orjson

from kmdagster.km_format.split import (
    FUTURE_TOLERANCE_SECONDS,
    KM_EPOCH_START,
    MAX_IDENTITY_CHARS,
    MAX_NAME_CHARS,
    MAX_VALUE_BYTES,
)

NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
DIGITS = re.compile(r"[0-9]+")
SPECIAL = ("_p", "_t", "_n", "_p2")
decode = msgspec.json.Decoder().decode


def parse_only(data: bytes) -> int:
    """The floor: orjson.loads of every non-blank line, nothing checked or kept."""
    parsed = 0
    for raw in data.split(b"\n"):
        if raw.strip():
            try:
                orjson.loads(raw)
                parsed += 1
            except orjson.JSONDecodeError:
                pass
    return parsed


def _text(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return (
        value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    )


def _identity(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def baseline_split(data: bytes, first_line_no: int, now: int):
    """(events, properties, aliases, rejects, blank, lines) as lists of tuples and counts."""
    events, properties, aliases, rejects = [], [], [], []
    blank = 0
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    for offset, raw in enumerate(lines):
        line_no = first_line_no + offset
        stripped = raw.strip(b" \t\r")
        if not stripped:
            blank += 1
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            rejects.append((line_no, "invalid_utf8"))
            continue
        if not stripped.startswith(b"{"):
            rejects.append((line_no, "not_an_object"))
            continue
        try:
            record = decode(raw)
        except msgspec.DecodeError:
            rejects.append((line_no, "invalid_json"))
            continue
        reason = _check(record, now)
        if reason:
            rejects.append((line_no, reason))
            continue
        person = _identity(record["_p"])
        ts = int(str(record["_t"]).strip())
        if "_n" in record:
            label = record["_n"].replace(",", " ").replace(":", " ")
            events.append((line_no, person, label.lower(), label, ts))
        if "_p2" in record:
            aliases.append((line_no, person, _identity(record["_p2"]), ts))
        for key, value in record.items():
            if key in SPECIAL:
                continue
            label = key.replace(",", " ").replace(":", " ")
            text = _text(value)
            stripped_text = text.strip()
            number = float(stripped_text) if NUMBER.fullmatch(stripped_text) else None
            if number is not None and number in (float("inf"), float("-inf")):
                number = None
            properties.append((line_no, person, ts, label.lower(), label, text, number))
    return events, properties, aliases, rejects, blank, len(lines)


def _check(record: object, now: int) -> str | None:
    """The first rule a decoded line breaks (the project's order), or None."""
    if not isinstance(record, dict):
        return "not_an_object"
    if any(isinstance(v, (dict, list)) for v in record.values()):
        return "nested_value"
    if any("\x00" in key or "\x00" in str(value) for key, value in record.items()):
        return "invalid_unicode_escape"  # an escaped NUL: no warehouse text holds it
    if "_p" not in record:
        return "missing_identity"
    person = _identity(record["_p"])
    if person is None:
        return "identity_not_text"
    if not person.strip():
        return "identity_empty"
    if len(person) > MAX_IDENTITY_CHARS:
        return "identity_too_long"
    if "_t" not in record:
        return "missing_timestamp"
    t = record["_t"]
    t_text = str(t).strip() if isinstance(t, (int, str)) and not isinstance(t, bool) else None
    if t_text is not None and t_text.startswith("-"):
        return "timestamp_negative"
    if t_text is None or not DIGITS.fullmatch(t_text):
        return "timestamp_not_integer"
    seconds = int(t_text)
    limit = now + FUTURE_TOLERANCE_SECONDS
    if seconds > limit:
        if KM_EPOCH_START <= seconds // 1000 <= limit:
            return "timestamp_in_milliseconds"
        return "timestamp_in_future"
    if seconds < KM_EPOCH_START:
        return "timestamp_before_2009"
    if "_n" in record:
        event = record["_n"]
        if not isinstance(event, str):
            return "event_name_not_text"
        label = event.replace(",", " ").replace(":", " ")
        if not label.strip():
            return "event_name_empty"
        if len(label) > MAX_NAME_CHARS:
            return "event_name_too_long"
    if "_p2" in record:
        alias = _identity(record["_p2"])
        if alias is None:
            return "alias_not_text"
        if not alias.strip():
            return "alias_empty"
        if len(alias) > MAX_IDENTITY_CHARS:
            return "alias_too_long"
    for key, value in record.items():
        if key in SPECIAL:
            continue
        name = key.replace(",", " ").replace(":", " ")
        if not name.strip():
            return "property_name_empty"
        if len(name) > MAX_NAME_CHARS:
            return "property_name_too_long"
        if value is None:
            return "property_value_null"
        if isinstance(value, str) and len(value.encode()) > MAX_VALUE_BYTES:
            return "property_value_too_long"
    if "_n" not in record and "_p2" not in record and len(record) <= 2:
        return "nothing_to_record"
    return None
