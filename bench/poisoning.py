"""Accuracy under model poisoning: strategy x attack on sklearn digits with the simulator.

30 % of 10 clients (the default) send sign-flipped, scaled or gaussian-noise updates; the
table gives the final test accuracy and the difference to the clean run of the same
strategy (pp) and to clean FedAvg. Krum's f is set to the attacker count and trimmed mean
trims that many values on each side.

    .venv/bin/python bench/poisoning.py --rounds 10
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import torch

from gfl.fl.spec import JobSpec
from gfl.fl.strategies import StrategyError
from gfl.simulate.engine import simulate


def digits_spec(strategy: str, kwargs: dict[str, Any], rounds: int, seed: int = 0) -> JobSpec:
    """The small digits job the bench and the CI test share."""
    return JobSpec(
        name=f"poison-{strategy}",
        model="mlp",
        dataset="digits",
        rounds=rounds,
        model_kwargs={"in_features": 64},
        lr=0.1,
        batch_size=16,
        local_epochs=2,
        strategy=strategy,
        strategy_kwargs=kwargs,
        seed=seed,
    )


def strategies(clients: int, bad: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Strategy label -> (name, kwargs) tuned to `bad` attackers out of `clients`."""
    return {
        "fedavg": ("fedavg", {}),
        "median": ("median", {}),
        "trimmed_mean": ("trimmed_mean", {"beta": min(0.49, (bad + 0.5) / clients)}),
        "krum": ("krum", {"f": bad}),
        "multikrum": ("multikrum", {"f": bad, "m": clients - bad}),
    }


def final_accuracy(
    strategy: str,
    kwargs: dict[str, Any],
    *,
    clients: int,
    malicious: float,
    attack: str,
    rounds: int,
    seed: int = 0,
) -> float:
    """Final test accuracy; 0.0 when the model blew up (every update non-finite)."""
    try:
        rows = simulate(
            digits_spec(strategy, kwargs, rounds, seed),
            num_clients=clients,
            partition="iid",
            malicious=malicious,
            attack=attack,
        )
    except StrategyError:  # "no usable update": the global model itself went non-finite
        return 0.0
    return float(rows[-1]["test_accuracy"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--malicious", type=float, default=0.3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--attacks", default="signflip,scale:-10,gaussian:1.0")
    p.add_argument("--strategies", default="fedavg,median,trimmed_mean,krum,multikrum")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    bad = round(args.malicious * args.clients)
    table = strategies(args.clients, bad)
    attacks = args.attacks.split(",")
    t0 = time.monotonic()
    results: dict[str, dict[str, float]] = {}
    for label in args.strategies.split(","):
        name, kwargs = table[label]
        results[label] = {}
        for attack in ["clean", *attacks]:
            results[label][attack] = final_accuracy(
                name,
                kwargs,
                clients=args.clients,
                malicious=0.0 if attack == "clean" else args.malicious,
                attack="signflip" if attack == "clean" else attack,
                rounds=args.rounds,
                seed=args.seed,
            )
            print(f"{label:>13} {attack:>14} {results[label][attack]:.4f}", file=sys.stderr)
    base = results.get("fedavg", {}).get("clean")
    print(
        f"\n{args.clients} clients, {bad} malicious, {args.rounds} rounds, digits iid, "
        f"seed {args.seed}; accuracy (pp vs the same strategy's clean run)"
    )
    print("| strategy | clean | " + " | ".join(attacks) + " |")
    print("|---|---|" + "---|" * len(attacks))
    for label, row in results.items():
        clean = row["clean"]
        cells = [f"{clean:.4f}" + (f" ({(clean - base) * 100:+.1f} vs fedavg)" if base else "")]
        cells += [f"{row[a]:.4f} ({(row[a] - clean) * 100:+.1f})" for a in attacks]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\n{time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
