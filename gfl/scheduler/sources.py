"""The node's private data, by the names jobs use (config ``[data]``), loaded once and kept."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from gfl.errors import GflError
from gfl.fl.data import ArrayDataset, DataError, load_dataset, load_partition
from gfl.scheduler.ports import NodeData

log = logging.getLogger(__name__)

_KEYS = frozenset({"root", "dataset", "partition", "index", "of", "seed", "limit"})


class DataSourceError(GflError):
    """A ``[data]`` entry is malformed or names no data this node can load."""


@dataclass(frozen=True)
class DataSource:
    """A node-local dataset: a name in config [data], optionally one partition of it."""

    dataset: str
    root: str | None = None
    partition: str | None = None  # "iid" | "dirichlet:0.5" | "shards:2"
    index: int = 0
    of: int = 1
    seed: int = 0
    limit: int | None = None  # keep only the first `limit` examples (benchmarks, quick runs)

    @classmethod
    def parse(cls, name: str, value: Any) -> DataSource:
        """``digits = ""`` (whole set), ``mnist = "/data/mnist"`` or a table with
        ``root``, ``dataset``, ``partition``, ``index``, ``of``, ``seed``, ``limit``."""
        if isinstance(value, str):
            return cls(dataset=name, root=value or None)
        if isinstance(value, dict):
            bad = set(value) - _KEYS
            if bad:
                raise DataSourceError(f"[data.{name}] has unknown keys: {', '.join(sorted(bad))}")
            return cls(
                dataset=str(value.get("dataset", name)),
                root=value.get("root") or None,
                partition=value.get("partition"),
                index=int(value.get("index", 0)),
                of=int(value.get("of", 1)),
                seed=int(value.get("seed", 0)),
                limit=int(value["limit"]) if value.get("limit") else None,
            )
        raise DataSourceError(f"[data] {name} must be a path or a table")

    def load(self, eval_limit: int = 0) -> NodeData:
        """The training data and (up to `eval_limit` examples of) the test split."""
        # scipy (under sklearn's digits) looks at torch while it is imported; if another
        # thread is half-way through importing torch that fails, so wait for that import
        import torch  # noqa: F401

        # only the examples kept are converted to floats (the limits apply before that)
        if self.partition:
            train = load_partition(
                self.dataset,
                self.index,
                self.of,
                self.partition,
                self.seed,
                root=self.root,
                limit=self.limit,
            )
        else:
            train = load_dataset(self.dataset, root=self.root, train=True, limit=self.limit)
        try:
            test: ArrayDataset | None = load_dataset(
                self.dataset, root=self.root, train=False, limit=eval_limit
            )
        except DataError:
            test = None
        return NodeData(train=train, test=test)


class DataSources:
    """The ``[data]`` table as loadable sources; each is loaded at most once (in a worker
    thread) and kept, since every round of every job on it trains on the same arrays."""

    def __init__(self, table: Mapping[str, Any], eval_limit: int = 0) -> None:
        self.eval_limit = eval_limit
        self.sources: dict[str, DataSource] = {}
        for name, value in table.items():
            try:
                self.sources[name] = DataSource.parse(name, value)
            except (DataSourceError, TypeError, ValueError) as exc:
                log.warning("ignoring [data] %s: %s", name, exc)
        self._cache: dict[str, NodeData] = {}
        self._lock = trio.Lock()

    def __contains__(self, name: object) -> bool:
        return name in self.sources

    def names(self) -> list[str]:
        return list(self.sources)

    async def load(self, name: str) -> NodeData:
        """The data behind ``name`` (raises `DataError` / `DataSourceError` if unusable)."""
        if name not in self.sources:
            raise DataSourceError(f"no dataset {name!r} in [data]")
        async with self._lock:
            if name not in self._cache:
                self._cache[name] = await trio.to_thread.run_sync(
                    self.sources[name].load, self.eval_limit
                )
            return self._cache[name]
