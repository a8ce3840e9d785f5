"""What a node checks before it publishes or joins a job: that it could run the job itself.

Publishing registers a job for good and joining pays its bond, so both refuse, before any
transaction, a job this node could not run: a model that is not installed or does not build
from the job's ``model_kwargs``, a trainer that is not installed, a model that does not take
this node's data (its shape or its labels). The model is built once, on the CPU, from the
job's seed: for a publisher that build is M_0. Every refusal is one sentence.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import numpy as np

from gfl.errors import GflError

if TYPE_CHECKING:
    from gfl.fl.data import ArrayDataset
    from gfl.fl.spec import JobSpec

SAMPLE = 16  # examples the model is tried on: the first ones and one of the highest label


class NotRunnable(GflError):
    """This node could not run the job (its model, trainer or data); the message says why."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sample(data: ArrayDataset) -> ArrayDataset:
    from gfl.fl.data import ArrayDataset

    head = np.arange(min(len(data), SAMPLE))
    idx = np.unique(np.concatenate([head, [int(np.argmax(data.y))]]))
    return ArrayDataset(data.x[idx], data.y[idx])


def check_runnable(spec: JobSpec, data: ArrayDataset | None = None) -> dict[str, np.ndarray]:
    """M_0's parameters for ``spec``, built here on the CPU; `NotRunnable` when this node
    could not run the job. With ``data`` (its training data, when it takes part) the model
    must also take a few of its examples and their labels. Blocking: call it in a thread."""
    from gfl.fl.trainer import evaluate, initial_params

    if spec.trainer != "default" and not entry_points(group="gfl.trainers", name=spec.trainer):
        raise NotRunnable(
            f"trainer {spec.trainer!r} is not installed on this node ('gfl.trainers' entry point)"
        )
    try:
        params = initial_params(spec)
    except GflError as exc:
        raise NotRunnable(str(exc)) from None
    except Exception as exc:  # the model's own code refused its settings
        raise NotRunnable(
            f"model {spec.model!r} does not build from model_kwargs "
            f"{dict(spec.model_kwargs)}: {_first_line(exc)}"
        ) from None
    if data is None or spec.trainer != "default":
        return params
    if not len(data):
        raise NotRunnable(f"this node's dataset {spec.dataset!r} has no examples")
    try:
        evaluate(spec, params, _sample(data))
    except Exception as exc:
        raise NotRunnable(
            f"model {spec.model!r} with model_kwargs {dict(spec.model_kwargs)} does not fit "
            f"this node's {spec.dataset!r} data: {_first_line(exc)}"
        ) from None
    return params


def model0_frame(spec: JobSpec, data: ArrayDataset | None = None) -> bytes:
    """M_0's blob for a job this node publishes (`check_runnable`, then encoded)."""
    from gfl.fl.codec import encode_frame

    return encode_frame(check_runnable(spec, data))
