"""The console against a real node process, driven through Textual's Pilot."""

from __future__ import annotations

import io
from typing import Any

import pytest
from gfl_console.app import ConsoleApp
from gfl_console.detail import JobDetailScreen
from gfl_console.help import HelpScreen
from gfl_console.jobs import JobsTable
from gfl_console.link import LinkState
from gfl_console.log import EventLog
from gfl_console.publish import PublishPane
from rich.console import Console
from textual.widgets import DataTable, ProgressBar, Static, TabbedContent

from gfl.node.config import update_config
from gfl.node.datadir import DataDir

pytestmark = pytest.mark.anyio

SIZE = (100, 32)


def console_for(node: Any, token: str | None = None) -> ConsoleApp:
    info = DataDir(node.home).read_api_info()
    return ConsoleApp(info.host, info.port, token or DataDir(node.home).read_token())


def types(events: Any) -> set[str]:
    return {e["type"] for e in events}


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
        # the job service's counters, read where the node puts them (status["jobs"])
        overview = text_of(app, "#overview-body")
        assert "Alarms" in overview and "Rejected" in overview, overview
        tabs = app.query_one(TabbedContent)
        for key, pane in (("p", "peers"), ("j", "jobs"), ("l", "log"), ("o", "overview")):
            await pilot.press(key)
            assert tabs.active == pane
        await pilot.click("Tab#--content-tab-jobs")  # the mouse works too
        assert tabs.active == "jobs"
        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

        # the log: live events from the node, narrowed by the filter box
        await pilot.press("slash")
        assert tabs.active == "log" and app.focused.id == "log-filter"
        log = app.query_one(EventLog)
        await wait_until(pilot, lambda: {"node.started", "chain.connected"} <= types(log.events))
        await pilot.press(*"node.started")
        assert types(log.shown()) == {"node.started"}
        await pilot.press("escape", "o")  # Esc leaves the text box, the keys work again
        assert tabs.active == "overview"

        titles = {c.title for c in app.get_system_commands(app.screen)}
        for pane in ("overview", "peers", "jobs", "log", "publish"):
            assert f"Show {pane}" in titles
        assert {"Refresh", "Help", "Filter log", "Toggle dark/light"} <= titles


async def test_wrong_token_is_named(init_home, start_node, wait_until) -> None:
    node = start_node(init_home("a"))
    app = console_for(node, token="not-the-token")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.UNAUTHORIZED)
        assert "refused the API token" in text_of(app, "#link")
        assert "refused the API token" in text_of(app, "#overview-body")
        assert app.jobs is None and app.node_status is None


async def test_node_down_then_retrying(free_port, wait_until) -> None:
    app = ConsoleApp("127.0.0.1", free_port(), "whatever")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.DOWN)
        # the bar is redrawn on the next refresh after the state changes: wait for its text
        await wait_until(pilot, lambda: "retrying" in text_of(app, "#link"))
        assert "no node is running at 127.0.0.1:" in text_of(app, "#link")
        assert "gfl up" in text_of(app, "#overview-body")


async def test_link_news_after_the_widgets_are_gone_is_no_crash(free_port) -> None:
    """While the console closes its link task can still report: seen as a crash in CI."""
    from gfl_console.link import LinkStatus

    app = ConsoleApp("127.0.0.1", free_port(), "whatever")
    async with app.run_test(size=SIZE):
        await app.query_one("#link").remove()
        await app.query_one("#overview-pane").remove()
        await app.query_one(EventLog).remove()
        # the handlers, called as the message loop would: an exception fails the test here
        app.on_console_app_link_changed(app.LinkChanged(LinkStatus(LinkState.CONNECTED, "up")))
        app.on_console_app_link_changed(app.LinkChanged(LinkStatus(LinkState.DOWN, "gone")))
        event = {"seq": 1, "ts": 0.0, "type": "job.joined", "data": {"job_id": "ab" * 32}}
        app.on_console_app_node_event(app.NodeEvent(event))
        assert app.link_status.message == "gone"
        assert app.return_code is None and app.is_running


