"""Validate KISSmetrics JSON lines and split them into events, properties, aliases, rejects.

Pure and vectorised: a block of whole lines goes in, polars frames come out, and no Python
code runs per line. A valid line is a flat JSON object, so a strict regular expression of
that grammar decides validity exactly; the pairs of the lines it admits are then cut out
(``pairs.py``) and checked column-wise, and each line's special keys, duplicate names and
worst pair are gathered per line by row index rather than by a group-by over all pairs.
The rules are in docs/architecture.md ("Format rules") and the reasons in ``reasons.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache

import polars as pl

from kmdagster.km_format.columns import constant, true_positions
from kmdagster.km_format.key_names import KeyNames
from kmdagster.km_format.lines import decode_lines
from kmdagster.km_format.octal_escapes import OCTAL_ESCAPE_RE, repair_octal_escapes
from kmdagster.km_format.pairs import (
    ANY_STRING_RE,
    KIND_NULL,
    KIND_NUMBER,
    KIND_STRING,
    extract_pairs,
)
from kmdagster.km_format.reasons import REASON_ORDER, REJECT_REASONS

KM_EPOCH_START = 1_230_768_000  # 2009-01-01T00:00:00Z: KISSmetrics keeps nothing older
FUTURE_TOLERANCE_SECONDS = 86_400
MAX_NAME_CHARS = 254  # names must be under 255 characters
MAX_IDENTITY_CHARS = 255
MAX_VALUE_BYTES = 8 * 1024
# A rejected line is kept up to this many characters, with its full length in raw_chars:
# enough to see what is wrong, and a bad upload cannot flood the warehouse.
MAX_RAW_LINE_CHARS = 1000
SPECIAL_KEYS = ("_p", "_t", "_n", "_p2")
_SPECIAL_PREFIXES = {"_p": "p", "_t": "t", "_n": "n", "_p2": "p2"}  # per-line column names

_WS = r"[ \t\r]*"
_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_SCALAR = rf"(?:{_STRING}|{_NUMBER}|true|false|null)"
_PAIR = rf"{_STRING}{_WS}:{_WS}{_SCALAR}"
FLAT_OBJECT_RE = rf"^{_WS}\{{{_WS}(?:{_PAIR}(?:{_WS},{_WS}{_PAIR})*)?{_WS}\}}{_WS}$"
_NESTED_RE = rf":{_WS}[\[{{]"  # looked for once strings are emptied: they may hold ":{"
_PADDED_NUMBER_RE = rf"^\s*{_NUMBER}\s*$"
_INTEGER_TEXT_RE = r"^-?[0-9]+$"

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
REJECTS_SCHEMA = {
    "line_no": pl.Int64,
    "byte_offset": pl.Int64,  # where the line starts in the (uncompressed) file
    "reason": pl.String,
    "raw_line": pl.String,
    "raw_chars": pl.Int64,
    # invalid JSON: the character (from 1) where a JSON parser stops reading the line
    "error_position": pl.Int64,
}
# The reasons whose lines a JSON parser can point into.
_POSITIONED_REASONS = ("invalid_json", "octal_escape")

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
    # Lines holding KISSmetrics' octal escapes: repaired (``repair_octal``), or, when only
    # counted for the preview, rejected as ``octal_escape`` but loadable once repaired.
    octal_repaired: int = 0
    octal_recoverable: int = 0

    @property
    def rejected_lines(self) -> int:
        return self.rejects.height

    def tables(self) -> dict[str, pl.DataFrame]:
        """Each warehouse table's rows, by table name."""
        return {
            "km_events": self.events,
            "km_properties": self.properties,
            "km_aliases": self.aliases,
            "km_rejects": self.rejects,
        }

    @property
    def loaded_lines(self) -> int:
        return self.lines_read - self.blank_lines - self.rejected_lines


def normalise_name(expr: pl.Expr) -> pl.Expr:
    """Commas and colons in a name become spaces (KISSmetrics' rule)."""
    return expr.str.replace_all(r"[,:]", " ")


