"""The test seams in ``kmdagster.faults``: a hold point waits, for its own source only,
until its release file exists; an unknown point is refused when armed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kmdagster.faults import armed_crash_point, armed_hold_point


def test_a_hold_point_holds_its_source_until_released(tmp_path: Path) -> None:
    release = tmp_path / "release"
    hold_point = armed_hold_point(f"import.chunk_committed:orders:{release}")
    hold_point("import.chunk_committed", "accounts")  # another source passes
    hold_point("import.chunk_read", "orders")  # so does another point
    held = threading.Thread(target=hold_point, args=("import.chunk_committed", "orders"))
    held.start()
    held.join(timeout=0.5)
    assert held.is_alive(), "the hold point let its source through before the release"
    release.touch()
    held.join(timeout=60)
    assert not held.is_alive()


@pytest.mark.parametrize("arm", [armed_crash_point, armed_hold_point])
def test_an_unknown_point_is_refused(arm: object, tmp_path: Path) -> None:
    spec = "import.nowhere:1" if arm is armed_crash_point else f"import.nowhere:x:{tmp_path}"
    with pytest.raises(ValueError, match="import.nowhere"):
        arm(spec)  # type: ignore[operator]
