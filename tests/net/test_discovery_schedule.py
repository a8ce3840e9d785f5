"""When a node asks the DHT for peers: often while starting, then less often while the
lookups find nobody new, and sooner again once a peer is lost (trio's virtual clock)."""

from __future__ import annotations

import pytest
import trio

from gfl.net.discovery import DISCOVERY_IDLE, DISCOVERY_INTERVAL, Discovery


class _Peers:
    """What `Discovery.run_lookups` reads of `gfl.net.peers.Peers`."""

    def __init__(self, peers: int, max_peers: int) -> None:
        self.count, self.full = peers, peers >= max_peers
        self.loss = trio.Event()

    def __len__(self) -> int:
        return self.count

    def clear_loss(self) -> None:
        self.loss = trio.Event()


class _Schedule(Discovery):
    """`Discovery` whose lookups find new peers until ``fruitful_until`` (virtual seconds)."""

    def __init__(self, fruitful_until: float, peers: int = 3, max_peers: int = 64) -> None:
        self._peers = _Peers(peers, max_peers)  # type: ignore[assignment]
        self.fruitful_until = fruitful_until
        self.lookups: list[float] = []

    async def discover_once(self) -> int:
        now = trio.current_time()
        self.lookups.append(round(now, 3))
        return 1 if now <= self.fruitful_until else 0

    async def run_for(self, seconds: float, lose_peer_at: float | None = None) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(self.run_lookups)
            if lose_peer_at is not None:
                await trio.sleep_until(lose_peer_at)
                self._peers.loss.set()
            await trio.sleep_until(seconds)
            n.cancel_scope.cancel()


@pytest.mark.trio
async def test_lookups_back_off_while_they_find_nobody_new(autojump_clock):
    s = _Schedule(fruitful_until=15)
    await s.run_for(500)
    assert DISCOVERY_INTERVAL == 15 and DISCOVERY_IDLE == 120
    assert s.lookups == [1, 3, 7, 15, 30, 60, 120, 240, 360, 480]


@pytest.mark.trio
async def test_lookups_that_find_peers_keep_the_interval(autojump_clock):
    s = _Schedule(fruitful_until=1000)
    await s.run_for(100)
    assert s.lookups == [1, 3, 7, 15, 30, 45, 60, 75, 90]


@pytest.mark.trio
async def test_a_lost_peer_brings_the_next_lookup_forward(autojump_clock):
    s = _Schedule(fruitful_until=15)
    await s.run_for(400, lose_peer_at=250)
    # 240, then the loss at 250: the pause is set back to 15 s from there
    assert s.lookups == [1, 3, 7, 15, 30, 60, 120, 240, 265, 295, 355]


@pytest.mark.trio
async def test_a_peer_lost_while_starting_keeps_the_quick_lookups(autojump_clock):
    s = _Schedule(fruitful_until=1000)
    await s.run_for(40, lose_peer_at=2)
    assert s.lookups == [1, 4, 8, 16, 31]  # the 2 s pause begun at 1 s starts again at 2 s


@pytest.mark.trio
async def test_no_lookups_at_the_peer_limit_or_without_peers(autojump_clock):
    full = _Schedule(fruitful_until=1000, peers=4, max_peers=4)
    await full.run_for(300)
    alone = _Schedule(fruitful_until=1000, peers=0)
    await alone.run_for(300)
    assert full.lookups == [] and alone.lookups == []
