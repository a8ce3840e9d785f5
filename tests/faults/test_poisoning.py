"""Model poisoning in the simulator: 3 of 10 clients send x-10 scaled updates.

FedAvg is wrecked; the robust strategies stay within 2 pp of their own clean run.
The full strategy x attack table is bench/poisoning.py.
"""

import numpy as np
import pytest
import torch

from gfl.errors import GflError
from gfl.fl.spec import JobSpec
from gfl.fl.strategies import StrategyError
from gfl.simulate.engine import parse_attack, poison, simulate

torch.set_num_threads(1)

CLIENTS, BAD, ROUNDS = 10, 3, 10


def _final(strategy: str, kwargs: dict, malicious: float) -> float:
    spec = JobSpec(
        name="poison",
        model="mlp",
        dataset="digits",
        rounds=ROUNDS,
        model_kwargs={"in_features": 64},
        lr=0.1,
        batch_size=16,
        local_epochs=2,
        strategy=strategy,
        strategy_kwargs=kwargs,
    )
    rows = simulate(
        spec, num_clients=CLIENTS, malicious=malicious, attack="scale:-10", partition="iid"
    )
    return rows[-1]["test_accuracy"]


def _wrecked_fedavg() -> float:
    """FedAvg's final accuracy under the attack; 0.0 when its global model went non-finite
    (every update after it is non-finite and refused). Any other error is a failure."""
    try:
        return _final("fedavg", {}, BAD / CLIENTS)
    except StrategyError as exc:
        assert "no usable update" in str(exc), exc
        return 0.0


def test_poison_transforms_are_well_formed():
    u = {"w": np.array([1.0, -2.0], dtype=np.float32), "n": np.array([3], dtype=np.int64)}
    rng = np.random.default_rng(0)
    assert poison(u, "signflip", rng)["w"].tolist() == [-1.0, 2.0]
    assert poison(u, "scale:-10", rng)["w"].tolist() == [-10.0, 20.0]
    g = poison(u, "gaussian:2", rng)
    assert g["w"].dtype == np.float32 and g["w"].shape == (2,) and g["n"].tolist() == [3]
    assert parse_attack("scale") == ("scale", -10.0)
    with pytest.raises(GflError, match="unknown"):
        parse_attack("flood")
    with pytest.raises(GflError, match="malicious"):
        simulate(
            JobSpec(name="x", model="mlp", dataset="digits", rounds=1), num_clients=2, malicious=1.0
        )


def test_scaled_updates_break_fedavg_but_not_median_or_krum():
    clean_avg = _final("fedavg", {}, 0.0)
    attacked_avg = _wrecked_fedavg()
    assert clean_avg > 0.85
    assert attacked_avg < clean_avg - 0.30, (clean_avg, attacked_avg)
    for name, kwargs in (("median", {}), ("krum", {"f": BAD})):
        clean = _final(name, kwargs, 0.0)
        attacked = _final(name, kwargs, BAD / CLIENTS)
        assert attacked >= clean - 0.02, (name, clean, attacked)
        assert attacked > 0.85, (name, attacked)
