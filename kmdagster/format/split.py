"""Validate KISSmetrics JSON lines and split them into events, properties, aliases, rejects.

Pure and vectorised: a block of whole lines goes in, polars frames come out, and no Python
code runs per line. A valid line is a flat JSON object, so a strict regular expression of
that grammar decides validity exactly; key/value pairs are then pulled out by a second
expression and checked column-wise. See docs/format-rules.md for the rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from kmdagster.format.lines import decode_lines
from kmdagster.format.reasons import REASON_ORDER, REJECT_REASONS

KM_EPOCH_START = 1_230_768_000  # 2009-01-01T00:00:00Z: KISSmetrics keeps nothing older
FUTURE_TOLERANCE_SECONDS = 86_400
MAX_NAME_CHARS = 254  # names must be under 255 characters
MAX_IDENTITY_CHARS = 255
MAX_VALUE_BYTES = 8 * 1024
MAX_RAW_LINE_CHARS = 16 * 1024  # a rejected line is kept up to this length
SPECIAL_KEYS = ("_p", "_t", "_n", "_p2")

_WS = r"[ \t\r]*"
_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_SCALAR = rf"(?:{_STRING}|{_NUMBER}|true|false|null)"
_PAIR = rf"{_STRING}{_WS}:{_WS}{_SCALAR}"
FLAT_OBJECT_RE = rf"^{_WS}\{{{_WS}(?:{_PAIR}(?:{_WS},{_WS}{_PAIR})*)?{_WS}\}}{_WS}$"
PAIR_RE = _PAIR
KEY_RE = rf"{_STRING}{_WS}:"
_NESTED_RE = rf":{_WS}[\[{{]"
_NUMBER_RE = rf"^{_NUMBER}$"
_INTEGER_TEXT_RE = r"^-?[0-9]+$"
_SURROGATE_ESCAPE_RE = r"\\u[dD][89a-fA-F]"

EVENTS_SCHEMA = {
    "line_no": pl.Int64,
    "person": pl.String,
    "event": pl.String,
    "event_label": pl.String,
    "ts": pl.Datetime("us", "UTC"),
}
PROPERTIES_SCHEMA = {
    "line_no": pl.Int64,
    "person": pl.String,
    "ts": pl.Datetime("us", "UTC"),
    "name": pl.String,
    "name_label": pl.String,
    "value": pl.String,
    "value_number": pl.Float64,
}
ALIASES_SCHEMA = {
    "line_no": pl.Int64,
    "person": pl.String,
    "alias": pl.String,
    "ts": pl.Datetime("us", "UTC"),
}
REJECTS_SCHEMA = {"line_no": pl.Int64, "reason": pl.String, "raw_line": pl.String}

_REASON_NAMES = list(REJECT_REASONS)


@dataclass(frozen=True)
class SplitLines:
    """What one block of lines holds, ready for the warehouse."""

    events: pl.DataFrame
    properties: pl.DataFrame
    aliases: pl.DataFrame
    rejects: pl.DataFrame
    lines_read: int
    blank_lines: int
    # Distinct (kind, sent, name) of the valid lines' names, only when asked for: the
    # preview warns about names that differ as sent but merge once normalised.
    sent_names: pl.DataFrame | None = None

    @property
    def rejected_lines(self) -> int:
        return self.rejects.height

    @property
    def loaded_lines(self) -> int:
        return self.lines_read - self.blank_lines - self.rejected_lines


def normalise_name(expr: pl.Expr) -> pl.Expr:
    """Commas and colons in a name become spaces (KISSmetrics' rule)."""
    return expr.str.replace_all(r"[,:]", " ")


def split_km_lines(
    data: bytes, first_line_no: int, now_epoch: int, with_sent_names: bool = False
) -> SplitLines:
    """Validate every line of ``data`` and split the valid ones into warehouse rows.

    ``data`` holds whole lines (a UTF-8 BOM already removed); ``first_line_no`` is the
    file line number of its first line; ``now_epoch`` bounds timestamps in the future.
    Every non-blank line ends up either loaded or in ``rejects``, never both.
    ``with_sent_names`` also returns the names as sent (for the preview's warnings).
    """
    lines = decode_lines(data, first_line_no)
    blank = ~pl.col("invalid_utf8") & (pl.col("text").str.strip_chars(" \t\r") == "")
    blank_lines = lines.select(blank.sum()).item()
    content = lines.filter(~blank).with_columns(syntax_code=_syntax_reason_code())
    well_formed = content.filter(pl.col("syntax_code").is_null())

    pairs = _extract_pairs(well_formed)
    per_line = _summarise_pairs(pairs)
    checked = (
        well_formed.select("line_no")
        .join(per_line, on="line_no", how="left")
        .with_columns(_line_fields())
        .with_columns(reason_code=_line_reason_code(now_limit=now_epoch + FUTURE_TOLERANCE_SECONDS))
        .with_columns(ts=pl.from_epoch("t_seconds", time_unit="s").dt.replace_time_zone("UTC"))
    )
    valid = checked.filter(pl.col("reason_code").is_null())

    rejected_codes = pl.concat(
        [
            content.filter(pl.col("syntax_code").is_not_null()).select(
                "line_no", reason_code="syntax_code"
            ),
            checked.filter(pl.col("reason_code").is_not_null()).select("line_no", "reason_code"),
        ]
    )
    rejects = (
        rejected_codes.join(content.select("line_no", "text"), on="line_no", how="left")
        .sort("line_no")
        .select(
            "line_no",
            reason=pl.col("reason_code").replace_strict(
                list(range(len(_REASON_NAMES))), _REASON_NAMES, return_dtype=pl.String
            ),
            raw_line=pl.col("text").str.slice(0, MAX_RAW_LINE_CHARS),
        )
    )

    events = valid.filter(pl.col("event_label").is_not_null()).select(
        "line_no",
        "person",
        event=pl.col("event_label").str.to_lowercase(),
        event_label="event_label",
        ts="ts",
    )
    aliases = valid.filter(pl.col("alias").is_not_null()).select("line_no", "person", "alias", "ts")
    properties = (
        pairs.filter(~pl.col("is_special"))
        .join(valid.select("line_no", "person", "ts"), on="line_no", how="inner")
        .select(
            "line_no",
            "person",
            "ts",
            "name",
            "name_label",
            value="value",
            value_number=_finite_number(pl.col("value")),
        )
        .sort("line_no", maintain_order=True)
    )
    sent_names = _sent_names(valid, pairs) if with_sent_names else None
    return SplitLines(
        events=events.cast(EVENTS_SCHEMA),  # type: ignore[arg-type]
        properties=properties.cast(PROPERTIES_SCHEMA),  # type: ignore[arg-type]
        aliases=aliases.cast(ALIASES_SCHEMA),  # type: ignore[arg-type]
        rejects=rejects.cast(REJECTS_SCHEMA),  # type: ignore[arg-type]
        lines_read=lines.height,
        blank_lines=blank_lines,
        sent_names=sent_names,
    )


def _sent_names(valid: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """Distinct event and property names of valid lines: as sent, and as stored."""
    events = valid.filter(pl.col("event_label").is_not_null()).select(
        kind=pl.lit("event"), sent="n_value", name=pl.col("event_label").str.to_lowercase()
    )
    properties = (
        pairs.filter(~pl.col("is_special"))
        .join(valid.select("line_no"), on="line_no", how="semi")
        .select(kind=pl.lit("property"), sent="key", name="name")
    )
    return pl.concat([events, properties]).unique()


def _finite_number(value: pl.Expr) -> pl.Expr:
    """A JSON-number-shaped value as a float; null when not numeric or out of double range."""
    number = (
        pl.when(value.str.strip_chars().str.contains(_NUMBER_RE))
        .then(value.str.strip_chars().cast(pl.Float64, strict=False))
        .otherwise(None)
    )
    return pl.when(number.is_finite()).then(number).otherwise(None)


def _code(reason: str) -> pl.Expr:
    return pl.lit(REASON_ORDER[reason], dtype=pl.Int32)


def _syntax_reason_code() -> pl.Expr:
    text = pl.col("text")
    stripped = text.str.strip_chars(" \t\r")
    return (
        pl.when(pl.col("invalid_utf8"))
        .then(_code("invalid_utf8"))
        .when(text.str.contains(FLAT_OBJECT_RE))
        .then(None)
        .when(~stripped.str.starts_with("{"))
        .then(_code("not_an_object"))
        .when(text.str.contains(_NESTED_RE))
        .then(_code("nested_value"))
        .otherwise(_code("invalid_json"))
    )


def _extract_pairs(well_formed: pl.DataFrame) -> pl.DataFrame:
    """One row per key/value pair of every well-formed line, with the pair's own checks."""
    # A string followed by a colon is always a key in a well-formed flat object, so the keys
    # and the whole pairs come out in step; slicing beats a capture-group regex here.
    tokens = (
        well_formed.select(
            "line_no",
            key_part=pl.col("text").str.extract_all(KEY_RE),
            pair=pl.col("text").str.extract_all(PAIR_RE),
        )
        .explode(["key_part", "pair"])
        .drop_nulls("pair")
        .select(
            "line_no",
            key_token=pl.col("key_part").str.strip_suffix(":").str.strip_chars_end(" \t\r"),
            value_token=pl.col("pair")
            .str.slice(pl.col("key_part").str.len_chars())
            .str.strip_chars_start(" \t\r"),
        )
    )
    key, key_bad = decode_json_strings(tokens["key_token"])
    value_is_string = tokens["value_token"].str.starts_with('"')
    # Non-string values go through as an empty string token so the decoder sees only strings.
    value_text, value_bad = decode_json_strings(
        tokens["value_token"].zip_with(value_is_string, pl.repeat('""', len(tokens), eager=True))
    )
    kind = (
        pl.when(pl.col("value_token").str.starts_with('"'))
        .then(pl.lit("string"))
        .when(pl.col("value_token") == "null")
        .then(pl.lit("null"))
        .when(pl.col("value_token").is_in(["true", "false"]))
        .then(pl.lit("boolean"))
        .otherwise(pl.lit("number"))
    )
    pairs = tokens.with_columns(
        key=key,
        escape_bad=key_bad | value_bad,
        decoded_string=value_text,
        kind=kind,
    ).with_columns(
        is_special=pl.col("key").is_in(SPECIAL_KEYS),
        name_label=normalise_name(pl.col("key")),
        value=pl.when(pl.col("kind") == "string")
        .then(pl.col("decoded_string"))
        .when(pl.col("kind") == "null")
        .then(None)
        .otherwise(pl.col("value_token")),
    )
    # Only what later steps read: the token columns would double the chunk's memory.
    return pairs.with_columns(pair_code=_pair_reason_code()).select(
        pl.col("line_no").set_sorted(),  # exploded in line order: a faster group_by
        "key",
        "kind",
        "value",
        "name_label",
        name=pl.col("name_label").str.to_lowercase(),  # once: the duplicate check reuses it
        is_special="is_special",
        pair_code="pair_code",
    )


def decode_json_strings(tokens: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Decode JSON string tokens (quotes included). Returns (text, has_lone_surrogate).

    Tokens without a backslash just lose their quotes; escaped ones go through polars'
    JSON decoder. Surrogate escapes are rare and checked exactly by Python's decoder,
    since a lone surrogate is not text that can be stored.
    """
    has_escape = tokens.str.contains("\\", literal=True)
    text = tokens.str.strip_prefix('"').str.strip_suffix('"')
    bad = pl.repeat(False, len(tokens), dtype=pl.Boolean, eager=True)
    if not has_escape.any():
        return text, bad
    has_surrogate = tokens.str.contains(_SURROGATE_ESCAPE_RE)
    escaped_idx = (has_escape & ~has_surrogate).arg_true()
    if len(escaped_idx):
        text = text.scatter(escaped_idx, tokens.gather(escaped_idx).str.json_decode(pl.String))
    surrogate_idx = has_surrogate.arg_true()
    if len(surrogate_idx):
        # Rare path: a Python loop over only the tokens that escape surrogates.
        decoded = [_decode_surrogate_token(tokens[i]) for i in surrogate_idx.to_list()]
        text = text.scatter(surrogate_idx, pl.Series(decoded, dtype=pl.String))
        bad = bad.scatter(surrogate_idx, pl.Series([d is None for d in decoded]))
    return text, bad


def _decode_surrogate_token(token: str) -> str | None:
    """The token's text, or None when it holds a lone surrogate (not storable text)."""
    try:
        decoded = json.loads(token)
        decoded.encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return None
    return decoded


def _pair_reason_code() -> pl.Expr:
    """Reasons a single pair gives its line (property rules; special keys are checked later)."""
    prop = ~pl.col("is_special")
    name = pl.col("name_label")
    return (
        pl.when(pl.col("escape_bad"))
        .then(_code("invalid_unicode_escape"))
        .when(prop & (name.str.strip_chars() == ""))
        .then(_code("property_name_empty"))
        .when(prop & (name.str.len_chars() > MAX_NAME_CHARS))
        .then(_code("property_name_too_long"))
        .when(prop & (pl.col("kind") == "null"))
        .then(_code("property_value_null"))
        .when(prop & (pl.col("value").str.len_bytes() > MAX_VALUE_BYTES))
        .then(_code("property_value_too_long"))
        .otherwise(None)
    )


def _summarise_pairs(pairs: pl.DataFrame) -> pl.DataFrame:
    """One row per line: its special keys, property count, duplicate flag, worst pair reason.

    Only plain aggregations (max, sum, any, min) in the group_by: a special key's column is
    null on every other pair, so its max is its value. A line naming a key twice is
    rejected as duplicate_key, so which of the two the max picks does not matter.
    """
    special_columns = []
    for key, prefix in (("_p", "p"), ("_t", "t"), ("_n", "n"), ("_p2", "p2")):
        is_key = pl.col("key") == key
        special_columns += [
            pl.when(is_key).then(pl.col("kind")).alias(f"{prefix}_kind"),
            pl.when(is_key).then(pl.col("value")).alias(f"{prefix}_value"),
        ]
    duplicate = pl.struct("line_no", "name").is_duplicated()
    return (
        pairs.select("line_no", "is_special", "pair_code", *special_columns, duplicate=duplicate)
        .group_by("line_no")
        .agg(
            *(pl.col(column.meta.output_name()).max() for column in special_columns),
            property_count=(~pl.col("is_special")).sum(),
            duplicate_key=pl.col("duplicate").any(),
            pair_code=pl.col("pair_code").min(),
        )
    )


def _identity_text(kind: str, value: str) -> pl.Expr:
    """An identity is a string, or an integer taken as its digits; anything else is null."""
    return (
        pl.when(pl.col(kind) == "string")
        .then(pl.col(value))
        .when((pl.col(kind) == "number") & pl.col(value).str.contains(_INTEGER_TEXT_RE))
        .then(pl.col(value))
        .otherwise(None)
    )


def _line_fields() -> list[pl.Expr]:
    t_digits = (
        pl.when(pl.col("t_kind").is_in(["number", "string"]))
        .then(pl.col("t_value").str.strip_chars())
        .otherwise(None)
    )
    return [
        _identity_text("p_kind", "p_value").alias("person"),
        _identity_text("p2_kind", "p2_value").alias("alias"),
        pl.when(pl.col("n_kind") == "string")
        .then(normalise_name(pl.col("n_value")))
        .otherwise(None)
        .alias("event_label"),
        t_digits.alias("t_text"),
        pl.when(t_digits.str.contains(r"^[0-9]{1,18}$"))
        .then(t_digits.cast(pl.Int64, strict=False))
        .otherwise(None)
        .alias("t_seconds"),
    ]


def _line_reason_code(now_limit: int) -> pl.Expr:
    """The first broken rule of each well-formed line, as a reason code (null: valid)."""
    person, alias, event = pl.col("person"), pl.col("alias"), pl.col("event_label")
    t_text, t_seconds = pl.col("t_text"), pl.col("t_seconds")
    candidates = [
        pl.col("pair_code"),
        pl.when(pl.col("duplicate_key")).then(_code("duplicate_key")),
        pl.when(pl.col("p_kind").is_null()).then(_code("missing_identity")),
        pl.when(pl.col("p_kind").is_not_null() & person.is_null()).then(_code("identity_not_text")),
        pl.when(person.str.strip_chars() == "").then(_code("identity_empty")),
        pl.when(person.str.len_chars() > MAX_IDENTITY_CHARS).then(_code("identity_too_long")),
        pl.when(pl.col("t_kind").is_null()).then(_code("missing_timestamp")),
        pl.when(pl.col("t_kind").is_not_null() & t_text.str.starts_with("-")).then(
            _code("timestamp_negative")
        ),
        pl.when(
            pl.col("t_kind").is_not_null()
            & ~t_text.fill_null("").str.starts_with("-")
            & ~t_text.fill_null("").str.contains(r"^[0-9]+$")
        ).then(_code("timestamp_not_integer")),
        pl.when(
            t_text.str.contains(r"^[0-9]+$")
            & (t_seconds.is_null() | (t_seconds > now_limit))
            & (t_seconds // 1000 >= KM_EPOCH_START)
            & (t_seconds // 1000 <= now_limit)
        ).then(_code("timestamp_in_milliseconds")),
        pl.when(
            t_text.str.contains(r"^[0-9]+$") & (t_seconds.is_null() | (t_seconds > now_limit))
        ).then(_code("timestamp_in_future")),
        pl.when(t_seconds < KM_EPOCH_START).then(_code("timestamp_before_2009")),
        pl.when(pl.col("n_kind").is_not_null() & event.is_null()).then(
            _code("event_name_not_text")
        ),
        pl.when(event.str.strip_chars() == "").then(_code("event_name_empty")),
        pl.when(event.str.len_chars() > MAX_NAME_CHARS).then(_code("event_name_too_long")),
        pl.when(pl.col("p2_kind").is_not_null() & alias.is_null()).then(_code("alias_not_text")),
        pl.when(alias.str.strip_chars() == "").then(_code("alias_empty")),
        pl.when(alias.str.len_chars() > MAX_IDENTITY_CHARS).then(_code("alias_too_long")),
        pl.when(
            pl.col("n_kind").is_null()
            & pl.col("p2_kind").is_null()
            & (pl.col("property_count").fill_null(0) == 0)
        ).then(_code("nothing_to_record")),
    ]
    return pl.min_horizontal(candidates)
