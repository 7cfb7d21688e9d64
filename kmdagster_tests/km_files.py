"""Deterministic KM JSON files with known expected counts, for integration tests."""

from __future__ import annotations

import json
from dataclasses import dataclass

BASE_TS = 1_700_000_000


@dataclass(frozen=True)
class KmFile:
    data: bytes
    lines: int
    events: int
    properties: int
    aliases: int
    rejects: int
    blanks: int

    @property
    def valid_lines(self) -> int:
        return self.lines - self.rejects - self.blanks


def km_file(seed: int, repeats: int = 10) -> KmFile:
    """``repeats`` blocks of 8 lines: 3 events (one with 2 properties), a property set,
    an alias, a blank line and two bad lines (invalid JSON, milliseconds)."""
    out: list[str] = []
    for i in range(repeats):
        person = f"user{seed}-{i}@example.com"
        ts = BASE_TS + seed * 10_000 + i
        out += [
            json.dumps({"_p": person, "_t": ts, "_n": "Signed Up"}),
            json.dumps({"_p": person, "_t": ts, "_n": "Viewed, Page", "URL": f"/p/{i}", "N": i}),
            json.dumps({"_p": person, "_t": str(ts), "_n": "Purchased"}),
            json.dumps({"_p": person, "_t": ts, "Plan": "Gold"}),
            json.dumps({"_p": person, "_t": ts, "_p2": f"alias-{seed}-{i}"}),
            "",
            '{"_p": "broken", "_t": ',
            json.dumps({"_p": person, "_t": ts * 1000, "_n": "Too Precise"}),
        ]
    data = ("\n".join(out) + "\n").encode()
    return KmFile(
        data=data,
        lines=8 * repeats,
        events=3 * repeats,
        properties=3 * repeats,
        aliases=repeats,
        rejects=2 * repeats,
        blanks=repeats,
    )
