"""Built-in models and the `gfl.models` entry-point registry.

A job names a model; it never carries code. Built in: `mlp` (McMahan's 2NN), `cnn`
(McMahan's MNIST CNN) and `resnet` (ResNet-18 adapted to 32x32 inputs, via torchvision).
A node operator adds more by installing a package with a `gfl.models` entry point whose
object is a callable `(**kwargs) -> torch.nn.Module`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import torch
from torch import nn

from gfl.errors import GflError

log = logging.getLogger(__name__)


class ModelError(GflError):
    """A model name is unknown or its settings do not fit."""


def mlp(
    in_features: int = 784, hidden: int = 200, layers: int = 2, num_classes: int = 10, **_: Any
) -> nn.Module:
    """McMahan et al.'s 2NN: two hidden layers of 200 ReLU units (784-200-200-10)."""
    mods: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _i in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, num_classes))
    return nn.Sequential(*mods)


def cnn(in_channels: int = 1, image_size: int = 28, num_classes: int = 10, **_: Any) -> nn.Module:
    """McMahan et al.'s MNIST CNN: 5x5 conv 32 and 64, each with 2x2 max-pool, fc 512, output.

    1,663,370 parameters at 28x28 (the paper's count). Softmax is in the loss.
    """
    if image_size % 4:
        raise ModelError("cnn needs image_size divisible by 4")
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def resnet(num_classes: int = 10, in_channels: int = 3, depth: int = 18, **_: Any) -> nn.Module:
    """torchvision ResNet-18/34 with a 3x3 stem and no max-pool, the usual CIFAR-10 variant."""
    import torchvision

    builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}
    if depth not in builders:
        raise ModelError("resnet depth must be 18 or 34")
    m: nn.Module = builders[depth](weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "resnet": resnet}


def _plugin(name: str) -> Callable[..., nn.Module] | None:
    for ep in entry_points(group="gfl.models"):
        if ep.name == name:
            builder: Callable[..., nn.Module] = ep.load()
            return builder
    return None


#: Guards torch's global RNG: building a model draws from it, and M_0 must come out the
#: same on every node even while another job trains in a worker thread.
RNG_LOCK = threading.RLock()


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by registered name; built-ins first, then `gfl.models` entry points."""
    factory = BUILTIN.get(name) or _plugin(name)
    if factory is None:
        raise ModelError(
            f"model {name!r} is not installed on this node "
            f"(built in: {', '.join(BUILTIN)}; more via 'gfl.models' entry points)"
        )
    try:
        with RNG_LOCK:
            model = factory(**kwargs)
    except TypeError as e:
        raise ModelError(f"model {name!r} does not accept these settings: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} did not build a torch module")
    return model


def get_params(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state (parameters and buffers) as name -> numpy copy, on the CPU."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_params(model: nn.Module, params: Mapping[str, np.ndarray]) -> None:
    """Load name -> array into the model in place; names and shapes must match exactly."""
    state = model.state_dict()
    if set(state) != set(params):
        missing = sorted(set(state) - set(params))[:3]
        extra = sorted(set(params) - set(state))[:3]
        raise ModelError(f"parameters do not fit the model (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for k, t in state.items():
            a = np.asarray(params[k])
            if tuple(a.shape) != tuple(t.shape):
                raise ModelError(
                    f"parameter {k} has shape {a.shape}, the model needs {tuple(t.shape)}"
                )
            t.copy_(torch.from_numpy(np.array(a, copy=True)))
