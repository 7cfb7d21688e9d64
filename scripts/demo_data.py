"""Sample KISSmetrics files for the local demo bucket (deterministic, a few hundred lines)."""

from __future__ import annotations

import json
import random

EVENTS = ["Signed Up", "Viewed Page", "Added to Cart", "Purchased", "signed up"]
PLANS = ["Gold", "Silver", "gold", "Free"]


def demo_file(seed: int, lines: int = 400) -> bytes:
    """A realistic mix: events with properties, property sets, aliases, a few bad lines."""
    rng = random.Random(seed)
    base = 1_764_000_000 + seed * 86_400
    out: list[str] = []
    for i in range(lines):
        person = f"user{rng.randint(1, 60)}@example.com"
        ts = base + i * 37
        roll = rng.random()
        if roll < 0.03:
            out.append(rng.choice(['{"_p": "oops", "_t": ', "[1, 2, 3]", ""]))
        elif roll < 0.05:
            out.append(json.dumps({"_p": person, "_t": ts * 1000, "_n": "Clicked"}))
        elif roll < 0.08:
            out.append(json.dumps({"_p": person, "_t": ts, "_p2": f"crm-{rng.randint(1, 999)}"}))
        elif roll < 0.2:
            out.append(json.dumps({"_p": person, "_t": ts, "Plan": rng.choice(PLANS)}))
        else:
            event = {"_p": person, "_t": ts, "_n": rng.choice(EVENTS)}
            if rng.random() < 0.5:
                event["URL"] = f"https://example.com/p/{rng.randint(1, 50)}"
                event["Amount"] = round(rng.uniform(5, 200), 2)
            out.append(json.dumps(event))
    return ("\n".join(out) + "\n").encode()


DEMO_FILES = {
    "accounts.1764000000.json": 1,
    "accounts.1764086400.json": 2,
    "accounts.1764172800.json": 3,
}
DEMO_DECOYS = {"notes.txt": b"not a KM file\n", "accounts.csv": b"_p,_t\n"}
