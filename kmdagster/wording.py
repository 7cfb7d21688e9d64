"""Counts and lists as people write them, for every message the product prints or logs."""

from __future__ import annotations

from collections.abc import Sequence


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 file``, ``2 files``: a count with its noun agreeing."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def names_and_more(items: Sequence[str], shown: int) -> str:
    """The first ``shown`` items, and how many more there are: ``a, b, c and 2 more``."""
    named = ", ".join(items[:shown])
    more = len(items) - shown
    return f"{named} and {more:,} more" if more > 0 else named


def sentence(clause: str) -> str:
    """A clause as a sentence of its own: its first letter upper case, a full stop after."""
    return f"{clause[:1].upper()}{clause[1:]}."
