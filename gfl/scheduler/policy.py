"""Which verified jobs this node joins: the operator's policy from config ``[jobs]``."""

from __future__ import annotations

from dataclasses import dataclass

from gfl.fl.spec import JobSpec


@dataclass(frozen=True)
class JoinPolicy:
    """``auto_join``: join every verified job whose dataset we have; ``allow_owners``: or
    only jobs of these owners; ``max_concurrent``: jobs run at once."""

    auto_join: bool
    allow_owners: frozenset[str]
    max_concurrent: int

    @classmethod
    def from_config(
        cls, auto_join: bool, allow_owners: list[str], max_concurrent: int
    ) -> JoinPolicy:
        return cls(auto_join, frozenset(a.lower() for a in allow_owners), max(1, max_concurrent))

    def decide(
        self, spec: JobSpec, owner: str, datasets: set[str] | list[str], running: int
    ) -> tuple[bool, str]:
        """(join?, why) for a verified job of ``owner`` while ``running`` jobs run here."""
        if spec.dataset not in datasets:
            return False, f"no dataset {spec.dataset!r} in [data]"
        if self.allow_owners and owner.lower() not in self.allow_owners:
            return False, "owner not in [jobs] allow_owners"
        if not self.auto_join and not self.allow_owners:
            return False, "[jobs] auto_join is off"
        if running >= self.max_concurrent:
            return False, f"already running {running} jobs (max_concurrent)"
        return True, "policy"
