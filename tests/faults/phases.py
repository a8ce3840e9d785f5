"""Moments of a node's rounds, told by its events: where the fault tests strike.

Each function returns a matcher for `support.on_event` / `support.act_on_event`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Matcher = Callable[[dict[str, Any]], bool]


def phase(kind: str, min_round: int, job_id: str | None = None) -> Matcher:
    """The node's ``job.<kind>`` event for a round >= min_round (of job `job_id`, if given)."""

    def matches(ev: dict[str, Any]) -> bool:
        data = ev.get("data") or {}
        return (
            ev.get("type") == f"job.{kind}"
            and data.get("round", -1) >= min_round
            and job_id in (None, data.get("job_id"))
        )

    return matches


def voted(min_round: int) -> Matcher:
    """The node's vote on a round >= min_round is on chain: alone, or riding on its update
    for the next round."""

    def matches(ev: dict[str, Any]) -> bool:
        kind, data = ev.get("type"), ev.get("data") or {}
        if kind == "job.update_committed" and data.get("vote"):
            return data["round"] - 1 >= min_round
        return kind == "job.voted" and data.get("round", -1) >= min_round

    return matches


def training_after_full_round(min_round: int, nodes: int, job_id: str | None = None) -> Matcher:
    """The node starts training a round r >= min_round whose round r - 1 used an update of
    each of the `nodes` members. Its vote on r - 1 waits to ride on this round's update: a
    fault now keeps that vote off the chain, and only then do the others' votes still make
    a majority of r - 1's updates (a round of two, the node's and one other, would end
    void). Matches events that follow its creation only (it watches the rounds finish)."""
    full: set[int] = set()
    finished = phase("round_finished", 0, job_id)
    training = phase("training", min_round, job_id)

    def matches(ev: dict[str, Any]) -> bool:
        data = ev.get("data") or {}
        if finished(ev) and data.get("updates") == nodes:
            full.add(data["round"])
        return training(ev) and data["round"] - 1 in full

    return matches
