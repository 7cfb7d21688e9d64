"""KM JSON sample files, deterministic: the same bytes for the same arguments.

Three shapes from one place: ``km_file`` (small, with counts the tests assert),
``demo_files`` (a few hours of traffic for ``make dev``) and ``write_file`` (realistic
volume for the benchmark). The invalid lines are the same kinds in all three.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

BASE_TS = 1_700_000_000
# How senders compress files: the real tools, at their default levels (key suffix, command).
COMPRESSION_TOOLS = {"gzip": (".gz", ["gzip", "-c", "-n"]), "zstd": (".zst", ["zstd", "-c", "-q"])}


def compressed_bytes(data: bytes, compression: str) -> bytes:
    """``data`` as the ``gzip`` or ``zstd`` tool writes it."""
    tool = COMPRESSION_TOOLS[compression][1]
    return subprocess.run(tool, input=data, capture_output=True, check=True).stdout


def compress_file(path: Path, compression: str) -> Path:
    """``path`` compressed beside it by the tool, named with the tool's suffix."""
    suffix, tool = COMPRESSION_TOOLS[compression]
    packed = path.with_name(path.name + suffix)
    with path.open("rb") as source, packed.open("wb") as out:
        subprocess.run(tool, stdin=source, stdout=out, check=True)
    return packed


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

    @property
    def rows(self) -> dict[str, int]:
        """The rows the file puts in each documented table."""
        return {
            "km_events": self.events,
            "km_properties": self.properties,
            "km_aliases": self.aliases,
            "km_rejects": self.rejects,
        }


def km_file(seed: int, repeats: int = 10, property_names: int = 0) -> KmFile:
    """``repeats`` blocks of 8 lines: 3 events (one with 2 properties), a property set,
    an alias, a blank line and two bad lines (invalid JSON, milliseconds).

    ``property_names``: the property set of each block also sets one of that many more
    property names, in turn (a file that brings the warehouse many new names at once)."""
    out: list[str] = []
    for i in range(repeats):
        person = f"user{seed}-{i}@example.com"
        ts = BASE_TS + seed * 10_000 + i
        out += [
            json.dumps({"_p": person, "_t": ts, "_n": "Signed Up"}),
            json.dumps({"_p": person, "_t": ts, "_n": "Viewed, Page", "URL": f"/p/{i}", "N": i}),
            json.dumps({"_p": person, "_t": str(ts), "_n": "Purchased"}),
            json.dumps({"_p": person, "_t": ts, "Plan": "Gold", **_more_names(i, property_names)}),
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
        properties=(3 + bool(property_names)) * repeats,
        aliases=repeats,
        rejects=2 * repeats,
        blanks=repeats,
    )


def _more_names(block: int, names: int) -> dict[str, int]:
    return {f"Attribute {block % names}": block} if names else {}


# The demo: one file per hour, a few hundred lines each with a small share of bad lines;
# hour 3 has many rejects (its reject_rate check warns) and hour 4 needs several runs.
DEMO_EVENTS = ["Signed Up", "Viewed Page", "Added to Cart", "Purchased", "signed up"]
PLANS = ["Gold", "Silver", "gold", "Free"]
DEMO_START = 1_764_460_800  # 2025-11-30 00:00 UTC: the files' hours start here
BAD_LINES = ['{"_p": "oops", "_t": ', "[1, 2, 3]", '{"_t": 1764460800, "_n": "No identity"}']


