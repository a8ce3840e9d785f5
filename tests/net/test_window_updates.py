"""Yamux credit for small reads goes back in bulk, not one WINDOW_UPDATE frame per read
(gfl.net.patches, tuning 4), and bulk streams still flow."""

from __future__ import annotations

import pytest
import trio
from libp2p.stream_muxer.yamux import yamux
from net_helpers import nodes, wait_for

from gfl.net import JOBS_TOPIC, patches


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The increments of every WINDOW_UPDATE frame sent."""
    sent: list[int] = []
    original = yamux.YamuxStream.send_window_update

    async def counting(self, increment: int, skip_lock: bool = False) -> None:
        if increment > 0:
            sent.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(yamux.YamuxStream, "send_window_update", counting)
    return sent


async def _gossip(tmp_path, updates: list[int], n_msgs: int) -> int:
    """WINDOW_UPDATE frames sent while ``n_msgs`` small messages cross from a to b."""
    async with nodes(2, tmp_path) as (a, b):
        rb = await b.subscribe(JOBS_TOPIC)
        await a.subscribe(JOBS_TOPIC)
        await wait_for(lambda: a.stats()["mesh"][JOBS_TOPIC] >= 1)
        await trio.sleep(0.5)  # set-up traffic done
        before = len(updates)
        for k in range(n_msgs):  # under the library's 10 messages/s per peer and topic
            await a.publish(JOBS_TOPIC, {"v": 1, "type": "bench", "k": k})
            await trio.sleep(0.12)
        with trio.fail_after(10):
            for _ in range(n_msgs):
                await rb.receive()
        return len(updates) - before


@pytest.mark.trio
async def test_small_reads_do_not_each_return_credit(tmp_path, updates):
    assert await _gossip(tmp_path, updates, 30) <= 2


@pytest.mark.trio
async def test_the_library_alone_answers_most_small_reads(tmp_path, updates, monkeypatch):
    monkeypatch.setattr(
        yamux.YamuxStream, "_auto_tune_and_send_window_update", patches._original_window_update
    )
    assert await _gossip(tmp_path, updates, 30) >= 30
