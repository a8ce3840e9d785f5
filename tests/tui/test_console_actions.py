"""Console actions against real nodes, through the Pilot: a cancel asks first, the Publish
pane takes typed text, the Peers pane names each peer's address and direction."""

from __future__ import annotations

from typing import Any

import pytest
from gfl_console.app import ConsoleApp
from gfl_console.confirm import ConfirmScreen
from gfl_console.detail import JobDetailScreen
from gfl_console.link import LinkState
from gfl_console.peers import PeersTable
from textual.widgets import Input, TabbedContent

from gfl.node.config import update_config
from gfl.node.datadir import DataDir

pytestmark = pytest.mark.anyio

SIZE = (100, 32)
IDLE_JOB = """\
name = "to-cancel"
model = "mlp"
dataset = "digits"
rounds = 3
min_updates = 1
round_timeout = 30
max_samples = 1000

[model_kwargs]
in_features = 64
hidden = 16

[admission]
bond = "0.001 ether"
"""


def console_for(node: Any) -> ConsoleApp:
    info = DataDir(node.home).read_api_info()
    return ConsoleApp(info.host, info.port, DataDir(node.home).read_token())


async def test_cancel_asks_first(init_home, start_node, wait_until) -> None:
    node = start_node(init_home("owner"))
    with node.client(timeout=30) as client:
        job_id = client.publish(toml=IDLE_JOB, participate=False)["job_id"]
    app = console_for(node)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.CONNECTED)
        app.open_job(job_id)
        screen = await wait_until(
            pilot, lambda: app.screen if isinstance(app.screen, JobDetailScreen) else None
        )
        await wait_until(pilot, lambda: screen.detail is not None)

        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")  # no: the job goes on
        await wait_until(pilot, lambda: app.screen is screen)
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is screen)
        with node.client(timeout=30) as client:
            assert client.job(job_id)["status"] == "active"

        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")

        def cancelled() -> bool:
            with node.client(timeout=30) as client:
                return client.job(job_id)["status"] == "cancelled"

        await wait_until(pilot, cancelled)


async def test_publish_pane_takes_a_typed_path(free_port, wait_until) -> None:
    """Typing a path at once must not switch panes (j, l, o, p are shortcuts elsewhere)."""
    app = ConsoleApp("127.0.0.1", free_port(), "no node needed")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        tabs = app.query_one(TabbedContent)
        await wait_until(pilot, lambda: tabs.active == "publish")
        await pilot.press(*"jobs/plot.toml")
        assert tabs.active == "publish"
        path = app.query_one("#publish-path", Input)
        assert path.value == "jobs/plot.toml" and app.focused is path
        await pilot.press("escape", "j")  # Esc gives the keys back
        assert tabs.active == "jobs"
        await pilot.click("Tab#--content-tab-publish")  # the mouse focuses the box too
        await wait_until(pilot, lambda: app.focused is path)


async def test_peers_pane_shows_address_and_direction(init_home, start_node, wait_until) -> None:
    first = start_node(init_home("a"))
    home = init_home("b")
    update_config(DataDir(home).config_path, "net", bootstrap=[first.listen_addrs[0]])
    second = start_node(home)
    app = console_for(second)  # the node that dialled: its peer is outbound
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.CONNECTED)
        await pilot.press("p")
        table = app.query_one(PeersTable)
        await wait_until(pilot, lambda: table.row_count == 1)
        cells = [str(c) for c in table.get_row_at(0)]
        assert cells[1] == first.status["address"][:12] + "…", cells
        assert cells[2] == "out", cells
