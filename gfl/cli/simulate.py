"""`gfl simulate`: a job's rounds with N virtual clients, in this process, in worker processes
or on a Ray cluster; per-round metrics, progress with an ETA, and a summary line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from gfl.errors import GflError

# A job that learns in seconds when neither --job nor flags say otherwise: ~95 % on digits.
DEFAULT_JOB: dict[str, Any] = {
    "name": "simulation",
    "dataset": "digits",
    "model": "mlp",
    "rounds": 10,
    "local_epochs": 2,
    "batch_size": 16,
    "lr": 0.1,
    "model_kwargs": {},
}

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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `simulate` subcommand to the CLI's argparse subparsers."""
    from gfl.cli.options import common_options

    p = subparsers.add_parser(
        "simulate",
        parents=[common_options()],  # --home and -v after the command too, as everywhere
        help="simulate a federated job with virtual clients (here, in processes or on Ray)",
        description="Run a job with N virtual clients through the real trainer, codec, "
        "strategy and round rules. Job from --job FILE (TOML) and/or flags; without either, "
        "an MLP on scikit-learn's digits that reaches ~95 %% in 10 rounds.",
    )
    p.add_argument("--job", help="TOML job file (flags below override its settings)")
    p.add_argument("--dataset", help="dataset name (default digits)")
    p.add_argument("--model", help="model name (default mlp)")
    p.add_argument("--model-kwargs", default=None, help="JSON object, e.g. '{\"in_features\": 64}'")
    p.add_argument("--rounds", type=int, help="rounds (default 10)")
    p.add_argument("--epochs", type=int, help="local epochs E (default 2)")
    p.add_argument("--batch-size", type=int, help="local batch size B (default 16)")
    p.add_argument("--lr", type=float, help="learning rate (default 0.1)")
    p.add_argument("--optimizer")
    p.add_argument("--strategy")
    p.add_argument("--strategy-kwargs", default=None, help="JSON object")
    p.add_argument("--compression")
    p.add_argument("--seed", type=int)
    p.add_argument("--clients", type=int, default=5, help="number of virtual clients K")
    p.add_argument("--fraction", type=float, default=1.0, help="client fraction C per round")
    p.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA | shards:K")
    p.add_argument(
        "--data-root", help="directory holding the dataset's files (default $GFL_DATA_DIR)"
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download the dataset through torchvision when --data-root lacks it",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per client, on every backend (default 1); "
        "the same seed and threads give the same models",
    )
    p.add_argument(
        "--backend",
        choices=["inprocess", "processes", "ray"],
        help="where clients train (default: processes with --workers, else inprocess)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes: how many (default one per CPU); ray: at most this many actors",
    )
    ray = p.add_argument_group("Ray (--backend ray; pip install 'gfl[ray]')")
    ray.add_argument(
        "--address",
        help="auto (the cluster `ray start` runs here), HOST:PORT or ray://HOST:PORT; "
        "default $RAY_ADDRESS, else a Ray started for this run",
    )
    ray.add_argument(
        "--client-cpus", type=float, help="CPUs each client reserves (default --threads)"
    )
    ray.add_argument(
        "--client-gpus",
        type=float,
        default=0.0,
        help="share of a GPU each client reserves and trains on, e.g. 0.25 (implies --device cuda)",
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

    base: dict[str, Any] = load_job_file(args.job).to_dict() if args.job else dict(DEFAULT_JOB)
    for flag, field_name in _SPEC_FLAGS.items():
        v = getattr(args, flag)
        if v is not None:
            base[field_name] = v
    for flag in ("model_kwargs", "strategy_kwargs"):
        raw = getattr(args, flag)
        if raw is not None:
            try:
                base[flag] = json.loads(raw)
            except json.JSONDecodeError as e:
                raise SpecError(f"--{flag.replace('_', '-')} is not valid JSON: {e}") from None
    if not args.job and args.model_kwargs is None and base["dataset"] == "digits":
        sizes = {"mlp": {"in_features": 64}, "cnn": {"image_size": 8}}
        base["model_kwargs"] = sizes.get(base["model"], {})
    return JobSpec.from_dict(base)


def _backend_args(args: argparse.Namespace) -> dict[str, Any]:
    """simulate()'s backend keywords from the flags; Ray's only with --backend ray."""
    ray_flags = args.address is not None or args.client_cpus is not None or args.client_gpus
    if ray_flags and args.backend != "ray":
        raise GflError("--address, --client-cpus and --client-gpus need --backend ray")
    kw: dict[str, Any] = {
        "backend": args.backend,
        "workers": args.workers,
        "threads": args.threads,
        "device": args.device or ("cuda" if args.client_gpus else "cpu"),
    }
    if args.backend == "ray":
        from gfl.simulate.ray_backend import RayOptions

        kw["ray_options"] = RayOptions(args.address, args.client_cpus, args.client_gpus)
    return kw


class ProgressPrinter:
    """Progress on stderr: a line per round, and on a terminal a live line per client."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.live = self.out.isatty()

    def __call__(self, p: Any) -> None:
        eta = "" if p.eta_s is None else f"  ETA {_duration(p.eta_s)}"
        retried = f"  retried {p.retried}" if p.retried else ""
        if p.row is None:
            if self.live:
                line = f"round {p.round}/{p.rounds}  clients {p.clients_done}/{p.clients}"
                self.out.write(f"\r\x1b[K{line}{eta}{retried}")
                self.out.flush()
            return
        row = p.row
        prefix = "\r\x1b[K" if self.live else ""
        self.out.write(
            f"{prefix}round {row['round']:>4}/{p.rounds}  clients {row['clients']:>3}  "
            f"train_loss {row['train_loss']:.4f}  test_acc {row['test_accuracy']:.4f}  "
            f"up {row['upload_bytes'] / 1e6:.2f} MB  {row['seconds']:.1f}s{eta}{retried}\n"
        )
        self.out.flush()


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _run(args: argparse.Namespace) -> int:
    from gfl.simulate.engine import DataUnavailable, simulate

    try:
        spec = _spec_from_args(args)
        rows = simulate(
            spec,
            num_clients=args.clients,
            fraction=args.fraction,
            partition=args.partition,
            data_root=args.data_root,
            download=args.download,
            max_minutes=args.max_minutes,
            target_accuracy=args.target_accuracy,
            metrics_path=args.out,
            progress=ProgressPrinter(),
            malicious=args.malicious,
            attack=args.attack,
            **_backend_args(args),
        )
    except DataUnavailable as e:
        hint = "" if args.download else ": --data-root DIR, or --download"
        print(f"gfl simulate: {e}{hint}", file=sys.stderr)
        return 2
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
