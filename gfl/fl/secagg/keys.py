"""Masking keys and everything derived from them.

Each member holds one X25519 key pair per job and publishes the public half (32 bytes)
when it joins. Two members i, j share Z = X25519(sk_i, pk_j) = X25519(sk_j, pk_i), from
which HKDF-SHA256 (no salt, 32 bytes out) derives, per round:

- the pairwise mask seed  s_ij = HKDF(Z, "GFL mask"  ‖ job ‖ u32be round ‖ min(i,j) ‖ max(i,j))
  with bit 255 cleared (a 255-bit secret, so it is an element of the sharing field);
- the share keys  HKDF(Z, "GFL share" ‖ job ‖ u32be round ‖ dealer ‖ holder ‖ u8 kind),
  one per direction and kind, each encrypting exactly one ciphertext.

The private key itself is never shared nor revealed: a dropped member's pairwise seeds are
recovered from shares of the seeds (see `gfl.fl.secagg.shares`), so a key stays usable for
the whole job and no past round's shares can be opened with it later.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gfl.fl.secagg.context import RoundContext
from gfl.fl.secagg.errors import SecAggError

KEY_BYTES = 32
SELF, PAIR = 0, 1  # the two kinds of shared secrets: a self-mask seed, the pairwise seeds
KINDS = (SELF, PAIR)

Rand = Callable[[int], bytes]


def clamp(raw: bytes) -> bytes:
    """The X25519 scalar of 32 private bytes (RFC 7748): the key as X25519 uses it."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


@dataclass(frozen=True)
class MaskingKey:
    """A member's X25519 masking key pair for one job (private bytes stored clamped)."""

    private: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.private, bytes) or len(self.private) != KEY_BYTES:
            raise SecAggError("a masking key is 32 bytes")
        object.__setattr__(self, "private", clamp(self.private))

    @classmethod
    def generate(cls, rand: Rand = secrets.token_bytes) -> MaskingKey:
        return cls(rand(KEY_BYTES))

    @property
    def public(self) -> bytes:
        """The 32-byte public key a member publishes when it joins."""
        return X25519PrivateKey.from_private_bytes(self.private).public_key().public_bytes_raw()

    def agree(self, public: bytes) -> bytes:
        """X25519(sk, pk); SecAggError for a malformed or low-order public key."""
        try:
            peer = X25519PublicKey.from_public_bytes(public)
            shared = X25519PrivateKey.from_private_bytes(self.private).exchange(peer)
        except (ValueError, TypeError):
            raise SecAggError("masking key: not a usable X25519 public key") from None
        return shared


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


def secret255(raw: bytes) -> bytes:
    """32 bytes with bit 255 cleared: a seed that is also a field element of the sharing."""
    return raw[:31] + bytes([raw[31] & 0x7F])


def new_seed(rand: Rand = secrets.token_bytes) -> bytes:
    """A fresh 255-bit self-mask seed."""
    return secret255(rand(32))


def pair_seed(
    key: MaskingKey, me: bytes, other: bytes, other_public: bytes, ctx: RoundContext
) -> bytes:
    """s_ij for this round: the same 32 bytes at i and at j."""
    if me == other:
        raise SecAggError("masking key: no pairwise seed with oneself")
    lo, hi = min(me, other), max(me, other)
    return secret255(_hkdf(key.agree(other_public), b"GFL mask" + ctx.encode() + lo + hi))


def share_key(
    key: MaskingKey,
    peer_public: bytes,
    ctx: RoundContext,
    dealer: bytes,
    holder: bytes,
    kind: int,
) -> bytes:
    """The ChaCha20-Poly1305 key of the dealer's `kind` shares for the holder (either side)."""
    if kind not in KINDS:
        raise SecAggError(f"share kind {kind} is unknown")
    info = b"GFL share" + ctx.encode() + dealer + holder + bytes([kind])
    return _hkdf(key.agree(peer_public), info)
