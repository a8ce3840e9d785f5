"""``models/<job>/``: the global model at the start of each round, kept on disk so that a node
killed at any point resumes from its last checkpoint and the chain."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from gfl.fl.codec import (
    CodecError,
    blob_hash,
    decode_frame,
    decode_params,
    encode_frame,
    encode_params,
)

log = logging.getLogger(__name__)


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
        self.root.mkdir(parents=True, exist_ok=True)
        header = len(model).to_bytes(8, "big")
        write_private_file(self.path(r), header + model + state)
        return blob_hash(model), model

    def save(
        self, r: int, params: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray]
    ) -> bytes:
        """Store M_r (+ strategy state) and return M_r's hash."""
        return self.save_with_frame(r, params, extra)[0]

    def _read(self, r: int) -> tuple[bytes, bytes]:
        raw = self.path(r).read_bytes()
        n = int.from_bytes(raw[:8], "big")
        return raw[8 : 8 + n], raw[8 + n :]

    def load(self, r: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bytes]:
        """(M_r, the strategy's state, hash(M_r)) of checkpoint r (raises if unreadable)."""
        model, state = self._read(r)
        return decode_frame(model), (decode_params(state) if state else {}), blob_hash(model)

    def frame(self, r: int) -> bytes:
        """M_r's frame: the model blob peers fetch (its sha256 is the model hash)."""
        return self._read(r)[0]

    def latest(self) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], bytes] | None:
        """(r, M_r, state, hash(M_r)) of the newest readable checkpoint, or None."""
        if not self.root.exists():
            return None
        for p in sorted(self.root.glob("round-*.gflm"), reverse=True):
            try:
                raw = p.read_bytes()
                n = int.from_bytes(raw[:8], "big")
                model, state = raw[8 : 8 + n], raw[8 + n :]
                params = decode_frame(model)
                extra = decode_params(state) if state else {}
                return int(p.stem.split("-")[1]), params, extra, blob_hash(model)
            except (OSError, ValueError, CodecError) as exc:
                log.warning("skipping unreadable checkpoint %s: %s", p, exc)
        return None
