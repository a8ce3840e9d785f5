"""`gfl up` with a lying aggregation: run as ``python lying_node.py up --home DIR``.

The node is honest in everything but the first round it aggregates whose updates are its
own (so that it may vote) and at least two others' (so that the honest votes are a
majority): there it moves every weight of the model the round's updates produce, and votes
for that model with the mask an honest node would use. A
malicious node is any program that speaks the protocol; this one is the real node with
one function replaced.
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

_me: list[str] = []  # this node's address
_lied: list[int] = []


def lying_aggregate(
    spec: Any, params: Any, state: Any, updates: Sequence[Update], *rest: Any
) -> aggregation.RoundModel:
    model = aggregation.aggregate(spec, params, state, updates, *rest)
    if _lied or len(updates) < 3 or all(u.author.lower() != _me[0] for u in updates):
        return model
    _lied.append(1)
    moved = {k: (v + np.float32(0.5)).astype(v.dtype) for k, v in model.params.items()}
    return aggregation.RoundModel(moved, model.state, model.mask, model.excluded, model.used)


if __name__ == "__main__":
    defaults = runner.JobRunner.__init__.__kwdefaults__
    assert defaults is not None and "aggregate" in defaults, "JobRunner takes no aggregate"
    defaults["aggregate"] = lying_aggregate
    home = Path(sys.argv[sys.argv.index("--home") + 1])
    _me.append(DataDir(home).load_identity().eth_address.lower())

    from gfl.cli.main import main

    raise SystemExit(main())
