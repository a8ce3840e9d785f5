"""The job detail shows each sharded round's role (author or member, the shards this node
aggregated and recomputed) and its download by phase (docs/protocol.md, 8.6)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from gfl_console.detail import JobDetailScreen

SHARDED = {
    "mode": "sharded",
    "role": "author",
    "shards": 7,
    "aggregated": [1, 4],
    "recomputed": [6],
    "bytes_manifests": 1_350,
    "bytes_shards": 3 * 2**20,
    "bytes_settled": 2 * 2**20,
    "bytes_recomputed": 2**19,
    "bytes_received": 1_350 + 5 * 2**20 + 2**19,
}


async def _settle(pilot: Any, condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the screen did not settle"
        await pilot.pause(0.05)


@pytest.mark.anyio
async def test_a_sharded_round_shows_its_role_and_bytes_per_phase(canned_app) -> None:
    app = canned_app()
    async with app.run_test(size=(160, 40)) as pilot:
        await _settle(pilot, lambda: app.jobs is not None)
        await pilot.press("j", "enter")
        await _settle(pilot, lambda: isinstance(app.screen, JobDetailScreen) and app.screen.checks)
        screen = app.screen
        assert isinstance(screen, JobDetailScreen) and screen.detail is not None
        detail = dict(screen.detail)
        rounds = [dict(r) for r in detail["rounds_detail"]]
        rounds[1]["metrics"] = {**rounds[1]["metrics"], **SHARDED}
        rounds[2]["metrics"] = {**rounds[2]["metrics"], "mode": "all"}
        detail["rounds_detail"] = rounds
        screen.show(detail, list(screen.checks.values()))  # type: ignore[arg-type]
        await pilot.pause(0.1)

        table = screen.query_one("#detail-rounds")
        columns = [str(c.label) for c in table.columns.values()]
        role, fetched = columns.index("Role"), columns.index("Fetched")
        row = table.get_row_at(1)
        assert str(row[role]) == "author · agg 1,4 · re 6"
        assert str(row[fetched]) == (
            "5.5 MiB (manifests 1.3 KiB · shards 3.0 MiB · settled 2.0 MiB · recomputed 512.0 KiB)"
        )
        row = table.get_row_at(2)
        assert str(row[role]) == "all-to-all" and str(row[fetched]) == "10.7 KiB"
