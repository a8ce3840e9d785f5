"""Write docs/console.svg: the job detail screen of a live run on a real node.

    .venv/bin/python tests/tui/make_screenshot.py [docs/console.svg]

Starts a training node in a temporary datadir, publishes a job through the
console's form, opens the job and saves the screen once a few rounds are in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gfl_console.app import ConsoleApp
from gfl_console.detail import JobDetailScreen
from gfl_console.publish import TEMPLATE, PublishPane
from support import NodeProcess, gfl_command, gfl_env, local_config

from gfl.node.datadir import DataDir

SIZE = (110, 44)


async def capture(home: Path, out: Path) -> None:
    info = DataDir(home).read_api_info()
    app = ConsoleApp(info.host, info.port, DataDir(home).read_token())
    async with app.run_test(size=SIZE) as pilot:
        deadline = time.monotonic() + 120
        while app.jobs is None:
            assert time.monotonic() < deadline, "the console did not load the node"
            await pilot.pause(0.1)
        pane = app.query_one(PublishPane)
        pane.text = TEMPLATE.replace("rounds = 3", "rounds = 8")
        pane.submit()  # as the Publish button does
        while not app.jobs:
            assert time.monotonic() < deadline, f"the job was not published: {pane.error}"
            await pilot.pause(0.1)
        app.open_job(app.jobs[0]["job_id"])
        while True:
            assert time.monotonic() < deadline, "the job did not progress"
            screen = app.screen
            detail = screen.detail if isinstance(screen, JobDetailScreen) else None
            if detail and int(detail.get("round") or 0) >= 5 and screen.checks:
                break
            await pilot.pause(0.1)
        await pilot.pause(0.3)
        app.save_screenshot(filename=out.name, path=str(out.parent))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console.svg").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "node"
        config = local_config().replace("node", name="alice").replace("jobs", auto_join=True)
        DataDir(home).init(dataclasses.replace(config, data={"digits": ""}))
        log = open(Path(tmp) / "up.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            gfl_command("up", "--home", home), stdout=log, stderr=subprocess.STDOUT, env=gfl_env()
        )
        node = NodeProcess(home, proc, Path(tmp) / "up.log")
        try:
            node.wait_ready()
            asyncio.run(capture(home, out))
        finally:
            node.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
