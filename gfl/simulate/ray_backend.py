"""The Ray backend: clients train in a pool of Ray actors sized from the cluster's resources.

Each actor reserves `client_cpus` CPUs and `client_gpus` of a GPU, and the pool holds as many
actors as the cluster can run at once (at most one per sampled client): more would only queue,
each holding its own torch. The training split is read here once and put in Ray's object
store; the actors on a machine map that one copy and slice their clients out of it, so the data
crosses the network once per machine and each actor adds a model's memory, not a dataset's.
Each round's global model goes into the store once and every task refers to it. An actor that
dies mid-task (killed, out of memory, its machine lost) is replaced and its task run again: a
task depends only on the model, the client and its seed, so its result does not change.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gfl.errors import GflError
from gfl.simulate.backends import (
    Backend,
    ClientData,
    ClientTask,
    OnDone,
    SimulateError,
    client_shard,
)

if TYPE_CHECKING:
    from gfl.fl.data import ArrayDataset
    from gfl.fl.spec import JobSpec
    from gfl.fl.trainer import LocalResult

log = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'gfl[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where Ray runs and what each client reserves there."""

    # None: $RAY_ADDRESS, else a Ray started on this machine for the run; "auto" finds a
    # running one here, "HOST:PORT" / "ray://HOST:PORT" reach a cluster's head
    address: str | None = None
    client_cpus: float | None = None  # CPUs each client actor reserves (None: its torch threads)
    client_gpus: float = 0.0  # the share of a GPU each client actor reserves and trains on
    max_retries: int = 3  # how often one client's task is started again after losing its actor
    task_timeout: float = 3600.0  # seconds without any client finishing before giving up


def import_ray(local: bool) -> Any:
    """The `ray` module, or a one-line error naming the extra that installs it."""
    if local and "ray" not in sys.modules:
        # Ray's switch for a single-machine instance: it then advertises and binds 127.0.0.1
        # instead of this machine's network address, which a run on one machine never needs.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nor does it report usage
    try:
        import ray
    except ImportError as e:
        why = "is not installed here" if e.name == "ray" else f"cannot be imported ({e})"
        raise SimulateError(f"the ray backend needs Ray, which {why}: {RAY_EXTRA}") from None
    return ray


class ClientActor:
    """One Ray worker: the job, the shared training split and every client's indices into it."""

    def __init__(
        self,
        spec_bytes: bytes,
        train: ArrayDataset,
        indices: list[np.ndarray],
        device: str,
        threads: int,
    ) -> None:
        import torch

        from gfl.fl.spec import JobSpec

        torch.set_num_threads(threads)
        self.spec = JobSpec.from_bytes(spec_bytes)
        self.train_split, self.indices, self.device = train, indices, device

    def train(self, client: int, seed: int, params: Mapping[str, np.ndarray]) -> LocalResult:
        from gfl.fl.trainer import train_local

        shard = client_shard(self.train_split, self.indices[client])  # the store's is read-only
        return train_local(self.spec, params, shard, device=self.device, seed=seed)