def split_km_lines(
    data: bytes,
    first_line_no: int,
    now_epoch: int,
    with_sent_names: bool = False,
    first_byte_offset: int = 0,
    repair_octal: bool = False,
) -> SplitLines:
    """Validate every line of ``data`` and split the valid ones into warehouse rows.

    ``data`` holds whole lines (a UTF-8 BOM already removed); ``first_line_no`` is the
    file line number of its first line and ``first_byte_offset`` where it starts in the
    file; ``now_epoch`` bounds timestamps in the future.
    Every non-blank line ends up either loaded or in ``rejects``, never both.
    ``with_sent_names`` also returns the names as sent (for the preview's warnings);
    ``repair_octal`` decodes KISSmetrics' octal escapes first (``octal_escapes.py``).
    """
    lines = decode_lines(data, first_line_no, first_byte_offset)
    octal_repaired = 0
    if repair_octal:
        lines, octal_repaired = repair_octal_escapes(lines)
    lines = lines.with_columns(
        is_flat=~pl.col("invalid_utf8") & pl.col("text").str.contains(FLAT_OBJECT_RE)
    )
    well_formed = lines.filter("is_flat").select(
        "line_no", "byte_offset", row=pl.int_range(pl.len(), dtype=pl.UInt32), text="text"
    )
    # Blank or malformed: few lines, so the blank test runs on these alone.
    blank = ~pl.col("invalid_utf8") & (pl.col("text").str.strip_chars(" \t\r") == "")
    malformed = lines.filter(~pl.col("is_flat")).filter(~blank)

    pairs = _with_names(extract_pairs(well_formed.select("row", "text")))
    checked = (
        pl.concat(
            [
                well_formed.select("line_no", "byte_offset", "text"),
                _line_summary(pairs, well_formed.height),
            ],
            how="horizontal",
        )
        .lazy()  # one query, not one per step: a piece's fixed cost matters at 2 MB
        .with_columns(_line_fields())
        .with_columns(_line_seconds())
        .with_columns(reason_code=_line_reason_code(now_limit=now_epoch + FUTURE_TOLERANCE_SECONDS))
        .select(
            "line_no",
            "byte_offset",
            "text",
            "reason_code",
            "person",
            "alias",
            "event_label",
            "n_value",
            ts=pl.from_epoch("t_seconds", time_unit="s").dt.replace_time_zone("UTC"),
        )
        .collect()
    )
    # Eager filters carry every column: narrow first, then filter by a mask.
    is_valid = checked["reason_code"].is_null()
    valid = checked.drop("byte_offset", "text", "reason_code").filter(is_valid)

    rejected = pl.concat(
        [
            malformed.select("line_no", "byte_offset", "text", reason_code=_syntax_reason_code()),
            checked.select("line_no", "byte_offset", "text", "reason_code").filter(~is_valid),
        ]
    ).sort("line_no")
    rejects = rejected.select(
        "line_no",
        "byte_offset",
        reason=pl.col("reason_code").replace_strict(
            list(range(len(_REASON_NAMES))), _REASON_NAMES, return_dtype=pl.String
        ),
        # A NUL byte (only in lines rejected as invalid JSON) shows as U+FFFD: no
        # warehouse text type can hold it.
        raw_line=pl.col("text")
        .str.slice(0, MAX_RAW_LINE_CHARS)
        .str.replace_all("\x00", "\ufffd", literal=True),
        raw_chars=pl.col("text").str.len_chars(),
        error_position=_json_error_positions(rejected),
    )

    events = valid.filter(pl.col("event_label").is_not_null()).select(
        "line_no",
        "person",
        event=pl.col("event_label").str.to_lowercase(),
        event_label="event_label",
        ts="ts",
    )
    aliases = valid.filter(pl.col("alias").is_not_null()).select("line_no", "person", "alias", "ts")
    property_pairs = _valid_property_pairs(pairs, checked)
    properties = property_pairs.select(
        "line_no", "person", "ts", "name", "name_label", "value"
    ).with_columns(value_number=_value_numbers(property_pairs["value"], property_pairs["kind"]))
    sent_names = _sent_names(valid, property_pairs) if with_sent_names else None
    octal_recoverable = 0
    if with_sent_names and not repair_octal:
        octal_recoverable = _octal_recoverable(rejected, now_epoch)
    return SplitLines(
        events=events.cast(EVENTS_SCHEMA),  # type: ignore[arg-type]
        properties=properties.cast(PROPERTIES_SCHEMA),  # type: ignore[arg-type]
        aliases=aliases.cast(ALIASES_SCHEMA),  # type: ignore[arg-type]
        rejects=rejects.cast(REJECTS_SCHEMA),  # type: ignore[arg-type]
        lines_read=lines.height,
        blank_lines=lines.height - well_formed.height - malformed.height,
        sent_names=sent_names,
        octal_repaired=octal_repaired,
        octal_recoverable=octal_recoverable,
    )


