"""``models/<job>/``: the global model at the start of each round, kept on disk so that a node
killed at any point resumes from its last checkpoint and the chain.

A checkpoint is written whole to a temp file, synced and renamed into place, so a crash
leaves the previous round's file and at most a stale temp file (removed by `latest`).
Its header carries the sha256 of the model frame (the model hash committed on chain) and
of the strategy state: a file damaged on disk is reported and skipped, never resumed
from, and the newest intact one is used instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from gfl.errors import GflError
from gfl.fl.codec import (
    CodecError,
    blob_hash,
    decode_frame,
    decode_params,
    encode_frame,
    encode_params,
)

log = logging.getLogger(__name__)

MAGIC = b"GFLM"
VERSION = 1
# magic, version, model frame length, state length, sha256 of each
_HEADER = struct.Struct(">4sBQQ32s32s")
STATE_LOST = "state-lost"  # the note that the strategy state kept here is not the job's


class CheckpointError(GflError):
    """A checkpoint cannot be written (disk full, read-only), or a file is damaged."""


def encode_checkpoint(model: bytes, state: bytes) -> bytes:
    """A checkpoint file's bytes: header (lengths and checksums), model frame, state."""
    digest = hashlib.sha256(state).digest()
    header = _HEADER.pack(MAGIC, VERSION, len(model), len(state), blob_hash(model), digest)
    return header + model + state


def decode_checkpoint(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(model frame, state, model hash) of a checkpoint file; `CheckpointError` when damaged."""
    if not raw.startswith(MAGIC):
        # the first format: the model frame's length, the frame, the state; no checksums
        n = int.from_bytes(raw[:8], "big")
        if len(raw) < 8 + n:
            raise CheckpointError(f"truncated: {len(raw)} bytes, the model alone needs {8 + n}")
        model = raw[8 : 8 + n]
        return model, raw[8 + n :], blob_hash(model)
    if len(raw) < _HEADER.size:
        raise CheckpointError(f"truncated: {len(raw)} bytes, shorter than its header")
    _, version, n_model, n_state, model_hash, state_hash = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise CheckpointError(f"written in format {version}; this GFL reads {VERSION}")
    if len(raw) != _HEADER.size + n_model + n_state:
        raise CheckpointError(
            f"{len(raw)} bytes where its header says {_HEADER.size + n_model + n_state}"
        )
    model = raw[_HEADER.size : _HEADER.size + n_model]
    state = raw[_HEADER.size + n_model :]
    if blob_hash(model) != model_hash or hashlib.sha256(state).digest() != state_hash:
        raise CheckpointError("its content fails its checksum")
    return model, state, model_hash


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """``models/<job>/``: the global model at the start of each round, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, r: int) -> Path:
        return self.root / f"round-{r:06d}.gflm"

    def save_with_frame(
        self, r: int, params: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray]
    ) -> tuple[bytes, bytes]:
        """Store M_r (+ strategy state); returns (M_r's hash, its frame): the frame is also
        the model blob peers fetch, and its sha256 the model hash committed on chain."""
        from gfl.identity import write_private_file

        model = encode_frame(params)
        state = encode_params(dict(extra)) if extra else b""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_private_file(self.path(r), encode_checkpoint(model, state))
            _fsync_dir(self.root)  # the rename itself survives a power cut too
        except OSError as exc:
            raise CheckpointError(
                f"cannot write the checkpoint {self.path(r)}: {exc.strerror or exc}"
            ) from None
        return blob_hash(model), model

    def save(
        self, r: int, params: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray]
    ) -> bytes:
        """Store M_r (+ strategy state) and return M_r's hash."""
        return self.save_with_frame(r, params, extra)[0]

    def load(self, r: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bytes]:
        """(M_r, the strategy's state, hash(M_r)) of checkpoint r (`CheckpointError` if it
        is damaged)."""
        model, state, model_hash = decode_checkpoint(self.path(r).read_bytes())
        return decode_frame(model), (decode_params(state) if state else {}), model_hash

    def frame(self, r: int) -> bytes:
        """M_r's frame: the model blob peers fetch (its sha256 is the model hash)."""
        return decode_checkpoint(self.path(r).read_bytes())[0]

    def lose_state(self, r: int) -> None:
        """Note, for good, that the strategy state kept here is not the job's since round r
        (this node took round r's model without recomputing the round)."""
        from gfl.identity import write_private_file

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_private_file(self.root / STATE_LOST, f"{r}\n".encode())
        except OSError as exc:
            raise CheckpointError(f"cannot write {self.root / STATE_LOST}: {exc}") from None

    def state_lost(self) -> int | None:
        """The round `lose_state` noted, or None (a damaged note counts as round 0)."""
        try:
            text = (self.root / STATE_LOST).read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return 0
        return int(text) if text.strip().isdigit() else 0

    def latest(self) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], bytes] | None:
        """(r, M_r, state, hash(M_r)) of the newest intact checkpoint, or None."""
        if not self.root.exists():
            return None
        for stale in self.root.glob("round-*.gflm.tmp"):  # a save cut short by a crash
            stale.unlink(missing_ok=True)
        for p in sorted(self.root.glob("round-*.gflm"), reverse=True):
            try:
                model, state, model_hash = decode_checkpoint(p.read_bytes())
                params = decode_frame(model)
                extra = decode_params(state) if state else {}
                return int(p.stem.split("-")[1]), params, extra, model_hash
            except (OSError, ValueError, CodecError, CheckpointError) as exc:
                log.warning("skipping damaged checkpoint %s: %s", p, exc)
        return None
