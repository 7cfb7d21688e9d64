"""The key/value pairs of well-formed flat JSON objects: one row per pair, in line order.

Lines reach this module only after the flat-object grammar has admitted them, so their
tokens can be cut cheaply instead of parsed: in such a line every unescaped double quote
opens or closes a string, and the text between two strings holds at most one bare value
(a number, true, false or null). Lines with an escaped quote, where that is not so, are
cut by a token regex instead. Either way the tokens of a line alternate key, value.
"""

from __future__ import annotations

import json

import polars as pl

from kmdagster.km_format.columns import constant, every_other_row, true_positions

# Value kinds, as small codes: they are compared once per pair.
KIND_STRING, KIND_NUMBER, KIND_BOOLEAN, KIND_NULL = 0, 1, 2, 3

ANY_STRING_RE = r'"(?:[^"\\]|\\.)*"'  # lax: also takes strings JSON refuses
TOKEN_RE = rf'{ANY_STRING_RE}|[^\s,:{{}}"]+'  # a whole string, or a bare value
_SEPARATOR_CHARS = "{}:, \t\r"
_SURROGATE_ESCAPE_RE = r"\\u[dD][89a-fA-F]"

PAIRS_SCHEMA = {
    "row": pl.UInt32,
    "key": pl.String,
    "kind": pl.UInt8,
    "value": pl.String,
    "escape_bad": pl.Boolean,
}


def extract_pairs(well_formed: pl.DataFrame) -> pl.DataFrame:
    """One row per pair of every line of ``well_formed`` (columns ``row``, ``text``).

    Returns ``row``, ``key`` (decoded), ``kind`` (a ``KIND_*`` code), ``value`` (the
    decoded string, a number's or boolean's text as sent, null for null) and
    ``escape_bad`` (a string of the pair escapes a lone surrogate). Pairs come out in
    line order, and in each line in the order they were sent.
    """
    # Escapes are rare: only lines with a backslash can hold one, and only those with an
    # escaped quote cannot be cut at quotes.
    escaped_lines = well_formed.filter(pl.col("text").str.contains("\\", literal=True))
    quote_escaped = escaped_lines.filter(pl.col("text").str.contains('\\"', literal=True))
    if quote_escaped.height:
        by_regex = pl.col("row").is_in(quote_escaped["row"].implode())
        raw = pl.concat(
            [
                _pairs_between_quotes(well_formed.filter(~by_regex)),
                _pairs_by_regex(well_formed.filter(by_regex)),
            ]
        ).sort("row", maintain_order=True)
    else:
        raw = _pairs_between_quotes(well_formed)
    may_escape = raw["row"].is_in(escaped_lines["row"].implode())
    key, key_bad = decode_string_contents(raw["key"], may_escape)
    value, value_bad = decode_string_contents(raw["value"], may_escape & raw["value_is_string"])
    bare = pl.col("value")
    kind = (
        pl.when(pl.col("value_is_string"))
        .then(pl.lit(KIND_STRING, dtype=pl.UInt8))
        .when(bare == "null")
        .then(pl.lit(KIND_NULL, dtype=pl.UInt8))
        .when(bare.is_in(["true", "false"]))
        .then(pl.lit(KIND_BOOLEAN, dtype=pl.UInt8))
        .otherwise(pl.lit(KIND_NUMBER, dtype=pl.UInt8))
    )
    return (
        raw.select("row", kind=kind)
        .with_columns(
            key=key,
            value=pl.when(pl.col("kind") != KIND_NULL).then(value),
            escape_bad=key_bad | value_bad,
        )
        .select(list(PAIRS_SCHEMA))
    )


def _pairs_between_quotes(lines: pl.DataFrame) -> pl.DataFrame:
    """Pairs of lines without an escaped quote: cut at every quote, no regex.

    With one quote put in front, a line's parts come in twos: a string's contents, then
    the text up to the next string (the first two are an empty string and the opening
    brace). A string followed by a colon is a key; its value is the next string when the
    colon stands alone, else the bare value after the colon.
    """
    parts = lines.select("row", part=('"' + pl.col("text")).str.split('"')).explode("part")
    strings = every_other_row(parts)
    return (
        strings.with_columns(
            after=parts["part"].gather_every(2, offset=1), next_string=pl.col("part").shift(-1)
        )
        .filter(pl.col("after").str.contains(":", literal=True))
        .with_columns(bare=pl.col("after").str.strip_chars(_SEPARATOR_CHARS))
        .select(
            "row",
            key="part",
            value=pl.when(pl.col("bare") == "").then(pl.col("next_string")).otherwise("bare"),
            value_is_string=pl.col("bare") == "",
        )
    )


def _pairs_by_regex(lines: pl.DataFrame) -> pl.DataFrame:
    """Pairs of lines with an escaped quote, where cutting at quotes would be wrong."""
    tokens = (
        lines.select("row", token=pl.col("text").str.extract_all(TOKEN_RE))
        .explode("token")
        .drop_nulls("token")  # an empty object has no tokens
    )
    keys, values = every_other_row(tokens), tokens["token"].gather_every(2, offset=1)
    value_is_string = values.str.starts_with('"')
    return keys.select(
        "row",
        key=pl.col("token").str.strip_prefix('"').str.strip_suffix('"'),
        value=values.str.strip_prefix('"').str.strip_suffix('"'),  # bare values have none
        value_is_string=value_is_string,
    )


def decode_string_contents(
    contents: pl.Series, may_escape: pl.Series
) -> tuple[pl.Series, pl.Series]:
    """Decode JSON string contents (no quotes). Returns (text, not_storable).

    Contents without a backslash are already their text; escaped ones go through polars'
    JSON decoder. Only ``may_escape`` rows are looked at. Text is not storable when it
    escapes a lone surrogate (checked exactly by Python's decoder: such escapes are rare)
    or a NUL character (``\\u0000``, which PostgreSQL's text cannot hold).
    """
    bad = constant(False, len(contents), pl.Boolean)
    if not may_escape.any():
        return contents, bad
    candidates = true_positions(may_escape)
    escaped = candidates.filter(contents.gather(candidates).str.contains("\\", literal=True))
    if not len(escaped):
        return contents, bad
    quoted = ('"' + contents.gather(escaped) + '"').alias("quoted")
    has_surrogate = quoted.str.contains(_SURROGATE_ESCAPE_RE)
    text = contents.clone()
    plain = escaped.filter(~has_surrogate)
    if len(plain):
        decoded = quoted.filter(~has_surrogate).str.json_decode(pl.String)
        text = text.scatter(plain, decoded)
        bad = bad.scatter(plain, decoded.str.contains("\x00", literal=True))
    surrogate = escaped.filter(has_surrogate)
    if len(surrogate):
        # Rare path: a Python loop over only the strings that escape surrogates.
        decoded = [_decode_surrogate_string(s) for s in quoted.filter(has_surrogate).to_list()]
        text = text.scatter(surrogate, pl.Series(decoded, dtype=pl.String))
        bad = bad.scatter(surrogate, pl.Series([d is None for d in decoded]))
    return text, bad


def _decode_surrogate_string(quoted: str) -> str | None:
    """The string's text, or None when it holds a lone surrogate or NUL (not storable)."""
    try:
        decoded = json.loads(quoted)
        decoded.encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return None
    return None if "\x00" in decoded else decoded
