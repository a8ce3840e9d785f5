"""Simulation: N virtual clients through the real trainer, codec, strategy and round rules.

Each round samples a fraction C of the clients, has a backend train them, encodes each update
with the job's compression (keeping per-client error feedback), commits the blob hash to the
round state machine and, once the machine says the round closed, decodes and checks every
counted blob and aggregates it with the job's strategy: the path a real node takes, minus the
network and the chain.

Only local training goes to the backend (this process, worker processes or Ray actors, see
`backends`); it returns the results in client order, everything after that happens here, and
every backend trains with the same torch thread count. So a seed gives the same models on every
backend and with any number of workers.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gfl.fl.rounds import RoundRuleError
from gfl.simulate.attacks import parse_attack, poison
from gfl.simulate.backends import (
    BACKENDS,
    Backend,
    ClientData,
    ClientTask,
    DataUnavailable,
    InProcess,
    Processes,
    SimulateError,
)

if TYPE_CHECKING:
    from gfl.fl.data import ArrayDataset
    from gfl.fl.spec import JobSpec
    from gfl.simulate.ray_backend import RayOptions

__all__ = ["DataUnavailable", "Progress", "SimulateError", "parse_attack", "poison", "simulate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """Where a run stands: sent as each client finishes, and with `row` as each round ends."""

    round: int  # 1-based: the round in progress, or the one just finished
    rounds: int
    clients_done: int
    clients: int  # sampled this round
    elapsed_s: float
    eta_s: float | None  # time left to the last round at the pace so far (None: no pace yet)
    retried: int  # client tasks started again this run (a lost Ray actor)
    row: dict[str, Any] | None = None  # the round's metrics, once it has finished


def _address(i: int) -> str:
    return f"0x{i + 1:040x}"


def simulate(
    spec: JobSpec,
    *,
    num_clients: int,
    fraction: float = 1.0,
    partition: str = "iid",
    data_root: str | Path | None = None,
    download: bool = False,
    device: str = "cpu",
    seed: int | None = None,
    max_minutes: float | None = None,
    target_accuracy: float | None = None,
    metrics_path: str | Path | None = None,
    progress: Callable[[Progress], None] | None = None,
    malicious: float = 0.0,
    attack: str = "signflip",
    backend: str | None = None,
    workers: int = 0,
    threads: int = 1,
    ray_options: RayOptions | None = None,
) -> list[dict[str, Any]]:
    """Run the job with virtual clients; returns one metrics dict per completed round.

    Stops after spec.rounds, when test accuracy reaches `target_accuracy`, or when
    `max_minutes` of wall time have passed (checked between rounds). A `malicious` fraction
    of the clients (the last round(malicious * num_clients)) replace their update by
    `poison(update, attack)` before encoding it - to measure robust strategies.

    `backend` is "inprocess", "processes" (`workers` processes, default one per CPU) or
    "ray" (`ray_options`; `workers` caps the actors); left out: processes when `workers` > 0,
    else in this process. Every client trains with `threads` torch threads on every backend.
    """
    from gfl.fl.data import parse_scheme

    kind = backend or ("ray" if ray_options else "processes" if workers else "inprocess")
    if kind not in BACKENDS:
        raise SimulateError(f"backend {kind!r} is unknown; known: {', '.join(BACKENDS)}")
    if num_clients < 1 or not 0 < fraction <= 1:
        raise SimulateError("simulate needs at least one client and 0 < fraction <= 1")
    if not 0 <= malicious < 1:
        raise SimulateError("the malicious fraction must be in [0, 1)")
    if not 0 <= workers <= 256:
        raise SimulateError("workers must be between 0 and 256")
    if not 1 <= threads <= 256:
        raise SimulateError("threads must be between 1 and 256")
    if ray_options is not None and kind != "ray":
        raise SimulateError(f"Ray's options need the ray backend, not {kind}")
    parse_attack(attack)
    parse_scheme(partition)  # here, not first in a worker process
    train_device, eval_device = _devices(kind, device, ray_options)  # before any data loads
    seed = spec.seed if seed is None else seed
    root = None if data_root is None else str(Path(data_root).expanduser().resolve())
    data = ClientData(spec.dataset, root, partition, num_clients, seed, download)
    test = data.load(train=False)
    per_round = max(1, round(fraction * num_clients))
    with open_backend(
        kind,
        spec,
        data,
        device=train_device,
        threads=threads,
        workers=workers,
        parallel=per_round,
        ray_options=ray_options,
    ) as trainer:
        run = _Run(
            spec,
            trainer,
            test,
            device=eval_device,
            num_clients=num_clients,
            per_round=per_round,
            seed=seed,
            bad=set(range(num_clients - round(malicious * num_clients), num_clients)),
            attack=attack,
            progress=progress,
        )
        return run.rounds(max_minutes, target_accuracy, metrics_path)


def _devices(kind: str, device: str, ray_options: RayOptions | None) -> tuple[str, str]:
    """(where clients train, where this process evaluates); errors before anything starts."""
    from gfl.fl.trainer import TrainError, check_device

    if kind != "ray":
        check_device(device)
        return device, device
    gpus = ray_options.client_gpus if ray_options else 0.0
    if device != "cpu" and device != "cuda":
        raise SimulateError(f"device {device!r}: with Ray, clients train on cpu or cuda")
    if (device == "cuda") != (gpus > 0):
        raise SimulateError(
            "with Ray, a client trains on cuda exactly when it reserves a share of a GPU: "
            "give --device cuda together with --client-gpus F (0 < F <= 1)"
        )
    try:  # the clients' GPUs are the cluster's; this machine evaluates on its own if it has one
        check_device(device)
    except TrainError:
        log.info("no %s here: evaluating the global model on the CPU", device)
        return device, "cpu"
    return device, device


class _Run:
    """One simulation's state between rounds: the model, the round machine, error feedback."""

    def __init__(
        self,
        spec: JobSpec,
        trainer: Backend,
        test: ArrayDataset,
        *,
        device: str,
        num_clients: int,
        per_round: int,
        seed: int,
        bad: set[int],
        attack: str,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        from gfl.fl.codec import ErrorFeedback
        from gfl.fl.rounds import JobRounds, RoundParams
        from gfl.fl.strategies import make_strategy
        from gfl.fl.trainer import initial_params

        self.spec, self.trainer, self.test, self.device = spec, trainer, test, device
        self.num_clients, self.per_round, self.seed = num_clients, per_round, seed
        self.bad, self.attack, self.progress = bad, attack, progress
        self.deadline: float | None = None
        self.clients = [_address(i) for i in range(num_clients)]
        min_updates = min(spec.min_updates, per_round)
        if min_updates < spec.min_updates:
            log.info("min_updates lowered to %d: only %d clients per round", min_updates, per_round)
        # the contract's rules, mirrored: every client a member; the sampled ones commit, the
        # round closes by its timeout (or when every member committed), all of them vote
        self.machine = JobRounds(
            RoundParams(
                rounds=spec.rounds,
                min_updates=min_updates,
                max_participants=max(num_clients, min_updates),
                round_timeout=spec.round_timeout,
                vote_timeout=spec.vote_timeout,
                max_samples=spec.sample_cap or 2**63 - 1,
            ),
            registered_at=0.0,
        )
        for a in self.clients:
            self.machine.join(a, 0.0)
        self.feedback = {a: ErrorFeedback() for a in self.clients}
        self.strategy = make_strategy(spec.strategy, spec.strategy_kwargs)
        self.params = initial_params(spec)
        self.rng = np.random.default_rng(seed)
        self.now = 0.0  # the round machine's virtual clock
        self.start = time.monotonic()

    def rounds(
        self,
        max_minutes: float | None,
        target_accuracy: float | None,
        metrics_path: str | Path | None,
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        self.deadline = None if max_minutes is None else self.start + max_minutes * 60
        for r in range(self.spec.rounds):
            row = self.round(r)
            rows.append(row)
            if metrics_path is not None:
                _write_metrics(rows, Path(metrics_path))
            self.report(r, self.per_round, row)
            if target_accuracy is not None and row["test_accuracy"] >= target_accuracy:
                break
            if self.deadline is not None and time.monotonic() > self.deadline:
                log.info("stopping after round %d: %.1f minutes passed", r + 1, max_minutes)
                break
        return rows

    def report(self, r: int, done: int, row: dict[str, Any] | None = None) -> None:
        if self.progress is None:
            return
        elapsed = time.monotonic() - self.start
        units = r * self.per_round + done  # client trainings done, the pace's measure
        left = self.spec.rounds * self.per_round - units
        eta = elapsed * left / units if units else None
        if eta is not None and self.deadline is not None:
            eta = max(0.0, min(eta, self.deadline - time.monotonic()))
        retried = self.trainer.retried
        self.progress(
            Progress(r + 1, self.spec.rounds, done, self.per_round, elapsed, eta, retried, row)
        )

    def round(self, r: int) -> dict[str, Any]:
        from gfl.fl.codec import blob_hash, decode_params, encode_params, params_hash
        from gfl.fl.rounds import Decision
        from gfl.fl.strategies import ClientUpdate
        from gfl.fl.trainer import evaluate

        spec, machine, seed = self.spec, self.machine, self.seed
        t0, retried = time.monotonic(), self.trainer.retried
        chosen = sorted(self.rng.choice(self.num_clients, size=self.per_round, replace=False))
        tasks = [ClientTask(int(i), seed * 1_000_003 + r * 1009 + int(i)) for i in chosen]
        results = self.trainer.run(tasks, self.params, lambda done: self.report(r, done))
        blobs: dict[bytes, bytes] = {}
        up_bytes, losses, weights = 0, [], []
        for task, res in zip(tasks, results, strict=True):  # client order, not finishing order
            a = self.clients[task.client]
            update = res.update
            if task.client in self.bad:
                update = poison(update, self.attack, np.random.default_rng([seed, r, task.client]))
            blob = encode_params(update, spec.compression, feedback=self.feedback[a])
            h = blob_hash(blob)
            blobs[h] = blob
            up_bytes += len(blob)
            losses.append(res.metrics["train_loss"])
            weights.append(res.num_samples)
            # virtual clock: every sampled update lands before the round timeout, however many
            # clients (1 s each made rounds of > round_timeout clients close early)
            self.now += min(1.0, spec.round_timeout / (2 * self.per_round))
            samples = 1 if spec.weighting == "equal" else res.num_samples
            if spec.sample_cap:
                samples = min(samples, spec.sample_cap)
            try:
                machine.commit(a, r, h, samples, self.now)
            except RoundRuleError as exc:
                raise SimulateError(
                    f"round {r}: the round rules refused {a}'s update: {exc}"
                ) from None
        rd = machine.round(r)
        if not rd.closed:  # not everyone sampled: the timeout closes it
            assert rd.opens_at is not None
            self.now = max(self.now, rd.opens_at + spec.round_timeout)
            machine.settle(self.now)
        if not rd.closed:
            raise SimulateError(f"round {r} did not close: {len(rd.updates)} updates")
        updates = []
        for u in rd.updates:  # chain order; the strategy sorts them canonically
            blob = blobs[u.update_hash]
            if blob_hash(blob) != u.update_hash:
                raise SimulateError("blob hash mismatch")
            updates.append(ClientUpdate(u.author, u.samples, decode_params(blob)))
        self.params = self.strategy.aggregate(self.params, updates)
        mhash = params_hash(self.params)
        for u in rd.updates:  # every contributor computes the same model and votes for it
            if rd.decision is not None:
                break
            machine.vote(u.author, r, mhash, b"", self.now)
        if rd.decision is not Decision.FINALIZED:
            raise SimulateError(f"round {r} was not finalized by its contributors' votes")
        ev = evaluate(spec, self.params, self.test, device=self.device)
        return {
            "round": r + 1,
            "clients": len(updates),
            "samples": sum(weights),
            "train_loss": float(np.average(losses, weights=weights)),
            "test_loss": ev["loss"],
            "test_accuracy": ev["accuracy"],
            "upload_bytes": up_bytes,
            "seconds": round(time.monotonic() - t0, 3),
            "retried": self.trainer.retried - retried,
            "model_hash": mhash.hex(),
        }


def _write_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".json":
        tmp.write_text(json.dumps(rows, indent=1))
    else:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    tmp.replace(path)


def open_backend(
    kind: str,
    spec: JobSpec,
    data: ClientData,
    *,
    device: str,
    threads: int,
    workers: int,
    parallel: int,
    ray_options: Any = None,
) -> Backend:
    """Build the backend `kind` for a run that trains at most `parallel` clients at once."""
    if kind == "inprocess":
        return InProcess(spec, data, device=device, threads=threads)
    if kind == "processes":
        n = min(workers or os.cpu_count() or 1, parallel)
        return Processes(spec, data, device=device, threads=threads, workers=n)
    if kind == "ray":
        from gfl.simulate.ray_backend import RayBackend, RayOptions

        return RayBackend(
            spec,
            data,
            device=device,
            threads=threads,
            max_actors=min(workers or parallel, parallel),
            options=ray_options or RayOptions(),
        )
    raise SimulateError(f"backend {kind!r} is unknown; known: {', '.join(BACKENDS)}")
