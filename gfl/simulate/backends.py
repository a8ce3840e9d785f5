"""Where a round's sampled clients train: the backend interface and its local implementations.

A backend is built once per run (it loads the clients' data then), trains one batch of client
tasks per round from that round's global model, and is shut down at the end. Every backend
returns the results in the order of the tasks it was given, whatever order they finished in,
and every one runs torch with the same number of threads per client: on the CPU, a convolution
summed by 1 thread or by 2 rounds differently, so the thread count is part of what a seed means.
"""

from __future__ import annotations

import logging
import multiprocessing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gfl.errors import GflError

if TYPE_CHECKING:
    from gfl.fl.data import ArrayDataset
    from gfl.fl.spec import JobSpec
    from gfl.fl.trainer import LocalResult

log = logging.getLogger(__name__)

BACKENDS = ("inprocess", "processes", "ray")

OnDone = Callable[[int], None]
"""Called with the number of the batch's clients done so far, each time one finishes."""


class SimulateError(GflError):
    """A simulation cannot start or go on (bad settings, a backend that cannot run)."""


class DataUnavailable(SimulateError):
    """The dataset's files are not where the run looks for them."""


@dataclass(frozen=True)
class ClientTask:
    """Train client `client` (0..K-1) from the round's global model with this seed."""

    client: int
    seed: int


@dataclass(frozen=True)
class ClientData:
    """How the clients' data is made: one dataset split the same way by every backend."""

    dataset: str
    root: str | None
    partition: str
    num_clients: int
    seed: int
    download: bool = False

    def load(self, *, train: bool) -> ArrayDataset:
        """The training or the test split."""
        from gfl.fl.data import DataError, load_dataset

        try:
            return load_dataset(self.dataset, root=self.root, train=train, download=self.download)
        except DataError as e:
            raise DataUnavailable(str(e)) from None

    def indices(self, labels: np.ndarray) -> list[np.ndarray]:
        """Each client's sample indices into the training split."""
        from gfl.fl.data import partition

        return partition(labels, self.partition, self.num_clients, self.seed)

    def shards(self) -> list[ArrayDataset]:
        """Every client's training data, loaded once."""
        train = self.load(train=True)
        return [client_shard(train, idx) for idx in self.indices(train.y)]


def client_shard(train: ArrayDataset, idx: np.ndarray) -> ArrayDataset:
    """A client's examples, laid out in C order with canonical strides on every backend.

    torch picks its convolution kernels by the strides of the input, and an image set's
    one-channel axis may carry any stride (MNIST's arrive with one, the same arrays after
    Ray's object store with another): the same layout everywhere keeps the same rounding.
    """
    from gfl.fl.data import ArrayDataset

    part = train.subset(idx)
    return ArrayDataset(part.x.copy(order="C"), part.y)


class Backend(ABC):
    """Trains batches of client tasks; built for one run, closed at its end."""

    name: str
    retried = 0  # client tasks started again after their worker was lost

    @abstractmethod
    def run(
        self,
        tasks: Sequence[ClientTask],
        params: Mapping[str, np.ndarray],
        on_done: OnDone | None = None,
    ) -> list[LocalResult]:
        """Train every task from `params`; the results in the order of `tasks`."""

    @abstractmethod
    def close(self) -> None:
        """Stop the workers this backend started."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch threads in this process, then restore the count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class InProcess(Backend):
    """Trains the tasks one after another in this process."""

    name = "inprocess"

    def __init__(self, spec: JobSpec, data: ClientData, *, device: str, threads: int) -> None:
        self.spec, self.device, self.threads = spec, device, threads
        self.shards = data.shards()

    def run(
        self,
        tasks: Sequence[ClientTask],
        params: Mapping[str, np.ndarray],
        on_done: OnDone | None = None,
    ) -> list[LocalResult]:
        from gfl.fl.trainer import train_local

        out = []
        with torch_threads(self.threads):
            for t in tasks:
                shard = self.shards[t.client]
                out.append(train_local(self.spec, params, shard, device=self.device, seed=t.seed))
                if on_done is not None:
                    on_done(len(out))
        return out

    def close(self) -> None:
        self.shards = []


# the worker process's job, client data and device, set once by `_worker_init`
_WORKER: dict[str, Any] = {}


def _worker_init(spec_bytes: bytes, data: ClientData, device: str, threads: int) -> None:
    import torch

    from gfl.fl.spec import JobSpec

    torch.set_num_threads(threads)
    try:
        _WORKER.update(spec=JobSpec.from_bytes(spec_bytes), shards=data.shards(), device=device)
    except GflError as e:  # an initializer that raises breaks the pool: say why at the first task
        _WORKER["error"] = e


def _worker_train(task: ClientTask, params: Mapping[str, np.ndarray]) -> LocalResult:
    from gfl.fl.trainer import train_local

    w = _WORKER
    if "error" in w:
        raise w["error"]
    shard = w["shards"][task.client]
    return train_local(w["spec"], params, shard, device=w["device"], seed=task.seed)


class Processes(Backend):
    """Trains the tasks in `workers` spawned processes, each holding every client's data."""

    name = "processes"

    def __init__(
        self, spec: JobSpec, data: ClientData, *, device: str, threads: int, workers: int
    ) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(spec.to_bytes(), data, device, threads),
        )

    def run(
        self,
        tasks: Sequence[ClientTask],
        params: Mapping[str, np.ndarray],
        on_done: OnDone | None = None,
    ) -> list[LocalResult]:
        futures: dict[Future[LocalResult], int] = {
            self._pool.submit(_worker_train, t, params): k for k, t in enumerate(tasks)
        }
        results: dict[int, LocalResult] = {}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    results[futures[f]] = f.result()
                if on_done is not None:
                    on_done(len(results))
        except BrokenProcessPool:
            raise SimulateError(
                "a worker process died (out of memory?); try fewer --workers"
            ) from None
        return [results[k] for k in range(len(tasks))]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