def _octal_recoverable(rejected: pl.DataFrame, now_epoch: int) -> int:
    """How many of the lines rejected as ``octal_escape`` would load once repaired."""
    texts = rejected.filter(pl.col("reason_code") == REASON_ORDER["octal_escape"])["text"]
    if texts.is_empty():
        return 0
    repaired = split_km_lines("\n".join(texts.to_list()).encode(), 1, now_epoch, repair_octal=True)
    return repaired.loaded_lines


def _describe_keys(keys: pl.DataFrame) -> pl.DataFrame:
    """Each distinct key's name as stored (normalised), as compared (also lower-cased)
    with a small id for it, whether it is a special key, and what is wrong with it as a
    property name (a reason code)."""
    label = pl.col("name_label")
    return (
        keys.with_columns(
            special=pl.col("key").replace_strict(
                SPECIAL_KEYS, list(range(len(SPECIAL_KEYS))), default=None, return_dtype=pl.UInt8
            ),
            name_label=normalise_name(pl.col("key")),
        )
        .with_columns(
            is_special=pl.col("special").is_not_null(),
            name=label.str.to_lowercase(),
            name_code=pl.when(pl.col("special").is_not_null())
            .then(None)
            .when(label.str.strip_chars() == "")
            .then(_code("property_name_empty"))
            .when(label.str.len_chars() > MAX_NAME_CHARS)
            .then(_code("property_name_too_long")),
        )
        # Keys that differ only in case, commas or colons share a name, and so its id.
        .with_columns(name_id=pl.col("name").rank("dense").cast(pl.UInt32))
    )


_KEY_NAMES = KeyNames(_describe_keys, never_null="name_id")


