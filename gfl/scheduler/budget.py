"""One participant's privacy budget in one job: the ε its rounds of DP-SGD spent, on disk.

A round is spent once its update may leave the node, so the runner writes the account
before it publishes the update: a node killed afterwards counts that round again when it
trains it again (more ε than it may have released, never less). The account lives beside
the job's checkpoints (``models/<job>/privacy.json``), written atomically.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from gfl.fl.privacy import PrivacyAccount, PrivacyError, PrivacySettings, StepPlan, round_plan
from gfl.fl.spec import JobSpec
from gfl.identity import write_private_file
from gfl.scheduler.joblog import JobLog

log = logging.getLogger(__name__)

FILE = "privacy.json"
_SLACK = 1e-9  # ε compared to the budget: float noise in the accountant is not overspending


class PrivacyBudget:
    """What this node may still spend on a job with a ``[privacy]`` table, and what it spent."""

    def __init__(
        self, spec: JobSpec, settings: PrivacySettings, num_samples: int, path: Path
    ) -> None:
        self.settings = settings
        self.path = path
        self.plan = round_plan(
            settings, num_samples, spec.batch_size, spec.local_epochs, spec.rounds
        )
        self.account = PrivacyAccount(settings.accountant)
        self.damaged = False  # the account on disk was unreadable: count the budget as spent
        self._next: tuple[int, float] | None = None  # (rounds spent, ε after one more)

    @classmethod
    def open(cls, spec: JobSpec, num_samples: int, directory: Path) -> PrivacyBudget | None:
        """The job's budget on this node with what was spent before a restart; None for a
        job without ``[privacy]``. A damaged account counts as spent: nothing more is sent."""
        settings = spec.privacy_settings
        if settings is None:
            return None
        budget = cls(spec, settings, num_samples, directory / FILE)
        try:
            raw = budget.path.read_bytes()
        except FileNotFoundError:
            return budget
        try:
            budget.account = PrivacyAccount.from_json(raw)
        except PrivacyError as exc:
            log.error("%s: %s; this node sends no more updates for the job", budget.path, exc)
            budget.damaged = True
        return budget

    @property
    def budget(self) -> float:
        return self.settings.epsilon

    def spent(self) -> float:
        """ε spent so far on this job (at the job's δ)."""
        return math.inf if self.damaged else self.account.epsilon(self.settings.delta)

    def allows_next(self) -> bool:
        """Whether one more round keeps the total within the job's ε."""
        if self.damaged:
            return False
        n = len(self.account.rounds)
        if self._next is None or self._next[0] != n:
            self._next = (n, self.account.epsilon(self.settings.delta, self.plan))
        return self._next[1] <= self.settings.epsilon + _SLACK

    def spend(self, r: int, plan: StepPlan) -> float:
        """Round ``r`` was trained with ``plan``: write it down (before the update leaves);
        returns ε spent so far."""
        self.account.spend(r, plan)
        try:
            write_private_file(self.path, self.account.to_json())
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename survives a power cut too
            finally:
                os.close(fd)
        except OSError as exc:
            raise PrivacyError(
                f"cannot write the privacy account {self.path}: {exc.strerror or exc}"
            ) from None
        return self.spent()


def may_leave(log: JobLog, me: str) -> bool:
    """``me`` is a member whose last contributed round needs its vote no more (decided, or
    voted on): leaving now keeps every vote it owes and stops the rounds waiting for it."""
    if not log.is_member(me):
        return False
    last = log.last_update_round(me)
    rd = log.rounds.get(last) if last is not None else None
    return rd is None or rd.decision is not None or me.lower() in rd.votes
