"""Comparing the model hashes the others committed with ours, round by round.

A dissenter is named whenever its commitment arrives, early or late: a round is compared
once our M_{r+1} exists, and again each time a model commitment for it reaches the chain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gfl.fl.rounds import consensus_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """One round's comparison: the majority hash (None while there is none) and whether
    this node is the odd one out."""

    majority: bytes | None
    self_diverged: bool = False


class ModelWatch:
    """The rounds to compare, and the dissenters already named (each once)."""

    def __init__(self, job_id: str, me: str, emit: Callable[..., None]) -> None:
        self._job_id = job_id
        self._me = me
        self._emit = emit  # emit("divergence", round=..., ...)
        self.mine: dict[int, bytes] = {}  # round r -> hash of the M_{r+1} this node took
        self.divergent_rounds: list[int] = []
        self._named: dict[int, set[str]] = {}
        self._pending: set[int] = set()

    def took(self, r: int, model_hash: bytes) -> None:
        """This node now holds M_{r+1} with ``model_hash``: compare round r."""
        self.mine[r] = model_hash
        self._pending.add(r)

    def committed(self, r: int) -> None:
        """A model commitment for round r reached the chain: compare again."""
        self._pending.add(r)

    def due(self, current: int) -> list[int]:
        """Rounds to compare now (those before ``current``, whose M_{r+1} we hold)."""
        ready = sorted(r for r in self._pending if r < current)
        self._pending.difference_update(ready)
        return ready

    def again(self, r: int) -> None:
        self._pending.add(r)

    def judge(self, r: int, models: Sequence[tuple[str, bytes]]) -> Verdict:
        """Compare round r's committed model hashes with ours; raise the alarm for any
        dissenter not named yet."""
        mine = self.mine.get(r)
        verdict = consensus_of(dict(models))
        majority = verdict.majority
        if mine is None or majority is None:
            return Verdict(majority)
        self_diverged = majority != mine
        dissent = set(verdict.dissenters) | ({self._me} if self_diverged else set())
        named = self._named.setdefault(r, set())
        if dissent <= named:
            return Verdict(majority, self_diverged)
        named |= dissent
        if r not in self.divergent_rounds:
            self.divergent_rounds.append(r)
        self._emit(
            "divergence",
            round=r,
            mine=mine.hex(),
            majority=majority.hex(),
            dissenters=list(verdict.dissenters),
            self_diverged=self_diverged,
        )
        log.warning(
            "job %s round %d: model hashes disagree (majority %s, dissenters %s)",
            self._job_id[:10],
            r,
            majority.hex()[:12],
            ", ".join(verdict.dissenters) or "this node",
        )
        return Verdict(majority, self_diverged)
