"""`gfl up` with a lying aggregation: run as ``python lying_node.py up --home DIR``.

The node is honest in everything but the first round it aggregates whose updates are its
own (so that it may vote) and at least two others' (so that the honest votes are a
majority): there it moves every weight of the model the round's updates produce, and votes
for that model with the mask an honest node would use. It votes the moment it has
aggregated, never riding on its next update; and when its lie comes too late to count (the
honest majority decided the round and the next one closed: the chain refuses the vote) it
lies again in the next such round, since a lie never recorded is never seen. A malicious
node is any program that speaks the protocol; this one is the real node with two functions
replaced.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gfl.fl.rounds import Update
from gfl.node.datadir import DataDir
from gfl.scheduler import aggregation, runner
from gfl.scheduler.ports import LedgerRefused

_me: list[str] = []  # this node's address
_lie: dict[str, bool] = {"told": False, "recorded": False}


def lying_aggregate(
    spec: Any, params: Any, state: Any, updates: Sequence[Update], *rest: Any
) -> aggregation.RoundModel:
    model = aggregation.aggregate(spec, params, state, updates, *rest)
    if _lie["recorded"] or len(updates) < 3 or all(u.author.lower() != _me[0] for u in updates):
        return model
    _lie["told"] = True
    moved = {k: (v + np.float32(0.5)).astype(v.dtype) for k, v in model.params.items()}
    return aggregation.RoundModel(moved, model.state, model.mask, model.excluded, model.used)


_aggregate = runner.JobRunner._aggregate


async def aggregate_and_vote(self: runner.JobRunner, st: Any) -> None:
    _lie["told"] = False
    await _aggregate(self, st)
    ballot, self.ballot = self.ballot, None
    if ballot is None:
        return
    try:
        await self.ledger.vote(ballot)
    except LedgerRefused:
        return  # too late: the round was decided without us
    _lie["recorded"] = _lie["told"]


if __name__ == "__main__":
    defaults = runner.JobRunner.__init__.__kwdefaults__
    assert defaults is not None and "aggregate" in defaults, "JobRunner takes no aggregate"
    defaults["aggregate"] = lying_aggregate
    runner.JobRunner._aggregate = aggregate_and_vote  # type: ignore[method-assign]
    home = Path(sys.argv[sys.argv.index("--home") + 1])
    _me.append(DataDir(home).load_identity().eth_address.lower())

    from gfl.cli.main import main

    raise SystemExit(main())
