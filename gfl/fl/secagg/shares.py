"""Dealing: a member's mask secrets, split among its holders and encrypted to each.

A dealer i has k_r + 1 secrets for the round: its self-mask seed b_i and one pairwise seed
s_ij per neighbour j (ascending). Each is split (Shamir, threshold t_r) among the holders
N[i] (its neighbours and itself); holder h receives two ciphertexts: its share of b_i
(kind SELF) and its shares of every s_ij (kind PAIR), each under its own share key
(`gfl.fl.secagg.keys.share_key`) with ChaCha20-Poly1305, a 12-byte zero nonce (each key
encrypts one message) and the associated data "GFLD" ‖ job ‖ u32be round ‖ dealer ‖ holder ‖
u8 kind. A holder later reveals one key, never both kinds for one dealer; anyone can then
open that ciphertext from the public blob and check it.

Sharing the per-round pairwise seeds, not the private key, means a dropped member's key is
never reconstructed: its later rounds and the shares it held stay private.

Blob (all integers big-endian except field elements, which are 32 bytes little-endian):

    "GFLD" ‖ u8 1 ‖ job (32) ‖ u32 round ‖ dealer (20) ‖ u8 t ‖ u8 h
    ‖ h holders (20 each, ascending)
    ‖ h commitments (32 each): sha256("GFL commit" ‖ secret), b_i first, then each s_ij
    ‖ for each holder: SELF ciphertext (32 + 16) ‖ PAIR ciphertext (32 · (h − 1) + 16)
"""

from __future__ import annotations

import hashlib
import secrets as _secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gfl.fl.secagg import shamir
from gfl.fl.secagg.context import RoundContext
from gfl.fl.secagg.errors import SecAggError
from gfl.fl.secagg.graph import NeighbourGraph
from gfl.fl.secagg.keys import PAIR, SELF, MaskingKey, Rand, new_seed, pair_seed, share_key

MAGIC = b"GFLD"  # dealt shares
VERSION = 1
HEADER_BYTES = 4 + 1 + 32 + 4 + 20 + 1 + 1
TAG_BYTES = 16
_NONCE = bytes(12)


def commitment(secret: bytes) -> bytes:
    """sha256("GFL commit" ‖ secret): lets anyone check a reconstructed secret."""
    return hashlib.sha256(b"GFL commit" + secret).digest()


def associated_data(ctx: RoundContext, dealer: bytes, holder: bytes, kind: int) -> bytes:
    return MAGIC + ctx.encode() + dealer + holder + bytes([kind])


def blob_size(holders: int) -> int:
    """Bytes of a shares blob with h holders (k_r = h − 1 neighbours)."""
    per_holder = 20 + 32 + (32 + TAG_BYTES) + (32 * (holders - 1) + TAG_BYTES)
    return HEADER_BYTES + holders * per_holder


@dataclass(frozen=True)
class MaskSecrets:
    """What a participant masks with: its self seed and its pairwise seeds (kept private)."""

    ctx: RoundContext
    me: bytes
    self_seed: bytes = field(repr=False)
    pair_seeds: tuple[tuple[bytes, bytes], ...] = field(repr=False)  # (neighbour, s_ij)


@dataclass(frozen=True)
class SharesBlob:
    """A dealer's encrypted shares for one round (the canonical bytes are `to_bytes`)."""

    ctx: RoundContext
    dealer: bytes
    threshold: int
    holders: tuple[bytes, ...]
    commitments: tuple[bytes, ...]
    ciphertexts: tuple[tuple[bytes, bytes], ...]  # per holder: (SELF, PAIR)

    @property
    def neighbours(self) -> tuple[bytes, ...]:
        return tuple(h for h in self.holders if h != self.dealer)

    def to_bytes(self) -> bytes:
        head = MAGIC + bytes([VERSION]) + self.ctx.encode() + self.dealer
        parts = [head, bytes([self.threshold, len(self.holders)]), *self.holders]
        parts += self.commitments
        for ct_self, ct_pair in self.ciphertexts:
            parts += [ct_self, ct_pair]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> SharesBlob:
        """Parse and check a blob's layout; SecAggError names what is wrong."""
        if len(data) < HEADER_BYTES or data[:4] != MAGIC or data[4] != VERSION:
            raise SecAggError("shares blob: not a version-1 GFLD blob")
        ctx = RoundContext(data[5:37], int.from_bytes(data[37:41], "big"))
        dealer, t, h = data[41:61], data[61], data[62]
        if h < 1 or len(data) != blob_size(h):
            raise SecAggError(f"shares blob: {len(data)} bytes do not match {h} holders")
        at = HEADER_BYTES
        holders = tuple(data[at + 20 * i : at + 20 * (i + 1)] for i in range(h))
        at += 20 * h
        commitments = tuple(data[at + 32 * i : at + 32 * (i + 1)] for i in range(h))
        at += 32 * h
        size_self, size_pair = 32 + TAG_BYTES, 32 * (h - 1) + TAG_BYTES
        cts = []
        for _ in range(h):
            cts.append(
                (data[at : at + size_self], data[at + size_self : at + size_self + size_pair])
            )
            at += size_self + size_pair
        blob = cls(ctx, dealer, t, holders, commitments, tuple(cts))
        if list(holders) != sorted(set(holders)) or dealer not in holders:
            raise SecAggError("shares blob: holders must be ascending, distinct, with the dealer")
        if not 1 <= t <= h:
            raise SecAggError(f"shares blob: threshold {t} with {h} holders")
        return blob

    def mismatch(self, ctx: RoundContext, graph: NeighbourGraph) -> str | None:
        """Why this blob does not belong to the round and its graph (None when it does)."""
        if self.ctx != ctx:
            return "the blob is for another job or round"
        if self.dealer not in graph.adjacency:
            return "the dealer is not a member of the round"
        if self.holders != graph.holders(self.dealer):
            return "the holders are not the dealer's neighbours in the round's graph"
        if self.threshold != graph.threshold:
            return f"threshold {self.threshold}, the round's is {graph.threshold}"
        return None

    def open(self, holder: bytes, kind: int, key: bytes) -> list[int] | None:
        """The holder's shares of `kind` (one for SELF, h − 1 for PAIR), or None if `key`
        does not open them."""
        try:
            i = self.holders.index(holder)
        except ValueError:
            return None
        ct = self.ciphertexts[i][kind]
        try:
            plain = ChaCha20Poly1305(key).decrypt(
                _NONCE, ct, associated_data(self.ctx, self.dealer, holder, kind)
            )
            return [shamir.decode_element(plain[j : j + 32]) for j in range(0, len(plain), 32)]
        except (InvalidTag, SecAggError, ValueError):
            return None


