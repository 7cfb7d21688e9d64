"""The vocabulary of reject reasons: every rejected line carries exactly one of these.

When a line breaks several rules, the first reason in ``REJECT_REASONS`` order wins, so a
line's reason does not depend on how the file was chunked.
"""

from __future__ import annotations

REJECT_REASONS: dict[str, str] = {
    "invalid_utf8": "the line is not valid UTF-8 text",
    "not_an_object": "the line is JSON but not an object (an array, a string, a number...)",
    "nested_value": "a value is an object or an array; only text and numbers are supported",
    "octal_escape": (
        "a string holds an octal escape such as \\231 (how KISSmetrics' export writes a "
        "non-ASCII byte), which JSON does not allow; send the character itself in UTF-8, or "
        "set repair_octal_escapes: true on the source to decode the escapes as UTF-8"
    ),
    "invalid_json": "the line is not valid JSON",
    "invalid_unicode_escape": "a \\u escape is a lone UTF-16 surrogate or NUL (\\u0000)",
    "duplicate_key": "the same key appears twice (names compare case-insensitively)",
    "missing_identity": "no _p (person identity)",
    "identity_not_text": "_p must be a string (an integer is taken as its digits)",
    "identity_empty": "_p is empty",
    "identity_too_long": "_p is longer than 255 characters",
    "missing_timestamp": "no _t (unix seconds, UTC)",
    "timestamp_not_integer": "_t must be a whole number of seconds (or a string of digits)",
    "timestamp_negative": "_t is negative",
    "timestamp_in_milliseconds": "_t looks like milliseconds; divide by 1000",
    "timestamp_before_2009": "_t is before 2009-01-01, which KISSmetrics does not keep",
    "timestamp_in_future": "_t is more than a day in the future",
    "event_name_not_text": "_n must be a string",
    "event_name_empty": "_n is empty",
    "event_name_too_long": "_n is 255 characters or longer",
    "alias_not_text": "_p2 must be a string (an integer is taken as its digits)",
    "alias_empty": "_p2 is empty",
    "alias_too_long": "_p2 is longer than 255 characters",
    "property_name_empty": "a property name is empty",
    "property_name_too_long": "a property name is 255 characters or longer",
    "property_value_null": "a property value is null; send a text or a number",
    "property_value_too_long": "a property value is longer than 8 KB",
    "nothing_to_record": "the line has no _n event, no _p2 alias and no property",
}

REASON_ORDER: dict[str, int] = {reason: i for i, reason in enumerate(REJECT_REASONS)}
