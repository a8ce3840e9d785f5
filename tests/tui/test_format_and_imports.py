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


def test_the_console_imports_no_node_layers() -> None:
    code = (
        "import sys, gfl_console, gfl_console.app\n"
        "heavy = ('libp2p', 'web3', 'torch', 'trio',\n"
        "         'gfl.net', 'gfl.chain', 'gfl.fl', 'gfl.node.node')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


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
    assert text.startswith("job.round_finished job_id=abababababab… round=2")
    assert "accuracy=50.0%" in text and "loss=1.25" in text
    assert matches(event, "") and matches(event, "ROUND_finished abab")
    assert not matches(event, "round_finished divergence")
    assert event_level("job.divergence") == "error"
    assert event_level("peer_disconnected") == "warning"
    assert event_level("job.joined") == "info"
