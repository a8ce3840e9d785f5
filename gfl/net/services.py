"""py-libp2p's services run by a manager that finds a new task's parent without a search.

``TrioManager.run_task`` makes the task that calls it the new task's parent, and finds
that task (``_find_parent_task``) by walking every task the manager runs, on every call.
Pubsub calls it once for every message it receives (``push_msg``), from a stream handler,
which is none of its tasks: each message walked the whole tree for nothing (~6 % of a
sharded 32-node round's Python time, docs/libp2p.md 19). `IndexedTrioManager` keeps its
running function tasks by their trio task, so the answer is one dict lookup, the same one
the walk gives. `background_service` is the library's ``background_trio_service`` with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.tools.anyio_service.trio_manager import TrioManager
from libp2p.tools.anyio_service.trio_tasks import FunctionTask


class IndexedTrioManager(TrioManager):
    """The library's manager, with the function tasks it runs indexed by trio task."""

    def __init__(self, service: Any) -> None:
        super().__init__(service)
        self._running: dict[trio.lowlevel.Task, FunctionTask] = {}

    def _find_parent_task(self, trio_task: trio.lowlevel.Task) -> Any:
        # the walk's answer: the started function task of this manager running as
        # ``trio_task`` (a task runs in the trio task of its `_run_and_manage_task`)
        return self._running.get(trio_task)

    async def _run_and_manage_task(self, task: Any) -> None:
        if not isinstance(task, FunctionTask):  # (a child service is no one's parent)
            await super()._run_and_manage_task(task)
            return
        me = trio.lowlevel.current_task()
        self._running[me] = task
        try:
            await super()._run_and_manage_task(task)
        finally:
            del self._running[me]


@asynccontextmanager
async def background_service(service: Any) -> AsyncIterator[TrioManager]:
    """Run ``service`` in the background for the block (``background_trio_service``)."""
    async with trio.open_nursery() as nursery:
        manager = IndexedTrioManager(service)
        service._manager = manager
        nursery.start_soon(manager.run)
        await manager.wait_started()
        try:
            yield manager
        finally:
            await manager.stop()