def demo_file(seed: int, lines: int = 400, bad_share: float = 0.03) -> bytes:
    """A realistic mix: events with properties, property sets, aliases, some bad lines."""
    rng = random.Random(seed)
    base = DEMO_START + seed * 3_600
    step = max(1, 3_600 // lines)
    out: list[str] = []
    for i in range(lines):
        person = f"user{rng.randint(1, 60 + lines // 20)}@example.com"
        ts = base + (i * step) % 3_600
        roll = rng.random()
        if roll < bad_share:
            out.append(rng.choice(BAD_LINES))
        elif roll < bad_share + 0.02:
            out.append(json.dumps({"_p": person, "_t": ts * 1000, "_n": "Clicked"}))
        elif roll < bad_share + 0.05:
            out.append(json.dumps({"_p": person, "_t": ts, "_p2": f"crm-{rng.randint(1, 999)}"}))
        elif roll < bad_share + 0.17:
            out.append(json.dumps({"_p": person, "_t": ts, "Plan": rng.choice(PLANS)}))
        else:
            event = {"_p": person, "_t": ts, "_n": rng.choice(DEMO_EVENTS)}
            if rng.random() < 0.5:
                event["URL"] = f"https://example.com/p/{rng.randint(1, 50)}"
                event["Amount"] = round(rng.uniform(5, 200), 2)
            out.append(json.dumps(event))
    return ("\n".join(out) + "\n").encode()


def demo_key(seed: int, stem: str = "accounts") -> str:
    """The key of the demo's hour ``seed`` (negative: the hours before the first)."""
    return f"{stem}.{DEMO_START + seed * 3_600}.json"


LARGE_SEED = 4
# seed -> (lines, share of bad lines): hour 3 is messy, hour 4 is large (about 27 MB).
DEMO_HOURS = {
    1: (400, 0.03),
    2: (900, 0.02),
    3: (600, 0.2),
    LARGE_SEED: (300_000, 0.01),
    5: (500, 0.03),
}
DEMO_FILES = {demo_key(seed): seed for seed in DEMO_HOURS}
DEMO_DECOYS = {"notes.txt": b"not a KM file\n", "accounts.csv": b"_p,_t\n"}


def demo_files() -> dict[str, bytes]:
    """Every demo file's key and content."""
    return {
        demo_key(seed): demo_file(seed, lines, bad_share)
        for seed, (lines, bad_share) in DEMO_HOURS.items()
    }


# The history the demo's second source finds: two days of small clean hours before the
# first, which its runs catch up twenty files at a time.
HISTORY_SOURCE = "history"
HISTORY_HOURS = 48


def demo_history_files() -> dict[str, bytes]:
    """Every file of the demo's history, by key, oldest hour first."""
    return {
        demo_key(seed, HISTORY_SOURCE): demo_file(seed, 200, 0.0)
        for seed in range(-HISTORY_HOURS, 0)
    }


# The benchmark's volume: Zipf-like event names, about 200 property names with mixed value
# types, long URLs, about 100k people, 2% aliases, 10% property-only lines, 0.5% invalid.
BENCH_EVENTS = [f"Event {i:02d}" for i in range(60)] + ["Signed Up", "Viewed Page", "Purchased"]
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


def _generate(
    lines: int, seed: int, fill: Callable[[random.Random, dict, float, str], None]
) -> bytes:
    """``lines`` lines: a share of invalid ones, the rest a person and a time that ``fill``
    completes (given the line's random roll and its event name)."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(BENCH_EVENTS))]
    events = rng.choices(BENCH_EVENTS, weights=weights, k=lines)
    out = bytearray()
    for i in range(lines):
        roll = rng.random()
        if roll < 0.005:
            out += INVALID_KINDS[i % len(INVALID_KINDS)] + b"\n"
            continue
        person = f"user{rng.randrange(PEOPLE)}@example.com"
        record: dict[str, object] = {"_p": person, "_t": BASE_TS + i // 10}
        fill(rng, record, roll, events[i])
        out += orjson.dumps(record) + b"\n"
    return bytes(out)


def _mixed_line(rng: random.Random, record: dict, roll: float, event: str) -> None:
    if roll < 0.025:
        record["_p2"] = f"anon-{rng.randrange(10 * PEOPLE):x}"
    elif roll < 0.125:
        for index in rng.sample(range(len(PROPERTIES)), rng.randint(2, 6)):
            record[PROPERTIES[index]] = _value(rng, index)
    else:
        record["_n"] = event
        for index in rng.sample(range(len(PROPERTIES)), rng.randint(1, 5)):
            record[PROPERTIES[index]] = _value(rng, index)


def generate_lines(lines: int, seed: int = 42) -> bytes:
    """``lines`` lines of KM JSON, the same bytes for the same arguments."""
    return _generate(lines, seed, _mixed_line)


# Properties of the property-heavy profile's lines: kinds 2 (a URL) and 4 (often a user
# agent) of ``_value``, with a short value or two beside them.
_URL_PROPERTIES = [index for index in range(len(PROPERTIES)) if index % 5 == 2]
_TEXT_PROPERTIES = [index for index in range(len(PROPERTIES)) if index % 5 == 4]
_SHORT_PROPERTIES = [index for index in range(len(PROPERTIES)) if index % 5 in (0, 1, 3)]
USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.109 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
]


def _property_heavy_line(rng: random.Random, record: dict, roll: float, event: str) -> None:
    if roll < 0.02:
        record["_p2"] = f"anon-{rng.randrange(10 * PEOPLE):x}"
        return
    if roll > 0.1:
        record["_n"] = event
    url = rng.choice(_URL_PROPERTIES)
    record[PROPERTIES[url]] = _value(rng, url)
    record[PROPERTIES[rng.choice(_TEXT_PROPERTIES)]] = rng.choice(USER_AGENTS)
    for index in rng.sample(_SHORT_PROPERTIES, rng.randint(1, 2)):
        record[PROPERTIES[index]] = _value(rng, index)


def generate_property_heavy_lines(lines: int, seed: int = 42) -> bytes:
    """``lines`` lines of about 340 bytes with 3 or 4 properties each, a long URL and a
    user agent among them (what a web tracker sends); the same bytes for the same
    arguments."""
    return _generate(lines, seed, _property_heavy_line)


PROFILES = {"mixed": generate_lines, "property_heavy": generate_property_heavy_lines}


def write_file(
    path: Path, lines: int, seed: int = 42, block: int = 200_000, profile: str = "mixed"
) -> int:
    """Write ``lines`` lines of ``profile`` in blocks (bounded memory); returns the size
    in bytes."""
    generate = PROFILES[profile]
    with path.open("wb") as handle:
        for start in range(0, lines, block):
            handle.write(generate(min(block, lines - start), seed + start))
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
