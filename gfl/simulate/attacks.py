"""Model-poisoning attacks a simulated malicious client applies to its honest update."""

from __future__ import annotations

import numpy as np

from gfl.errors import GflError

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
