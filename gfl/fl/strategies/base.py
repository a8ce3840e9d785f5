"""The strategy interface and the small deterministic array helpers every strategy shares.

Every node aggregates the same committed updates independently and compares model hashes,
so aggregation must be bit-for-bit reproducible: updates are put in one canonical order
(sorted by address), math is done in float64 with elementwise operations in a fixed order
(no BLAS, no multithreaded reductions); the reduced delta is rounded to each tensor's
precision (an aggregate of float32 updates is a float32 update, half the bytes of a float64
one when a sharded round sends it) and the new model cast back at the end.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gfl.errors import GflError

log = logging.getLogger(__name__)

Params = dict[str, np.ndarray]


class StrategyError(GflError):
    """A strategy was misconfigured or given nothing usable to aggregate."""


@dataclass(frozen=True)
class ClientUpdate:
    """One participant's committed update: the delta from the round's global model."""

    address: str
    num_samples: int
    update: Mapping[str, np.ndarray]


def reject_reason(
    global_params: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]
) -> str | None:
    """Why an update cannot be aggregated into this model (None when it can): other
    parameter names or shapes, or non-finite values. Every node decides the same."""
    if set(update) != set(global_params):
        return "parameter names differ from the model"
    for name, g in global_params.items():
        d = np.asarray(update[name])
        if d.shape != np.shape(g):
            return f"shape of {name} differs"
        if d.dtype.kind == "f" and not np.isfinite(d).all():
            return f"non-finite values in {name}"
    return None


def canonical(
    global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
) -> list[ClientUpdate]:
    """Sort by address and drop updates that do not fit the model (same decision on every node).

    A dropped update (see `reject_reason`; also no samples or a duplicate address) is logged;
    if none is left StrategyError is raised. The node excludes such updates before, in the
    round's mask, so that nothing is dropped here silently.
    """
    seen: set[str] = set()
    ok: list[ClientUpdate] = []
    for u in sorted(updates, key=lambda u: u.address.lower()):
        key = u.address.lower()
        reason = None
        if key in seen:
            reason = "duplicate address"
        elif not isinstance(u.num_samples, int) or u.num_samples <= 0:
            reason = "no samples"
        else:
            reason = reject_reason(global_params, u.update)
        if reason:
            log.warning("ignoring update from %s: %s", u.address, reason)
            continue
        seen.add(key)
        ok.append(u)
    if not ok:
        raise StrategyError("no usable update to aggregate")
    return ok


def f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i w_i * a_i / sum_i w_i, accumulated in float64 in the given order."""
    total = math.fsum(weights)
    acc = np.zeros(np.shape(arrays[0]), dtype=np.float64)
    for a, w in zip(arrays, weights, strict=True):
        acc += f64(a) * (float(w) / total)
    return acc


def fixed_sum(x: np.ndarray) -> float:
    """Sum of all elements, the same on every machine: fixed-order block adds, then fsum."""
    flat = f64(x).reshape(-1)
    block = 1 << 16
    if flat.size <= block:
        return math.fsum(flat.tolist())
    nb = -(-flat.size // block)
    padded = np.zeros(nb * block, dtype=np.float64)
    padded[: flat.size] = flat
    rows = padded.reshape(nb, block)
    acc = rows[0].copy()
    for i in range(1, nb):
        acc += rows[i]
    return math.fsum(acc.tolist())


def reduced_dtype(dtype: np.dtype) -> np.dtype:
    """The precision of a reduced delta for a tensor of ``dtype``: its own when floating (an
    aggregate of float32 updates is a float32 update), float64 for an integer tensor."""
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def rounded(global_params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Params:
    """The delta with each tensor's values rounded to its `reduced_dtype`, held as float64
    (docs/protocol.md 6, step 4)."""
    out: Params = {}
    for name, g in global_params.items():
        out[name] = f64(f64(delta[name]).astype(reduced_dtype(np.asarray(g).dtype)))
    return out


def apply_delta(global_params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Params:
    """global + delta in float64, cast back to each parameter's dtype (integers rounded)."""
    out: Params = {}
    for name, g in global_params.items():
        g = np.asarray(g)
        v = f64(g) + delta[name]
        if g.dtype.kind in "iub":
            v = np.rint(v)
        out[name] = v.astype(g.dtype)
    return out


def sample_weighted_delta(
    global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
) -> dict[str, np.ndarray]:
    """FedAvg's float64 delta: updates weighted by sample count (updates already canonical)."""
    weights = [u.num_samples for u in updates]
    return {n: weighted_mean([u.update[n] for u in updates], weights) for n in global_params}


def num(
    kwargs: Mapping[str, Any], key: str, default: float, lo: float = -math.inf, hi: float = math.inf
) -> float:
    v = kwargs.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise StrategyError(f"strategy setting {key} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


# a setting every strategy takes: FedProx's client-side mu (the clients' proximal term)
COMMON_SETTINGS = frozenset({"mu"})


class Strategy(ABC):
    """Turns the round's global model and its committed updates into the next global model.

    Two steps: `reduce` (pure: the strategy's `combine`, rounded to each tensor's precision;
    per coordinate unless `coordinatewise` is False, so that a shard of the model reduces
    alone, which is what sharded rounds rely on) and `server_step` (the server optimizer,
    with its state); ``aggregate_delta = server_step ∘ reduce``. Deterministic given the
    same inputs and state; any server state (momentum, moments) is explicit: `state_dict()`
    returns numpy arrays and `load_state_dict` restores them exactly.
    """

    name: ClassVar[str] = ""
    allowed: ClassVar[frozenset[str]] = frozenset()
    #: whether `reduce` works coordinate by coordinate (False: Krum's whole-vector distances)
    coordinatewise: ClassVar[bool] = True
    #: whether `server_step` keeps state between rounds (a server optimizer's)
    stateful: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - self.allowed - COMMON_SETTINGS)
        if unknown:
            raise StrategyError(f"strategy {self.name} has no setting(s) {', '.join(unknown)}")
        self.kwargs = dict(kwargs)

    def aggregate(
        self, global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> Params:
        """The next global model from the current one and the round's updates (their sample
        counts are capped on chain by the job's ``max_samples``)."""
        ups = canonical(global_params, updates)
        return apply_delta(global_params, self.aggregate_delta(global_params, ups))

    def aggregate_delta(
        self, global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> dict[str, np.ndarray]:
        """The float64 step to add to the global model (updates are canonical and valid)."""
        return self.server_step(self.reduce(global_params, updates))

    def reduce(
        self, global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> dict[str, np.ndarray]:
        """The updates reduced to one float64 delta without state, rounded to each tensor's
        precision: only the names of ``global_params`` count (for a coordinatewise strategy,
        any subset of the model, e.g. one shard)."""
        return rounded(global_params, self.combine(global_params, updates))

    @abstractmethod
    def combine(
        self, global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> dict[str, np.ndarray]:
        """The strategy's own reduction of the updates to one float64 delta."""

    def server_step(self, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The server optimizer's step from the reduced delta (the identity here)."""
        return dict(delta)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise StrategyError(f"strategy {self.name} keeps no state")
