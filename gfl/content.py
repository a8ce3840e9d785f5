"""Content addressing, and the size limit every layer applies to what it receives.

A blob (an update, a model, M_0) is named by the sha256 of its bytes; the same name is
committed on chain, announced over gossip, asked for over the blob protocol and used as
the file name in the blob store.
"""

from __future__ import annotations

import hashlib

#: The largest blob (and decoded parameter set) any node accepts: 1 GiB.
MAX_BLOB_BYTES = 1 << 30


def content_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte name of a blob: sha256 of its bytes."""
    return hashlib.sha256(data).digest()
