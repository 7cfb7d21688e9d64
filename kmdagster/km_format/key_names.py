"""What each key of a piece's pairs means as a name, remembered from piece to piece.

A file uses the same few hundred keys in every piece, and working a key out (stored and
compared name, special or not, what is wrong with it) takes a dozen small polars
operations: about 3 ms of a 2 MB piece's 65 ms when done afresh. So the keys described
so far are kept, up to a bound, and a piece only joins against them; a piece with a key
not seen yet describes the keys again, its new ones included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import polars as pl

# A piece with a new key describes all remembered keys again: about 3 ms at 10,000 keys,
# 24 ms at 100,000. Past the bound a piece's own keys are described (and kept) instead,
# so a file with ever new keys costs about what it did before keys were remembered.
MAX_REMEMBERED_KEYS = 10_000


class KeyNames:
    """Joins pairs (column ``key``) to what ``describe`` says of each distinct key.

    ``describe`` takes a frame of distinct keys and returns one row per key with the
    key's columns; ``never_null`` names one of them that is set for every key, so a key
    missing from the remembered ones shows as a null there. Ids that ``describe`` gives
    (such as a rank) only need to agree within one call's result, which they do: every
    call joins against a single description.
    """

    def __init__(
        self,
        describe: Callable[[pl.DataFrame], pl.DataFrame],
        never_null: str,
        max_keys: int = MAX_REMEMBERED_KEYS,
    ) -> None:
        self._describe = describe
        self._never_null = never_null
        self._max_keys = max_keys
        self._known: pl.DataFrame | None = None
        self._lock = threading.Lock()  # pieces may be split in several threads

    def join(self, pairs: pl.DataFrame) -> pl.DataFrame:
        known = self._known
        if known is not None:
            joined = _join(pairs, known)
            if not joined[self._never_null].has_nulls():
                return joined
        return _join(pairs, self._learn(pairs.select(pl.col("key").unique())))

    def _learn(self, keys: pl.DataFrame) -> pl.DataFrame:
        with self._lock:
            known = self._known
            if known is not None:
                new = keys.filter(~pl.col("key").is_in(known["key"].implode()))
                if new.is_empty():  # another thread learned them since this one looked
                    return known
                if known.height + new.height <= self._max_keys:
                    keys = pl.concat([known.select("key"), new])
            described = self._describe(keys)
            self._known = described
            return described


def _join(pairs: pl.DataFrame, described: pl.DataFrame) -> pl.DataFrame:
    return pairs.join(described, on="key", how="left", maintain_order="left")
