"""The console's pure parts, and that it stays a thin client (no libp2p, web3, torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from gfl_console.format import (
    backoff,
    counts,
    event_level,
    event_text,
    human_bytes,
    human_duration,
    matches,
    percent,
    round_progress,
    short,
)

HEAVY = ("gfl", "torch", "libp2p", "web3", "trio")


def run_python(code: str, *args: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter; its stdout (a failure shows its stderr)."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_console_and_client_import_no_node_layers() -> None:
    code = (
        "import sys\n"
        "import gfl_console, gfl_console.app, gfl_console.client, gfl_console.__main__\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    assert run_python(code).strip() == "[]"


# Installed first in the child: any import of these packages fails, as on a laptop with
# only gfl-console installed.
REFUSE = f"""
import sys
from importlib.abc import MetaPathFinder

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY[:4]!r}:
            raise ModuleNotFoundError(f"{{name}} is not installed here", name=name)
        return None

sys.meta_path.insert(0, Refuse())
try:
    import gfl
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the finder did not refuse gfl")
"""

WITHOUT_GFL = """
import asyncio, sys, time
from gfl_console.app import ConsoleApp
from gfl_console.client import NodeClient
from gfl_console.home import NodeHome
from gfl_console.link import LinkState

home, pid = sys.argv[1], int(sys.argv[2])
with NodeClient.from_home(home) as client:
    status = client.status()
    assert status["pid"] == pid, status
    assert client.jobs() == []


async def console() -> None:
    target = NodeHome(home).locate()
    app = ConsoleApp(target.host, target.port, target.token)
    async with app.run_test(size=(100, 32)) as pilot:
        deadline = time.monotonic() + 60
        while not (app.node_status and app.jobs is not None):
            assert time.monotonic() < deadline, "the console never loaded the node"
            await pilot.pause(0.1)
        assert app.link_status.state is LinkState.CONNECTED
        assert app.node_status["peer_id"] == status["peer_id"]


asyncio.run(console())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("gfl", "torch", "libp2p", "web3")))
"""


def test_the_console_and_client_work_where_gfl_cannot_be_imported(init_home, start_node) -> None:
    node = start_node(init_home("a"))
    out = run_python(REFUSE + WITHOUT_GFL, str(node.home), str(node.status["pid"]))
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**20, "5.0 MiB")]
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_durations_and_numbers() -> None:
    assert human_duration(5.9) == "5s"
    assert human_duration(3725) == "1h 02m 05s"
    assert human_duration(90061) == "1d 01h 01m"
    assert percent(0.5222) == "52.2%" and percent(None) == "–"
    assert round_progress({"round": 2, "rounds": 5}) == "2/5"
    assert counts({"finished": 2, "active": 1, "error": 0}) == "active 1 · finished 2"
    assert counts({}) == "none"
    assert short("0123456789abcdef", 4) == "0123…" and short(None) == "–"


def test_backoff_doubles_then_caps() -> None:
    delays = [backoff(i) for i in range(8)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 8.0 and delays == sorted(delays)


def test_event_text_and_filter() -> None:
    event = {
        "type": "job.round_finished",
        "data": {"job_id": "ab" * 32, "round": 2, "accuracy": 0.5, "loss": 1.25},
    }
    text = event_text(event)
    # the node's round 2 (from 0, as on chain) is the third round people count
    assert text.startswith("job.round_finished job_id=abababababab… round=3")
    assert "accuracy=50.0%" in text and "loss=1.25" in text
    assert matches(event, "") and matches(event, "ROUND_finished abab")
    assert not matches(event, "round_finished divergence")
    assert event_level("job.divergence") == "error"
    assert event_level("job.state_lost") == "warning"  # it votes no more in that job
    assert event_level("peer_disconnected") == "warning"
    assert event_level("job.joined") == "info"
