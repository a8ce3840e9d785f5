"""One job's history as the chain recorded it, rebuilt from the registry's events.

The contract keeps no per-round arrays: who committed which update at which position,
who voted for what, and how each round was decided live in events. A node folds a job's
events, in order, into a `JobLog`; each event carries the job's sequence number and the
log recomputes the contract's running hash, so a gap or an altered event is noticed (the
caller then reads the job's events again) and the head can be checked against the
contract's ``logHead``. The chain decides; this only records what it decided.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gfl.chain.logchain import GENESIS, event_hash_step
from gfl.chain.proofs import candidate_key
from gfl.fl.rounds import Decision, Update, Vote

if TYPE_CHECKING:
    from gfl.chain.records import ChainEvent

KEY_PREFIX = 10  # the contract tells candidates apart by the first 80 bits of their key


class Ended(enum.Enum):
    """How a job ended on chain."""

    FINISHED = "finished"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Deal:
    """A member's shares blob for a round of secure aggregation, as the chain logged it."""

    dealer: str
    at: int  # block time
    blob: bytes


@dataclass
class RoundLog:
    """One round: its update set in chain order, its votes, its decision."""

    number: int
    updates: list[Update] = field(default_factory=list)
    closed_at: int | None = None
    seed: bytes = b""  # RoundClosed's seed: draws the shard aggregators
    votes: dict[str, Vote] = field(default_factory=dict)  # voter (lower case) -> vote
    decision: Decision | None = None
    final: Vote | None = None  # the finalized candidate, resolved from the decision's key
    decided_at: int | None = None
    deals: list[Deal] = field(default_factory=list)  # secure aggregation, in chain order
    # the members eligible for the round, with their masking keys, when its first deal came
    candidates: tuple[tuple[str, bytes], ...] = ()

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def update_of(self, address: str) -> Update | None:
        key = address.lower()
        return next((u for u in self.updates if u.author.lower() == key), None)

    def dissenters(self) -> list[str]:
        """Voters whose candidate is not the finalized one."""
        if self.final is None:
            return []
        final = self.final.candidate
        return sorted(v.voter for v in self.votes.values() if v.candidate != final)


@dataclass
class MemberLog:
    address: str
    join_round: int
    active: bool = True
    mask_key: bytes = b""  # X25519 public key for secure aggregation (zeros when unused)


class LogGap(Exception):
    """An event arrived out of sequence: the log must be read again from the chain."""


class JobLog:
    """A job's events folded in order (see the module docstring)."""

    def __init__(self, job_id: bytes) -> None:
        self.job_id = job_id
        self.seq = 0
        self.head = GENESIS
        self.owner = ""
        self.spec_hash = b""
        self.model0_hash = b""
        self.members: dict[str, MemberLog] = {}
        self.rounds: dict[int, RoundLog] = {}
        self.ended: Ended | None = None
        self.slashed: list[tuple[str, int]] = []  # (member, round)

    # -- folding ------------------------------------------------------------------------------

    def apply(self, events: Iterable[ChainEvent]) -> None:
        """Fold this job's events in; events already folded are skipped, a gap raises `LogGap`."""
        for ev in sorted(events, key=lambda e: e.seq):
            if ev.job_id != self.job_id or ev.seq <= self.seq:
                continue
            if ev.seq != self.seq + 1:
                raise LogGap(f"event {self.seq + 1} of job 0x{self.job_id.hex()[:10]} is missing")
            self._fold(ev)
            self.head = event_hash_step(self.head, ev)
            self.seq = ev.seq

    def round(self, r: int) -> RoundLog:
        if r not in self.rounds:
            self.rounds[r] = RoundLog(r)
        return self.rounds[r]

    def _fold(self, ev: ChainEvent) -> None:
        a = ev.args
        name = ev.name
        if name == "JobRegistered":
            self.owner = a["owner"]
            self.spec_hash = bytes(a["specHash"])
            self.model0_hash = bytes(a["model0Hash"])
        elif name == "Joined":
            member = MemberLog(a["member"], int(a["joinRound"]), mask_key=bytes(a["maskKey"]))
            self.members[a["member"].lower()] = member
        elif name == "Left":
            m = self.members.get(a["member"].lower())
            if m is not None:
                m.active = False
        elif name == "UpdateCommitted":
            rd = self.round(int(a["round"]))
            rd.updates.append(
                Update(a["author"], bytes(a["updateHash"]), int(a["samples"]), int(a["position"]))
            )
        elif name == "RoundClosed":
            rd = self.round(int(a["round"]))
            rd.closed_at, rd.seed = int(a["closedAt"]), bytes(a["seed"])
        elif name == "Voted":
            rd = self.round(int(a["round"]))
            rd.votes[a["voter"].lower()] = Vote(
                a["voter"], bytes(a["modelHash"]), bytes(a["mask"]), bytes(a["shardsHash"])
            )
        elif name == "RoundFinalized":
            rd = self.round(int(a["round"]))
            rd.decision, rd.decided_at = Decision.FINALIZED, int(a["at"])
            rd.final = self._resolve(rd, bytes(a["key"]))
        elif name == "RoundVoid":
            rd = self.round(int(a["round"]))
            rd.decision, rd.decided_at = Decision.VOID, int(a["at"])
        elif name == "Dealt":
            r = int(a["round"])
            rd = self.round(r)
            if not rd.deals:  # the round's candidates are fixed by its first deal
                rd.candidates = tuple(
                    (m.address, m.mask_key)
                    for m in self.members.values()
                    if m.active and m.join_round <= r and any(m.mask_key)
                )
            rd.deals.append(Deal(a["dealer"], int(a["at"]), bytes(a["blob"])))
        elif name == "Slashed":
            self.slashed.append((a["member"], int(a["round"])))
        elif name in ("JobFinished", "JobCancelled", "JobExpired"):
            self.ended = {
                "JobFinished": Ended.FINISHED,
                "JobCancelled": Ended.CANCELLED,
                "JobExpired": Ended.EXPIRED,
            }[name]

    @staticmethod
    def _resolve(rd: RoundLog, key: bytes) -> Vote | None:
        """The vote whose candidate the decision names (the contract may name it by the
        first 80 bits of its key)."""
        for v in rd.votes.values():
            if candidate_key(*v.candidate)[:KEY_PREFIX] == key[:KEY_PREFIX]:
                return Vote("", *v.candidate)
        return None

    # -- queries ------------------------------------------------------------------------------

    def is_member(self, address: str) -> bool:
        m = self.members.get(address.lower())
        return m is not None and m.active

    def eligible_for(self, address: str, r: int) -> bool:
        m = self.members.get(address.lower())
        return m is not None and m.active and m.join_round <= r

    def last_update_round(self, address: str) -> int | None:
        key = address.lower()
        rounds = [
            r for r, rd in self.rounds.items() if any(u.author.lower() == key for u in rd.updates)
        ]
        return max(rounds) if rounds else None
