"""In-process simulation: N virtual clients through the real trainer, codec, strategy and rounds.

Each round samples a fraction C of the clients, trains each one locally, encodes its update
with the job's compression (keeping per-client error feedback), commits the blob hash to the
round state machine, and, once the machine says the round closed, decodes and checks every
counted blob and aggregates it with the job's strategy - the path a real node takes, minus
the network and the chain.

Local training runs in this process, or with `workers` > 0 in that many spawned worker
processes (each loads the dataset and its partition once; they share this process's torch
threads); everything else stays here, in client order, so a run gives the same models
whatever the number of workers.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gfl.errors import GflError

log = logging.getLogger(__name__)


def _address(i: int) -> str:
    return f"0x{i + 1:040x}"


ATTACKS = ("signflip", "scale", "gaussian")


def parse_attack(attack: str) -> tuple[str, float]:
    """`signflip`, `scale[:FACTOR]` (default -10) or `gaussian[:SIGMA]` (default 1.0)."""
    kind, _, arg = attack.partition(":")
    if kind not in ATTACKS:
        raise GflError(f"attack {attack!r} is unknown; known: {', '.join(ATTACKS)}")
    default = {"signflip": -1.0, "scale": -10.0, "gaussian": 1.0}[kind]
    try:
        value = float(arg) if arg else default
    except ValueError:
        raise GflError(f"attack {attack!r}: {arg!r} is not a number") from None
    return kind, value


def poison(
    update: dict[str, np.ndarray], attack: str, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A malicious client's update in place of its honest one (model-poisoning attacks).

    signflip sends -update, scale sends FACTOR * update, gaussian sends N(0, SIGMA^2) noise
    unrelated to the data; all keep names, shapes and dtypes so the update is well-formed.
    """
    kind, value = parse_attack(attack)
    out = {}
    for k in sorted(update):
        u = update[k]
        if u.dtype.kind != "f":
            out[k] = u
        elif kind == "gaussian":
            out[k] = rng.normal(0.0, value, size=u.shape).astype(u.dtype)
        else:
            out[k] = (u.astype(np.float64) * value).astype(u.dtype)
    return out


class _InProcess:
    """Trains the sampled clients one after another in this process."""

    def __init__(self, spec: Any, shards: Sequence[Any], device: str) -> None:
        self.spec, self.shards, self.device = spec, shards, device

    def train(self, jobs: list[tuple[int, int]], params: dict[str, np.ndarray]) -> list[Any]:
        from gfl.fl.trainer import train_local

        return [
            train_local(self.spec, params, self.shards[i], device=self.device, seed=seed)
            for i, seed in jobs
        ]

    def close(self) -> None:
        pass


# the worker process's job, data partition and device, set once by `_worker_init`
_WORKER: dict[str, Any] = {}


def _worker_init(spec_bytes: bytes, data: dict[str, Any], device: str, threads: int) -> None:
    import torch

    from gfl.fl.spec import JobSpec

    torch.set_num_threads(threads)
    spec = JobSpec.from_bytes(spec_bytes)
    _WORKER.update(spec=spec, shards=_load_shards(spec, **data), device=device)


def _worker_train(job: tuple[int, int, dict[str, np.ndarray]]) -> Any:
    from gfl.fl.trainer import train_local

    i, seed, params = job
    w = _WORKER
    return train_local(w["spec"], params, w["shards"][i], device=w["device"], seed=seed)


