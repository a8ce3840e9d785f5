"""Joining and leaving a job from its detail screen, through the Pilot, against a real node:
`a` joins (a refusal says why), `x` asks first, then leaves."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from gfl_console.app import ConsoleApp
from gfl_console.confirm import ConfirmScreen
from gfl_console.detail import JobDetailScreen
from gfl_console.link import LinkState
from support import local_config

from gfl.node.datadir import DataDir

pytestmark = pytest.mark.anyio

SIZE = (100, 32)
JOB = """\
name = "{name}"
model = "mlp"
dataset = "{dataset}"
rounds = 50
min_updates = 1
round_timeout = 600
local_epochs = 20
batch_size = 8
max_samples = 5000

[admission]
bond = "0.001 ether"

[model_kwargs]
in_features = 64
hidden = 64
"""


def _job(node: Any, name: str, dataset: str = "digits") -> str:
    with node.client(timeout=60) as client:
        toml = JOB.format(name=name, dataset=dataset)
        return str(client.publish(toml=toml, participate=False)["job_id"])


def _role(node: Any, job_id: str) -> tuple[str, bool]:
    with node.client(timeout=30) as client:
        job = client.job(job_id)
    return job["role"], job["running"]


async def _detail(app: ConsoleApp, pilot: Any, wait_until: Any, job_id: str) -> JobDetailScreen:
    app.open_job(job_id)
    screen = await wait_until(
        pilot,
        lambda: (
            app.screen
            if isinstance(app.screen, JobDetailScreen) and app.screen.job_id == job_id
            else None
        ),
    )
    await wait_until(pilot, lambda: screen.detail is not None)
    return screen


async def test_join_then_leave_from_the_detail_screen(init_home, start_node, wait_until) -> None:
    config = dataclasses.replace(local_config(), data={"digits": ""})
    node = start_node(init_home("console", config=config))  # auto_join off: jobs wait for us
    job_id, elsewhere = _job(node, "by-hand"), _job(node, "needs-mnist", "mnist")
    assert _role(node, job_id) == ("owner", False)
    info = DataDir(node.home).read_api_info()
    app = ConsoleApp(info.host, info.port, DataDir(node.home).read_token())
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.link_status.state is LinkState.CONNECTED)

        await _detail(app, pilot, wait_until, elsewhere)
        await pilot.press("a")
        refusal = await wait_until(
            pilot, lambda: [n for n in app._notifications if n.title == "Join refused"]
        )
        assert "this node has no dataset 'mnist' in [data]" in refusal[0].message
        await pilot.press("escape")

        screen = await _detail(app, pilot, wait_until, job_id)
        await pilot.press("a")
        await wait_until(pilot, lambda: _role(node, job_id) == ("participant", True))
        await wait_until(pilot, lambda: "active" in str(screen.query_one("#detail-title").render()))

        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")  # no: it keeps training
        await wait_until(pilot, lambda: app.screen is screen)
        assert _role(node, job_id) == ("participant", True)
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: _role(node, job_id) == ("observer", False))
