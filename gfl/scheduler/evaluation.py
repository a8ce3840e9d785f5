"""Testing each new global model on the node's own test data, off the critical path: it runs
beside the next round, one at a time, and its figures are recorded when they are ready."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import trio

from gfl.fl.data import ArrayDataset
from gfl.fl.spec import JobSpec


class Evaluator:
    """One job's evaluations on this node."""

    def __init__(
        self,
        spec: JobSpec,
        device: str,
        record: Callable[[int, dict[str, Any]], None],
        event: Callable[..., None],
    ) -> None:
        self._spec = spec
        self._device = device
        self._record = record
        self._event = event
        self._limiter = trio.CapacityLimiter(1)

    def soon(
        self,
        nursery: trio.Nursery,
        r: int,
        params: Mapping[str, np.ndarray],
        test: ArrayDataset | None,
    ) -> None:
        """Evaluate M_{r+1} (as round r's figures) in ``nursery``, when there is test data."""
        if test is not None:
            nursery.start_soon(self._evaluate, r, params, test)

    async def _evaluate(self, r: int, params: Mapping[str, np.ndarray], test: ArrayDataset) -> None:
        from gfl.fl.trainer import evaluate

        async with self._limiter:
            t0 = time.monotonic()
            out = await trio.to_thread.run_sync(
                lambda: evaluate(self._spec, params, test, device=self._device)
            )
        self._record(r, {**out, "t_eval_s": round(time.monotonic() - t0, 4)})
        self._event("round_evaluated", round=r, accuracy=out.get("accuracy"), loss=out.get("loss"))