class _Workers:
    """Trains the sampled clients in `n` spawned processes (results in client order)."""

    def __init__(self, spec: Any, n: int, data: dict[str, Any], device: str) -> None:
        import torch

        threads = max(1, torch.get_num_threads() // n)  # this process's CPU budget, shared
        self._pool = ProcessPoolExecutor(
            max_workers=n,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(spec.to_bytes(), data, device, threads),
        )

    def train(self, jobs: list[tuple[int, int]], params: dict[str, np.ndarray]) -> list[Any]:
        return list(self._pool.map(_worker_train, [(i, seed, params) for i, seed in jobs]))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _load_shards(
    spec: Any, *, data_root: str | Path | None, partition: str, num_clients: int, seed: int
) -> list[Any]:
    from gfl.fl.data import load_dataset
    from gfl.fl.data import partition as make_partition

    train = load_dataset(spec.dataset, root=data_root, train=True)
    return [train.subset(idx) for idx in make_partition(train.y, partition, num_clients, seed)]


def simulate(
    spec: Any,
    *,
    num_clients: int,
    fraction: float = 1.0,
    partition: str = "iid",
    data_root: str | Path | None = None,
    device: str = "cpu",
    seed: int | None = None,
    max_minutes: float | None = None,
    target_accuracy: float | None = None,
    metrics_path: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    malicious: float = 0.0,
    attack: str = "signflip",
    workers: int = 0,
) -> list[dict[str, Any]]:
    """Run the job with virtual clients; returns one metrics dict per completed round.

    Stops after spec.rounds, when test accuracy reaches `target_accuracy`, or when
    `max_minutes` of wall time have passed (checked between rounds). A `malicious` fraction
    of the clients (the last round(malicious * num_clients)) replace their update by
    `poison(update, attack)` before encoding it - to measure robust strategies. With
    `workers` > 0, local training runs in that many worker processes.
    """
    from gfl.fl.codec import ErrorFeedback, blob_hash, decode_params, encode_params, params_hash
    from gfl.fl.data import load_dataset
    from gfl.fl.rounds import Aggregate, JobRounds
    from gfl.fl.strategies import ClientUpdate, make_strategy
    from gfl.fl.trainer import check_device, evaluate, initial_params

    check_device(device)  # before any data is loaded or worker started
    if num_clients < 1 or not 0 < fraction <= 1:
        raise GflError("simulate needs at least one client and 0 < fraction <= 1")
    if not 0 <= malicious < 1:
        raise GflError("the malicious fraction must be in [0, 1)")
    if not 0 <= workers <= 256:
        raise GflError("workers must be between 0 (train in this process) and 256")
    parse_attack(attack)
    bad = set(range(num_clients - round(malicious * num_clients), num_clients))
    seed = spec.seed if seed is None else seed
    test = load_dataset(spec.dataset, root=data_root, train=False)
    data = {
        "data_root": data_root,
        "partition": partition,
        "num_clients": num_clients,
        "seed": seed,
    }
    trainer = (
        _Workers(spec, workers, data, device)
        if workers
        else _InProcess(spec, _load_shards(spec, **data), device)
    )
    try:
        clients = [_address(i) for i in range(num_clients)]
        per_round = max(1, round(fraction * num_clients))
        min_updates = min(spec.min_updates, per_round)
        if min_updates < spec.min_updates:
            log.info("min_updates lowered to %d: only %d clients per round", min_updates, per_round)
        machine = JobRounds(spec.rounds, min_updates, spec.round_timeout, registered_at=0.0)
        for a in clients:
            machine.on_join(a, 0.0)
        feedback = {a: ErrorFeedback() for a in clients}
        strategy = make_strategy(spec.strategy, spec.strategy_kwargs)
        params = initial_params(spec)
        rng = np.random.default_rng(seed)
        rows: list[dict[str, Any]] = []
        start = time.monotonic()
        now = 0.0
        for r in range(spec.rounds):
            t0 = time.monotonic()
            chosen = sorted(rng.choice(num_clients, size=per_round, replace=False).tolist())
            blobs: dict[bytes, bytes] = {}
            up_bytes, losses, weights = 0, [], []
            results = trainer.train([(i, seed * 1_000_003 + r * 1009 + i) for i in chosen], params)
            for i, res in zip(chosen, results, strict=True):
                a = clients[i]
                update = res.update
                if i in bad:
                    attack_rng = np.random.default_rng([seed, r, i])
                    update = poison(update, attack, attack_rng)
                blob = encode_params(update, spec.compression, feedback=feedback[a])
                h = blob_hash(blob)
                blobs[h] = blob
                up_bytes += len(blob)
                losses.append(res.metrics["train_loss"])
                weights.append(res.num_samples)
                # virtual clock: every sampled update lands before the round timeout, however many
                # clients (1 s each made rounds of > round_timeout clients close early)
                now += min(1.0, spec.round_timeout / (2 * per_round))
                if not machine.on_update(r, a, h, res.num_samples, now):
                    raise GflError(f"round {r}: the round machine refused {a}'s update")
            if not machine.is_closed(r, now):  # not everyone sampled: the timeout closes it
                now = machine.opens_at(r) + spec.round_timeout
            action = machine.next_action(clients[0], now)
            if not isinstance(action, Aggregate) or action.round != r:
                raise GflError(f"round {r}: expected to aggregate, the round machine says {action}")
            updates = []
            for c in action.updates:
                blob = blobs[c.update_hash]
                if blob_hash(blob) != c.update_hash:
                    raise GflError("blob hash mismatch")
                updates.append(ClientUpdate(c.address, c.samples, decode_params(blob)))
            params = strategy.aggregate(params, updates)
            mhash = params_hash(params)
            machine.on_model(r, clients[0], mhash)
            ev = evaluate(spec, params, test, device=device)
            row = {
                "round": r + 1,
                "clients": len(updates),
                "samples": sum(weights),
                "train_loss": float(np.average(losses, weights=weights)),
                "test_loss": ev["loss"],
                "test_accuracy": ev["accuracy"],
                "upload_bytes": up_bytes,
                "seconds": round(time.monotonic() - t0, 3),
                "model_hash": mhash.hex(),
            }
            rows.append(row)
            if progress is not None:
                progress(row)
            if metrics_path is not None:
                _write_metrics(rows, Path(metrics_path))
            if target_accuracy is not None and ev["accuracy"] >= target_accuracy:
                break
            if max_minutes is not None and time.monotonic() - start > max_minutes * 60:
                log.info("stopping after round %d: %.1f minutes passed", r + 1, max_minutes)
                break
        return rows
    finally:
        trainer.close()


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


def progress_line(row: dict[str, Any]) -> None:
    print(
        f"round {row['round']:>4}  clients {row['clients']:>3}  "
        f"train_loss {row['train_loss']:.4f}  test_acc {row['test_accuracy']:.4f}  "
        f"up {row['upload_bytes'] / 1e6:.2f} MB  {row['seconds']:.1f}s",
        file=sys.stderr,
    )


_SPEC_FLAGS = {
    "dataset": "dataset",
    "model": "model",
    "rounds": "rounds",
    "epochs": "local_epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "optimizer": "optimizer",
    "strategy": "strategy",
    "compression": "compression",
    "seed": "seed",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `simulate` subcommand to the CLI's argparse subparsers."""
    p = subparsers.add_parser(
        "simulate",
        help="run a federated job with virtual clients in one process",
        description="Run a job with N virtual clients through the real trainer, codec, "
        "strategy and round logic. Job from --job FILE (TOML) and/or flags.",
    )
    p.add_argument("--job", help="TOML job file (flags below override its settings)")
    p.add_argument("--dataset", help="dataset name (default digits)")
    p.add_argument("--model", help="model name (default mlp)")
    p.add_argument("--model-kwargs", default=None, help="JSON object, e.g. '{\"in_features\": 64}'")
    p.add_argument("--rounds", type=int)
    p.add_argument("--epochs", type=int, help="local epochs E")
    p.add_argument("--batch-size", type=int, help="local batch size B")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer")
    p.add_argument("--strategy")
    p.add_argument("--strategy-kwargs", default=None, help="JSON object")
    p.add_argument("--compression")
    p.add_argument("--seed", type=int)
    p.add_argument("--clients", type=int, default=5, help="number of virtual clients K")
    p.add_argument("--fraction", type=float, default=1.0, help="client fraction C per round")
    p.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA | shards:K")
    p.add_argument("--data-root", help="directory holding the dataset files")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="train clients in N worker processes (0: in this process)",
    )
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--target-accuracy", type=float)
    p.add_argument("--out", help="per-round metrics file (.csv or .json)")
    p.add_argument(
        "--malicious", type=float, default=0.0, help="fraction of clients that poison updates"
    )
    p.add_argument(
        "--attack", default="signflip", help="signflip | scale[:FACTOR] | gaussian[:SIGMA]"
    )
    p.set_defaults(func=_run)


def _spec_from_args(args: argparse.Namespace) -> Any:
    from gfl.fl.spec import JobSpec, SpecError, load_job_file

    base: dict[str, Any] = (
        load_job_file(args.job).to_dict()
        if args.job
        else {
            "name": "simulation",
            "dataset": "digits",
            "model": "mlp",
            "rounds": 10,
            "model_kwargs": {},
        }
    )
    for flag, field_name in _SPEC_FLAGS.items():
        v = getattr(args, flag)
        if v is not None:
            base[field_name] = v
    for flag, field_name in (
        ("model_kwargs", "model_kwargs"),
        ("strategy_kwargs", "strategy_kwargs"),
    ):
        raw = getattr(args, flag)
        if raw is not None:
            try:
                base[field_name] = json.loads(raw)
            except json.JSONDecodeError as e:
                raise SpecError(f"--{flag.replace('_', '-')} is not valid JSON: {e}") from None
    if not args.job and args.model_kwargs is None and base["dataset"] == "digits":
        base["model_kwargs"] = (
            {"in_features": 64}
            if base["model"] == "mlp"
            else {"image_size": 8}
            if base["model"] == "cnn"
            else {}
        )
    return JobSpec.from_dict(base)


def _run(args: argparse.Namespace) -> int:
    try:
        spec = _spec_from_args(args)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        rows = simulate(
            spec,
            num_clients=args.clients,
            fraction=args.fraction,
            partition=args.partition,
            data_root=args.data_root,
            device=args.device,
            max_minutes=args.max_minutes,
            target_accuracy=args.target_accuracy,
            metrics_path=args.out,
            progress=progress_line,
            malicious=args.malicious,
            attack=args.attack,
            workers=args.workers,
        )
    except GflError as e:
        print(f"gfl simulate: {e}", file=sys.stderr)
        return 2
    if rows:
        last = rows[-1]
        print(
            f"{len(rows)} rounds, final test accuracy {last['test_accuracy']:.4f}, "
            f"model {last['model_hash'][:16]}"
        )
    return 0
