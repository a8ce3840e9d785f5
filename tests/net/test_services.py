"""`IndexedTrioManager` gives every task the parent the library's walk over all tasks
gives: the function task that spawned it, or none when a task outside the manager (a
stream handler, as pubsub's for each message) spawns it."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from libp2p.tools.anyio_service import Service, background_trio_service

from gfl.net.services import IndexedTrioManager, background_service


class Spawner(Service):
    """Spawns a tree: a daemon that spawns children, each a grandchild; ``outside`` spawns
    from a trio task of its own, as a stream handler does."""

    def __init__(self) -> None:
        self.tree: dict[str, str | None] = {}  # task name -> its parent's name
        self.done = trio.Event()

    def _note(self, name: str) -> None:
        """The parent that run_task recorded for the task running now (found as the
        manager finds a caller: the library's walk, or our index)."""
        me = self.manager._find_parent_task(trio.lowlevel.current_task())
        assert me is not None and me.name == name
        self.tree[name] = me.parent.name if me.parent is not None else None

    async def leaf(self, name: str) -> None:
        self._note(name)
        await trio.sleep(0.05)

    async def child(self, name: str) -> None:
        self._note(name)
        self.manager.run_task(self.leaf, f"{name}.leaf", name=f"{name}.leaf")
        await trio.sleep(0.05)

    async def run(self) -> None:
        for i in range(3):
            self.manager.run_task(self.child, f"c{i}", name=f"c{i}")
        await self.done.wait()

    def outside(self, name: str) -> None:
        self.manager.run_task(self.leaf, name, name=name)


async def tree_of(background: Any) -> dict[str, str | None]:
    spawner = Spawner()
    async with background(spawner) as manager, trio.open_nursery() as nursery:
        nursery.start_soon(_from_outside, spawner)
        await trio.sleep(0.5)
        spawner.done.set()
        stats = manager.stats
    assert stats.tasks.total_count >= 7
    return spawner.tree


async def _from_outside(spawner: Spawner) -> None:
    await trio.sleep(0.1)
    spawner.outside("handler.leaf")


@pytest.mark.trio
async def test_parents_are_the_ones_the_librarys_walk_finds() -> None:
    theirs = await tree_of(background_trio_service)
    ours = await tree_of(background_service)
    assert ours == theirs
    assert ours["c0.leaf"] == "c0" and ours["handler.leaf"] is None


@pytest.mark.trio
async def test_finished_tasks_leave_the_index() -> None:
    spawner = Spawner()
    async with background_service(spawner) as manager:
        assert isinstance(manager, IndexedTrioManager)
        await trio.sleep(0.5)
        assert len(manager._running) == 1  # only the service's run is left
        spawner.done.set()
    assert manager._running == {}
