"""The console against a real node process, driven through Textual's Pilot."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console
from textual.widgets import Static, TabbedContent

from gfl.datadir import DataDir
from gfl.tui.app import ConsoleApp
from gfl.tui.help import HelpScreen
from gfl.tui.log import EventLog
from gfl.tui.link import LinkState

pytestmark = pytest.mark.anyio

SIZE = (100, 32)


def console_for(node: Any, token: str | None = None) -> ConsoleApp:
    info = DataDir(node.home).read_api_info()
    return ConsoleApp(info.host, info.port, token or DataDir(node.home).read_token())


def log_of(app: ConsoleApp) -> list[Any]:
    return list(app.query_one(EventLog).events)


def text_of(app: Any, selector: str) -> str:
    """What a Static shows, as plain text (Rich renderables included)."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(app.query_one(selector, Static).content)
    return console.export_text()


async def test_navigation_and_overview(init_home, start_node, wait_until) -> None:
    node = start_node(init_home("a"))
    app = console_for(node)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.CONNECTED)
        await wait_until(pilot, lambda: node.peer_id in text_of(app, "#overview-body"))
        tabs = app.query_one(TabbedContent)
        for key, pane in (("p", "peers"), ("j", "jobs"), ("l", "log"), ("o", "overview")):
            await pilot.press(key)
            assert tabs.active == pane
        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_wrong_token_is_named(init_home, start_node, wait_until) -> None:
    node = start_node(init_home("a"))
    app = console_for(node, token="not-the-token")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.UNAUTHORIZED)
        assert "refused the API token" in text_of(app, "#link")
        assert "refused the API token" in text_of(app, "#overview-body")
        assert app.jobs is None and not app.node_status


async def test_node_down_then_retrying(free_port, wait_until) -> None:
    app = ConsoleApp("127.0.0.1", free_port(), "whatever")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.DOWN, timeout=10)
        bar = text_of(app, "#link")
        assert "no node is running at 127.0.0.1:" in bar and "retrying" in bar
        assert "gfl up" in text_of(app, "#overview-body")


async def test_reconnects_when_the_node_restarts(init_home, start_node, wait_until) -> None:
    home = init_home("a")
    node = start_node(home)
    app = console_for(node)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.CONNECTED)
        first_pid = app.node_status.get("pid") or await wait_until(
            pilot, lambda: app.node_status.get("pid")
        )
        await wait_until(pilot, lambda: any(e["type"] == "node.started" for e in log_of(app)))
        node.stop()
        await wait_until(pilot, lambda: app.link_status.state is LinkState.DOWN)
        # same datadir, same API port: the console finds the new process by itself
        restarted = start_node(home)
        await wait_until(pilot, lambda: app.link_status.state is LinkState.CONNECTED, timeout=40)
        await wait_until(pilot, lambda: app.node_status.get("pid") == restarted.status["pid"])
        assert restarted.status["pid"] != first_pid
        types = [e["type"] for e in log_of(app)]
        assert "console" in types  # "the node restarted" marker
        # the new process's own events are replayed from its start, not skipped
        assert types.count("node.started") == 2