def deal(
    ctx: RoundContext,
    graph: NeighbourGraph,
    me: bytes,
    key: MaskingKey,
    public_keys: Mapping[bytes, bytes],
    rand: Rand = _secrets.token_bytes,
) -> tuple[SharesBlob, MaskSecrets]:
    """Make this round's mask secrets and the blob of their encrypted shares."""
    holders = graph.holders(me)
    neighbours = graph.neighbours(me)
    pks = {h: (key.public if h == me else _public(public_keys, h)) for h in holders}
    pairs = tuple((j, pair_seed(key, me, j, pks[j], ctx)) for j in neighbours)
    own = new_seed(rand)
    secret_list = [own] + [s for _, s in pairs]
    xs = [int.from_bytes(h, "big") for h in holders]
    shares = [
        shamir.split(int.from_bytes(s, "little"), graph.threshold, xs, rand) for s in secret_list
    ]
    cts = []
    for col, h in enumerate(holders):
        ys = [shamir.encode_element(shares[row][col]) for row in range(len(secret_list))]
        sealed = []
        for kind, plain in ((SELF, ys[0]), (PAIR, b"".join(ys[1:]))):
            aead = ChaCha20Poly1305(share_key(key, pks[h], ctx, me, h, kind))
            sealed.append(aead.encrypt(_NONCE, plain, associated_data(ctx, me, h, kind)))
        cts.append((sealed[0], sealed[1]))
    blob = SharesBlob(
        ctx, me, graph.threshold, holders, tuple(commitment(s) for s in secret_list), tuple(cts)
    )
    return blob, MaskSecrets(ctx, me, own, pairs)


def recover_secrets(
    blob: SharesBlob, key: MaskingKey, public_keys: Mapping[bytes, bytes]
) -> MaskSecrets:
    """A dealer's own secrets back from its blob (after a restart between dealing and
    masking): it can open every share it sealed."""
    me = blob.dealer
    if key.public != public_keys.get(me, key.public):
        raise SecAggError("shares blob: this key did not deal it")
    opened: dict[int, list[tuple[int, int]]] = {}
    for h in blob.holders[: blob.threshold]:
        pk = key.public if h == me else _public(public_keys, h)
        for kind in (SELF, PAIR):
            ys = blob.open(h, kind, share_key(key, pk, blob.ctx, me, h, kind))
            if ys is None:
                raise SecAggError("shares blob: this key did not deal it")
            for j, y in enumerate(ys):
                index = 0 if kind == SELF else j + 1  # b_i first, then each s_ij
                opened.setdefault(index, []).append((int.from_bytes(h, "big"), y))
    seeds = []
    for index in range(len(blob.holders)):
        seed = shamir.encode_element(shamir.reconstruct(opened[index]))
        if commitment(seed) != blob.commitments[index]:
            raise SecAggError("shares blob: its shares do not match its commitments")
        seeds.append(seed)
    return MaskSecrets(blob.ctx, me, seeds[0], tuple(zip(blob.neighbours, seeds[1:], strict=True)))


def _public(public_keys: Mapping[bytes, bytes], member: bytes) -> bytes:
    pk = public_keys.get(member)
    if not isinstance(pk, bytes) or len(pk) != 32:
        raise SecAggError(f"masking: no 32-byte public key for 0x{member.hex()}")
    return pk
