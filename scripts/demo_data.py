"""Sample KISSmetrics files for the local demo bucket: a few hours of realistic traffic.

Deterministic. One file per hour, each a few hundred lines with a small share of bad
lines; one hour with many rejects (its reject_rate check warns) and one hour large enough
that the demo's time budget needs two runs or more to import it.
"""

from __future__ import annotations

import json
import random

EVENTS = ["Signed Up", "Viewed Page", "Added to Cart", "Purchased", "signed up"]
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
            event = {"_p": person, "_t": ts, "_n": rng.choice(EVENTS)}
            if rng.random() < 0.5:
                event["URL"] = f"https://example.com/p/{rng.randint(1, 50)}"
                event["Amount"] = round(rng.uniform(5, 200), 2)
            out.append(json.dumps(event))
    return ("\n".join(out) + "\n").encode()


def demo_key(seed: int) -> str:
    return f"accounts.{DEMO_START + seed * 3_600}.json"


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