def _with_names(pairs: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` with their key's columns from ``_describe_keys``."""
    return _KEY_NAMES.join(pairs)


def _valid_property_pairs(pairs: pl.DataFrame, checked: pl.DataFrame) -> pl.DataFrame:
    """The property pairs of valid lines, with their line's number, person and time."""
    properties = pairs.select("row", "key", "kind", "value", "name", "name_label").filter(
        ~pairs["is_special"]
    )
    line = checked.select("line_no", "person", "ts", "reason_code")[properties["row"]]
    return pl.concat([properties.drop("row"), line.drop("reason_code")], how="horizontal").filter(
        line["reason_code"].is_null()
    )


def _sent_names(valid: pl.DataFrame, property_pairs: pl.DataFrame) -> pl.DataFrame:
    """Distinct event and property names of valid lines: as sent, and as stored."""
    events = valid.filter(pl.col("event_label").is_not_null()).select(
        kind=pl.lit("event"), sent="n_value", name=pl.col("event_label").str.to_lowercase()
    )
    properties = property_pairs.select(kind=pl.lit("property"), sent="key", name="name")
    return pl.concat([events, properties]).unique()


def _value_numbers(values: pl.Series, kinds: pl.Series) -> pl.Series:
    """A JSON number, or a string holding one (spaces around allowed), as a float; null
    for anything else and for numbers out of double range (their text is kept)."""
    numbers = values.str.strip_chars().cast(pl.Float64, strict=False)
    # The cast takes more than JSON's grammar ("inf", "+1", ".5"): check the strings it took.
    strings_taken = true_positions((kinds == KIND_STRING) & numbers.is_not_null())
    if len(strings_taken):
        not_json = ~values.gather(strings_taken).str.contains(_PADDED_NUMBER_RE)
        numbers = numbers.scatter(strings_taken.filter(not_json), None)
    return numbers.set(~numbers.is_finite().fill_null(True), None)


def _code(reason: str) -> pl.Expr:
    return pl.lit(REASON_ORDER[reason], dtype=pl.Int32)


@cache
def _syntax_reason_code() -> pl.Expr:
    """Why a line the flat-object grammar refused is not one."""
    stripped = pl.col("text").str.strip_chars(" \t\r")
    return (
        pl.when(pl.col("invalid_utf8"))
        .then(_code("invalid_utf8"))
        .when(~stripped.str.starts_with("{"))
        .then(_code("not_an_object"))
        .when(pl.col("text").str.replace_all(ANY_STRING_RE, '""').str.contains(_NESTED_RE))
        .then(_code("nested_value"))
        .when(pl.col("text").str.contains(OCTAL_ESCAPE_RE))
        .then(_code("octal_escape"))
        .otherwise(_code("invalid_json"))
    )


def _json_error_positions(rejected: pl.DataFrame) -> pl.Series:
    """For each rejected line (``reason_code``, ``text``) that is not JSON, the character
    (from 1) where Python's JSON parser stops; null for the others. A Python call per
    such line: they are rejects, so few."""
    codes = pl.Series([REASON_ORDER[reason] for reason in _POSITIONED_REASONS], dtype=pl.Int32)
    positioned = rejected.select(pl.col("reason_code").is_in(codes.implode()).arg_true())
    rows = positioned.to_series()
    positions = constant(None, rejected.height, pl.Int64)
    if rows.is_empty():
        return positions
    found = [_json_error_position(text) for text in rejected["text"].gather(rows).to_list()]
    return positions.scatter(rows, pl.Series(found, dtype=pl.Int64))


def _json_error_position(text: str) -> int | None:
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return error.pos + 1
    except RecursionError:
        return None
    return None  # Python's parser takes it (NaN, say); the grammar here does not


def _pair_reason_codes(pairs: pl.DataFrame) -> pl.DataFrame:
    """(row, code) of the worst reason any pair gives its line (property rules; special
    keys are checked per line). Few pairs are suspect, so codes are worked out for those."""
    suspect, code = _pair_rules()
    columns = ["row", "escape_bad", "name_code", "is_special", "kind", "value"]
    return pairs.select(columns).filter(suspect).group_by("row").agg(pair_code=code.min())


@cache
def _pair_rules() -> tuple[pl.Expr, pl.Expr]:
    """(is the pair suspect, its reason code) from the property rules, in reason order."""
    prop = ~pl.col("is_special")
    rules = [  # in reason order: the first that holds is the pair's reason
        (pl.col("escape_bad"), _code("invalid_unicode_escape")),
        (pl.col("name_code").is_not_null(), pl.col("name_code")),
        (prop & (pl.col("kind") == KIND_NULL), _code("property_value_null")),
        (
            prop & (pl.col("value").str.len_bytes() > MAX_VALUE_BYTES),
            _code("property_value_too_long"),
        ),
    ]
    suspect = pl.any_horizontal([condition for condition, _ in rules])
    code = pl.coalesce([pl.when(condition).then(reason) for condition, reason in rules])
    return suspect, code


def _line_summary(pairs: pl.DataFrame, lines: int) -> pl.DataFrame:
    """One row per well-formed line (by ``row``): its special keys' kinds and values,
    whether it names a key twice, whether it has a property, and its worst pair reason.

    Built by scattering the few interesting pairs to their line's row: no group-by over
    all pairs. A line naming a key twice is rejected as duplicate_key, so which of the
    two a scatter keeps does not matter.
    """
    columns: dict[str, pl.Series] = {}
    is_special = pairs["is_special"]
    # Every special key's kind and value scattered at once into one column of
    # ``len(SPECIAL_KEYS) * lines`` rows, key after key, then sliced per key (slices share
    # the column): two scatters instead of a filter and two scatters per key.
    specials = pairs.select(
        at=pl.col("special").cast(pl.UInt32) * lines + pl.col("row"), kind="kind", value="value"
    ).filter(is_special)
    every = len(SPECIAL_KEYS) * lines
    kinds = _scatter(every, pl.UInt8, specials["at"], specials["kind"])
    values = _scatter(every, pl.String, specials["at"], specials["value"])
    for index, key in enumerate(SPECIAL_KEYS):
        prefix = _SPECIAL_PREFIXES[key]
        columns[f"{prefix}_kind"] = kinds.slice(index * lines, lines)
        columns[f"{prefix}_value"] = values.slice(index * lines, lines)
    property_rows = pairs["row"].filter(~is_special)
    columns["has_property"] = _scatter(lines, pl.Boolean, property_rows, True, fill=False)
    duplicate_rows = _rows_naming_a_key_twice(pairs)
    columns["duplicate_key"] = _scatter(lines, pl.Boolean, duplicate_rows, True, fill=False)
    coded = _pair_reason_codes(pairs)
    columns["pair_code"] = _scatter(lines, pl.Int32, coded["row"], coded["pair_code"])
    return pl.DataFrame(columns)


def _scatter(
    length: int,
    dtype: pl.DataType | type[pl.DataType],
    rows: pl.Series,
    values: pl.Series | bool,
    fill: object = None,
) -> pl.Series:
    """A column of ``length`` rows, ``fill`` except where ``rows`` say."""
    column = constant(fill, length, dtype)
    if len(rows):
        column = column.scatter(rows, values)
    return column


def _rows_naming_a_key_twice(pairs: pl.DataFrame) -> pl.Series:
    """Rows (lines) with two pairs of the same name, once names are normalised: sorted
    (row, name id) pairs, where two neighbours are equal."""
    row_and_name = (pl.col("row").cast(pl.UInt64) * (1 << 32) + pl.col("name_id")).sort()
    repeated = pairs.select(f=row_and_name)["f"]
    repeated = repeated.filter(repeated == repeated.shift(1))
    return (repeated // (1 << 32)).cast(pl.UInt32).unique()


def _identity_text(kind: str, value: str) -> pl.Expr:
    """An identity is a string, or an integer taken as its digits; anything else is null."""
    number = pl.when(pl.col(kind) == KIND_NUMBER).then(pl.col(value))  # null elsewhere: cheap
    return (
        pl.when(pl.col(kind) == KIND_STRING)
        .then(pl.col(value))
        .when(number.str.contains(_INTEGER_TEXT_RE))
        .then(pl.col(value))
    )


@cache
def _line_fields() -> list[pl.Expr]:
    t_text = (
        pl.when(pl.col("t_kind").is_in([KIND_NUMBER, KIND_STRING]))
        .then(pl.col("t_value").str.strip_chars())
        .otherwise(None)
    )
    return [
        _identity_text("p_kind", "p_value").alias("person"),
        _identity_text("p2_kind", "p2_value").alias("alias"),
        pl.when(pl.col("n_kind") == KIND_STRING)
        .then(normalise_name(pl.col("n_value")))
        .otherwise(None)
        .alias("event_label"),
        t_text.alias("t_text"),
        t_text.str.contains(r"^[0-9]+$").fill_null(False).alias("t_is_digits"),
    ]


@cache
def _line_seconds() -> pl.Expr:
    """``_t`` as whole seconds when it is digits that fit (longer is the future anyway)."""
    t_text = pl.col("t_text")
    fits = pl.col("t_is_digits") & (t_text.str.len_bytes() <= 18)
    return pl.when(fits).then(t_text.cast(pl.Int64, strict=False)).alias("t_seconds")


@lru_cache(maxsize=4)  # pieces split within the same second share it
def _line_reason_code(now_limit: int) -> pl.Expr:
    """The first broken rule of each well-formed line, as a reason code (null: valid).

    The checks are listed in reason order and the first that holds wins (a coalesce,
    cheaper than the minimum of twenty columns).
    """
    person, alias, event = pl.col("person"), pl.col("alias"), pl.col("event_label")
    t_text, t_seconds, t_digits = pl.col("t_text"), pl.col("t_seconds"), pl.col("t_is_digits")
    pair_code = pl.col("pair_code")
    escape_code = _code("invalid_unicode_escape")
    checks = [
        pl.when(pair_code == escape_code).then(escape_code),
        pl.when(pl.col("duplicate_key")).then(_code("duplicate_key")),
        pl.when(pl.col("p_kind").is_null()).then(_code("missing_identity")),
        pl.when(person.is_null()).then(_code("identity_not_text")),
        pl.when(person.str.strip_chars() == "").then(_code("identity_empty")),
        pl.when(person.str.len_chars() > MAX_IDENTITY_CHARS).then(_code("identity_too_long")),
        pl.when(pl.col("t_kind").is_null()).then(_code("missing_timestamp")),
        pl.when(t_text.str.starts_with("-")).then(_code("timestamp_negative")),
        pl.when(~t_digits).then(_code("timestamp_not_integer")),
        pl.when(
            (t_seconds.is_null() | (t_seconds > now_limit))
            & (t_seconds // 1000 >= KM_EPOCH_START)
            & (t_seconds // 1000 <= now_limit)
        ).then(_code("timestamp_in_milliseconds")),
        pl.when(t_seconds.is_null() | (t_seconds > now_limit)).then(_code("timestamp_in_future")),
        pl.when(t_seconds < KM_EPOCH_START).then(_code("timestamp_before_2009")),
        pl.when(pl.col("n_kind").is_not_null() & event.is_null()).then(
            _code("event_name_not_text")
        ),
        pl.when(event.str.strip_chars() == "").then(_code("event_name_empty")),
        pl.when(event.str.len_chars() > MAX_NAME_CHARS).then(_code("event_name_too_long")),
        pl.when(pl.col("p2_kind").is_not_null() & alias.is_null()).then(_code("alias_not_text")),
        pl.when(alias.str.strip_chars() == "").then(_code("alias_empty")),
        pl.when(alias.str.len_chars() > MAX_IDENTITY_CHARS).then(_code("alias_too_long")),
        pair_code,  # the property rules come next in reason order
        pl.when(
            pl.col("n_kind").is_null() & pl.col("p2_kind").is_null() & ~pl.col("has_property")
        ).then(_code("nothing_to_record")),
    ]
    return pl.coalesce(checks)
