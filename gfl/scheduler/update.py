"""One member's update for one round: train on M_r, encode the delta in a frame that names
its author, job, round and base model (docs/protocol.md, 4.2), and the samples it claims.
A job whose layout has several shards gets one frame per shard and a manifest over them
(section 8): the manifest is what is committed and announced, the shards are served."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gfl.content import content_hash
from gfl.fl.codec import ErrorFeedback, UpdateMeta, encode_params
from gfl.fl.data import ArrayDataset
from gfl.fl.privacy import StepPlan
from gfl.fl.shards import encode_update, layout_of
from gfl.fl.spec import JobSpec


@dataclass
class RoundMetrics:
    """Figures of one round on this node (also written to the store)."""

    values: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str, started: float) -> None:
        self.values[f"t_{name}_s"] = round(time.monotonic() - started, 4)


@dataclass(frozen=True)
class Update:
    """An encoded update, ready to publish and commit."""

    blob: bytes  # the update frame, or a sharded update's manifest
    hash: bytes
    samples: int  # what the member claims on chain: its examples, capped by the job
    train_s: float
    privacy: StepPlan | None = None  # what its DP-SGD cost, for a job with [privacy]
    parts: tuple[bytes, ...] = ()  # a sharded update's shard frames


def make_update(
    spec: JobSpec,
    params: Mapping[str, np.ndarray],
    data: ArrayDataset,
    meta: UpdateMeta,
    *,
    device: str,
    feedback: ErrorFeedback | None,
    metrics: RoundMetrics,
) -> Update:
    """Train on ``params`` and encode the update (blocking: run it in a worker thread)."""
    from gfl.fl.trainer import train_local

    t0 = time.monotonic()
    result = train_local(spec, params, data, device=device, seed=spec.seed + meta.round)
    train_s = time.monotonic() - t0
    metrics.phase("train", t0)
    t0 = time.monotonic()
    layout = layout_of(params, spec.shards)
    parts: tuple[bytes, ...] = ()
    if layout.count > 1:
        sharded = encode_update(
            result.update, layout, spec.compression, meta=meta, feedback=feedback
        )
        blob, parts = sharded.manifest, sharded.parts
    else:
        blob = encode_params(result.update, spec.compression, feedback=feedback, meta=meta)
    metrics.phase("encode", t0)
    samples = min(result.num_samples, spec.sample_cap) if spec.sample_cap else 1
    metrics.values.update(
        {f"train_{k}": v for k, v in result.metrics.items()},
        samples=samples,
        bytes_sent_update=len(blob) + sum(map(len, parts)),
    )
    return Update(blob, content_hash(blob), samples, train_s, result.privacy, parts)