class RayBackend(Backend):
    """Trains the tasks in a pool of Ray actors, one task per actor at a time."""

    name = "ray"

    def __init__(
        self,
        spec: JobSpec,
        data: ClientData,
        *,
        device: str,
        threads: int,
        max_actors: int,
        options: RayOptions,
    ) -> None:
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        self._ray = ray = import_ray(local=address is None)
        self._options = options
        self._owns = _connect(ray, address)
        self._actors: list[Any] = []
        self._refs: tuple[Any, ...] = ()
        try:
            self._cpus = threads if options.client_cpus is None else options.client_cpus
            self._gpus = options.client_gpus
            size = _pool_size(ray.cluster_resources(), self._cpus, self._gpus, max_actors)
            train = data.load(train=True)
            self._refs = (ray.put(train), ray.put(data.indices(train.y)))
            del train  # the store holds it now
            self._init_args = (spec.to_bytes(), *self._refs, device, threads)
            self._remote = ray.remote(ClientActor)
            self._actors = [self._new_actor() for _ in range(size)]
            log.info("ray: %d client actors (%g CPUs, %g GPUs each)", size, self._cpus, self._gpus)
        except BaseException:
            self.close()
            raise

    def _new_actor(self) -> Any:
        opts = {"num_cpus": self._cpus, "num_gpus": self._gpus, "max_restarts": 0}
        return self._remote.options(**opts).remote(*self._init_args)

    def run(
        self,
        tasks: Sequence[ClientTask],
        params: Mapping[str, np.ndarray],
        on_done: OnDone | None = None,
    ) -> list[LocalResult]:
        ray = self._ray
        params_ref = ray.put(dict(params))
        results: dict[int, LocalResult] = {}
        todo = deque(range(len(tasks)))
        tries: Counter[int] = Counter()
        idle = list(self._actors)
        running: dict[Any, tuple[int, Any]] = {}

        def start() -> None:
            while todo and idle:
                k, actor = todo.popleft(), idle.pop()
                ref = actor.train.remote(tasks[k].client, tasks[k].seed, params_ref)
                running[ref] = (k, actor)

        start()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=self._options.task_timeout)
            if not ready:
                raise SimulateError(
                    f"no client finished within {self._options.task_timeout:g} s: "
                    "is the Ray cluster still up, with room for the client actors?"
                )
            k, actor = running.pop(ready[0])
            try:
                results[k] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:  # the training itself raised
                if isinstance(e.cause, GflError):
                    raise e.cause from None
                raise
            except ray.exceptions.RayError as e:  # the actor or its machine is gone
                actor = self._replace(actor, tasks[k].client, e)
                tries[k] += 1
                if tries[k] > self._options.max_retries:
                    raise SimulateError(
                        f"client {tasks[k].client}: its Ray actor was lost "
                        f"{tries[k]} times; last: {_first_line(e)}"
                    ) from None
                todo.appendleft(k)
            idle.append(actor)
            start()  # before reporting, so the workers never wait on the progress display
            if k in results and on_done is not None:
                on_done(len(results))
        return [results[k] for k in range(len(tasks))]

    def _replace(self, actor: Any, client: int, error: BaseException) -> Any:
        log.warning("client %d: Ray actor lost (%s); training it again", client, _first_line(error))
        self.retried += 1
        with contextlib.suppress(self._ray.exceptions.RayError):
            self._ray.kill(actor)
        new = self._new_actor()
        self._actors[self._actors.index(actor)] = new
        return new

    def close(self) -> None:
        ray = self._ray
        for actor in self._actors:
            with contextlib.suppress(ray.exceptions.RayError, ConnectionError):
                ray.kill(actor)
        self._actors = []
        self._refs = ()
        if self._owns:
            self._owns = False
            ray.shutdown()


def _connect(ray: Any, address: str | None) -> bool:
    """Start or reach Ray; True when this run made the connection (and so closes it)."""
    if ray.is_initialized():  # the caller's Ray: use it, leave it up
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        # Ray says on every start whether token authentication is on; for an instance of
        # ours, on 127.0.0.1 and gone at the run's end, that line is only noise
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        ray.init("local", include_dashboard=False, **quiet)  # a new one, whatever runs here
        return True
    _check_reachable(ray, address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = (
            ""
            if os.environ.get("RAY_AUTH_MODE")
            else "; a cluster started with token authentication (recent Ray's default) also "
            "needs RAY_AUTH_MODE=token and its token on this machine"
        )
        why = _first_line(e)
        raise SimulateError(f"cannot reach the Ray cluster at {address}: {why}{hint}") from None
    return True


def _check_reachable(ray: Any, address: str) -> None:
    """Fail fast where nothing listens: Ray itself retries an unreachable head for minutes."""
    target = address
    if address == "auto":
        try:  # Ray's own lookup of the instance `ray start` left on this machine
            target = ray._private.services.canonicalize_bootstrap_address_or_die("auto")
        except AttributeError:  # moved in another Ray version: let ray.init look
            return
        except ConnectionError as e:
            why = _first_line(e).split(". ")[0].rstrip(".")
            raise SimulateError(
                f"--address auto: {why} on this machine; start one with `ray start --head`, "
                "or give --address HOST:PORT"
            ) from None
    host, sep, port = target.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SimulateError(
            f"Ray address {address!r} is not understood: use auto, HOST:PORT or ray://HOST:PORT"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as e:
        raise SimulateError(
            f"cannot reach the Ray cluster at {address}: {e.strerror or e}; is `ray start "
            "--head` running there, and its port open to this machine?"
        ) from None


def _pool_size(total: Mapping[str, float], cpus: float, gpus: float, most: int) -> int:
    """How many client actors the cluster can run at once, at most `most`."""
    if cpus < 0 or gpus < 0 or cpus == gpus == 0:
        raise SimulateError("a client needs some CPUs or a share of a GPU (both >= 0)")
    for name, need in (("CPUs", cpus), ("GPUs", gpus)):
        if need > 1 and not float(need).is_integer():  # Ray's rule for resource amounts
            raise SimulateError(
                f"a client's {name} must be a whole number or at most 1, not {need:g}"
            )
    fits = [most]
    for name, need in (("CPU", cpus), ("GPU", gpus)):
        if need > 0:
            fits.append(math.floor(total.get(name, 0.0) / need + 1e-9))
    size = min(fits)
    if size < 1:
        raise SimulateError(
            f"the Ray cluster ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs) "
            f"cannot hold one client ({cpus:g} CPUs, {gpus:g} GPUs)"
        )
    return size


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
