"""Snapshots of the main screens, fed canned data (live uptime and hashes would change).

Update after an intended change with ``pytest tests/tui --snapshot-update`` and look at
the SVGs in the report before committing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gfl_console.detail import JobDetailScreen

SMALL = (80, 24)
LARGE = (130, 42)


async def settle(pilot: Any, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the screen did not settle"
        await pilot.pause(0.05)
    await pilot.pause(0.2)


def loaded(pilot: Any) -> Callable[[], bool]:
    app = pilot.app
    return lambda: bool(app.node_status) and app.jobs is not None and bool(app.peers)


def pane(key: str) -> Callable[[Any], Any]:
    async def run_before(pilot: Any) -> None:
        await settle(pilot, loaded(pilot))
        await pilot.press(key)
        await pilot.pause(0.2)

    return run_before


def detail(theme: str | None = None) -> Callable[[Any], Any]:
    async def run_before(pilot: Any) -> None:
        await settle(pilot, loaded(pilot))
        if theme:
            pilot.app.theme = theme
        await pilot.press("j", "enter")
        await settle(
            pilot,
            lambda: isinstance(pilot.app.screen, JobDetailScreen) and bool(pilot.app.screen.checks),
        )

    return run_before


def test_overview_80x24(snap_compare, canned_app) -> None:
    assert snap_compare(canned_app(), terminal_size=SMALL, run_before=pane("o"))


def test_peers_80x24(snap_compare, canned_app) -> None:
    assert snap_compare(canned_app(), terminal_size=SMALL, run_before=pane("p"))


def test_jobs_80x24(snap_compare, canned_app) -> None:
    assert snap_compare(canned_app(), terminal_size=SMALL, run_before=pane("j"))


def test_log_80x24(snap_compare, canned_app) -> None:
    assert snap_compare(canned_app(), terminal_size=SMALL, run_before=pane("l"))


def test_publish_refused_shows_the_error_inline(snap_compare, canned_app) -> None:
    async def run_before(pilot: Any) -> None:
        await settle(pilot, loaded(pilot))
        await pilot.press("n")
        await pilot.click("#publish-go")
        await settle(pilot, lambda: pilot.app.query_one("#publish-error").display)

    assert snap_compare(canned_app(), terminal_size=SMALL, run_before=run_before)


def test_job_detail_80x24(snap_compare, canned_app) -> None:
    assert snap_compare(canned_app(), terminal_size=SMALL, run_before=detail())


def test_job_detail_large_light(snap_compare, canned_app) -> None:
    assert snap_compare(canned_app(), terminal_size=LARGE, run_before=detail("textual-light"))


def test_help_80x24(snap_compare, canned_app) -> None:
    assert snap_compare(canned_app(), terminal_size=SMALL, run_before=pane("question_mark"))


def test_wrong_token_80x24(snap_compare, canned_app) -> None:
    app = canned_app(token_refused=True)

    async def run_before(pilot: Any) -> None:
        await settle(pilot, lambda: pilot.app.link_status.state.value == "unauthorized")

    assert snap_compare(app, terminal_size=SMALL, run_before=run_before)