async def test_reconnects_when_the_node_restarts(
    init_home, start_node, free_port, wait_until
) -> None:
    home = init_home("a")
    update_config(DataDir(home).config_path, "api", port=free_port())  # the same port after restart
    node = start_node(home)
    app = console_for(node)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.CONNECTED)
        first_pid = await wait_until(pilot, lambda: app.node_status and app.node_status["pid"])
        await wait_until(pilot, lambda: any(e["type"] == "node.started" for e in log_of(app)))
        node.stop()
        await wait_until(pilot, lambda: app.link_status.state is LinkState.DOWN)
        # same datadir, same API port: the console finds the new process by itself
        restarted = start_node(home)
        await wait_until(pilot, lambda: app.link_status.state is LinkState.CONNECTED, timeout=90)
        pid = restarted.status["pid"]
        await wait_until(pilot, lambda: app.node_status and app.node_status["pid"] == pid)
        assert restarted.status["pid"] != first_pid
        types = [e["type"] for e in log_of(app)]
        assert "console" in types  # "the node restarted" marker
        # the new process's own events are replayed from its start, not skipped
        assert types.count("node.started") == 2


async def click_publish(pilot: Any, wait_until: Any) -> None:
    """Click Publish, as a user would: not within the button's 0.2 s press animation."""
    button = pilot.app.query_one("#publish-go")
    await wait_until(pilot, lambda: not button.has_class("-active"))
    assert await pilot.click(button)


JOB_TOML = """\
name = "tui-demo"
model = "mlp"
dataset = "digits"
rounds = 4
min_updates = 1
round_timeout = 30
local_epochs = 20  # rounds of a second or so: the screen must see one before the end
batch_size = 32
lr = 0.05
seed = 1
max_samples = 2000

[model_kwargs]
in_features = 64
hidden = 16

[admission]
bond = "0.001 ether"
"""


async def test_publish_from_the_form_and_follow_the_rounds(
    training_home, start_node, wait_until
) -> None:
    node = start_node(training_home)
    app = console_for(node)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.CONNECTED)
        await pilot.press("n")
        pane = app.query_one(PublishPane)
        error = app.query_one("#publish-error", Static)

        pane.text = 'name = "broken'
        await click_publish(pilot, wait_until)
        await wait_until(pilot, lambda: error.display)
        assert "not valid TOML" in text_of(app, "#publish-error")

        pane.text = 'name = "x"\nrounds = 2\n'  # valid TOML, but not a job: the node says why
        await click_publish(pilot, wait_until)
        await wait_until(pilot, lambda: "model" in text_of(app, "#publish-error"))
        assert error.display
        assert app.jobs == []

        pane.text = JOB_TOML
        await click_publish(pilot, wait_until)
        await wait_until(pilot, lambda: app.query_one(TabbedContent).active == "jobs")
        assert not error.display
        table = app.query_one(JobsTable)
        await wait_until(pilot, lambda: table.row_count == 1)
        job_id = table.selected_job
        assert job_id and app.jobs and app.jobs[0]["name"] == "tui-demo"

        await pilot.press("enter")  # the jobs table has focus after publishing
        screen = await wait_until(
            pilot, lambda: app.screen if isinstance(app.screen, JobDetailScreen) else None
        )
        assert screen.job_id == job_id
        bar = screen.query_one("#detail-bar", ProgressBar)
        seen: list[float] = []

        def finished() -> bool:
            seen.append(bar.progress)
            return bar.progress == 4 and screen.query_one("#detail-rounds").row_count == 4

        await wait_until(pilot, finished, timeout=180)
        assert min(seen) < 4, "the screen only ever showed the finished job"
        assert "round 4/4" in text_of(screen, "#detail-round")
        rounds = screen.query_one("#detail-rounds", DataTable)
        assert [str(rounds.get_row_at(i)[0]) for i in range(4)] == ["1", "2", "3", "4"]
        await wait_until(pilot, lambda: all(c.get("verified") for c in screen.checks.values()))
        assert len(screen.checks) == 4
        assert screen.query_one("#detail-commitments").row_count >= 8  # 4 updates + 4 models
        assert "sent " in text_of(screen, "#detail-traffic")
        await pilot.press("escape")
        assert not isinstance(app.screen, JobDetailScreen)
        await wait_until(pilot, lambda: app.jobs and app.jobs[0]["status"] == "finished")
