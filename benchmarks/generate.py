"""A deterministic generator of realistic KISSmetrics JSON files for the benchmark.

Zipf-like event names, about 200 property names with mixed value types, long URLs,
about 100k people, 2% aliases, 10% property-only lines and 0.5% invalid lines of many
kinds (each kind's expected reject reason is the project's documented rule).
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson

START_TS = 1_700_000_000
EVENTS = [f"Event {i:02d}" for i in range(60)] + ["Signed Up", "Viewed Page", "Purchased"]
PROPERTIES = [f"prop_{i:03d}" for i in range(200)]
PEOPLE = 100_000
INVALID_KINDS = (
    b'{"_p": "broken", "_t": ',  # truncated JSON
    b"[1, 2, 3]",  # not an object
    b'{"_p": "u1", "_t": 1700000000, "nested": {"a": 1}}',  # nested value
    b'{"_p": "u1", "_t": 1700000000000, "_n": "Too Precise"}',  # milliseconds
    b'{"_t": 1700000000, "_n": "No One"}',  # missing identity
    b'{"_p": "u1", "_t": 1000000000, "_n": "Old"}',  # before 2009
    b'{"_p": "u1", "_t": 1700000000, "_n": "\xff\xfe"}',  # invalid UTF-8
    b'{"_p": "u1", "_t": "soon", "_n": "x"}',  # timestamp not an integer
)


def _value(rng: random.Random, name_index: int) -> object:
    kind = name_index % 5
    if kind == 0:
        return rng.randint(0, 10_000)
    if kind == 1:
        return round(rng.uniform(0, 1000), 2)
    if kind == 2:
        return (
            f"https://www.example.com/products/{rng.randint(1, 50_000)}?utm_source=newsletter"
            f"&utm_medium=email&utm_campaign=autumn-{rng.randint(1, 99)}&ref=home%2Fbanner"
        )
    if kind == 3:
        return str(rng.randint(1, 500))  # a numeric string
    return rng.choice(
        [
            "Gold",
            "Silver",
            "gold",
            "Enterprise plan",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537",
        ]
    )


def generate_lines(lines: int, seed: int = 42) -> bytes:
    """``lines`` lines of KM JSON, the same bytes for the same arguments."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(EVENTS))]
    events = rng.choices(EVENTS, weights=weights, k=lines)
    out = bytearray()
    for i in range(lines):
        roll = rng.random()
        if roll < 0.005:
            out += INVALID_KINDS[i % len(INVALID_KINDS)] + b"\n"
            continue
        person = f"user{rng.randrange(PEOPLE)}@example.com"
        record: dict[str, object] = {"_p": person, "_t": START_TS + i // 10}
        if roll < 0.025:
            record["_p2"] = f"anon-{rng.randrange(10 * PEOPLE):x}"
        elif roll < 0.125:
            for index in rng.sample(range(len(PROPERTIES)), rng.randint(2, 6)):
                record[PROPERTIES[index]] = _value(rng, index)
        else:
            record["_n"] = events[i]
            for index in rng.sample(range(len(PROPERTIES)), rng.randint(1, 5)):
                record[PROPERTIES[index]] = _value(rng, index)
        out += orjson.dumps(record) + b"\n"
    return bytes(out)


def write_file(path: Path, lines: int, seed: int = 42, block: int = 200_000) -> int:
    """Write ``lines`` lines in blocks (bounded memory); returns the size in bytes."""
    with path.open("wb") as handle:
        for start in range(0, lines, block):
            handle.write(generate_lines(min(block, lines - start), seed + start))
    return path.stat().st_size


def write_invalid_file(path: Path, size_bytes: int) -> int:
    """About ``size_bytes`` of lines that all break a rule (each kind in turn, padded to
    realistic lengths); returns the number of lines."""
    pad = b" " * 120
    block = b"".join(kind + pad + b"\n" for kind in INVALID_KINDS)
    lines_per_block = len(INVALID_KINDS)
    repeats = max(1, size_bytes // len(block))
    with path.open("wb") as out:
        for _ in range(repeats // 1000):
            out.write(block * 1000)
        out.write(block * (repeats % 1000))
    return repeats * lines_per_block
