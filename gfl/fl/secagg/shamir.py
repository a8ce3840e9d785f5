"""Shamir secret sharing over the prime field of the secp256k1 group order.

Why this field: every secret shared here (self-mask seeds and pairwise seeds) is a 255-bit
number (top bit cleared), and every 255-bit number is below this prime (≈ 2^256 − 2^128),
so secrets map into the field without rejection or reduction, and elements fit 32 bytes.
(GF(2^255 − 19) would reject 19 values of 255 bits.) Speed does not matter: a dealer
shares k + 1 secrets among k + 1 holders, k of the order of ten.

A share is the point (x, P(x)) of a random polynomial P of degree t − 1 with P(0) the
secret; x is the holder's address read as an integer (distinct, non-zero, below the prime).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gfl.fl.secagg.errors import SecAggError

ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ELEMENT_BYTES = 32
_MAX_DRAWS = 64  # a 32-byte draw is below ORDER with probability 1 − 2^-128


def random_element(rand: Callable[[int], bytes]) -> int:
    """A uniform field element from a byte source (rejection sampling, bounded)."""
    for _ in range(_MAX_DRAWS):
        v = int.from_bytes(rand(ELEMENT_BYTES), "little")
        if v < ORDER:
            return v
    raise SecAggError("shamir: the random source gave no field element")


def split(
    secret: int, threshold: int, xs: Sequence[int], rand: Callable[[int], bytes]
) -> list[int]:
    """P(x) for each x, P of degree threshold − 1 with P(0) = secret and random coefficients."""
    if not 0 <= secret < ORDER:
        raise SecAggError("shamir: the secret is not a field element")
    if not 1 <= threshold <= len(xs):
        raise SecAggError(f"shamir: threshold {threshold} needs 1..{len(xs)} holders")
    _check_xs(xs)
    coeffs = [secret] + [random_element(rand) for _ in range(threshold - 1)]
    out = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % ORDER
        out.append(acc)
    return out


def reconstruct(points: Sequence[tuple[int, int]]) -> int:
    """P(0) of the polynomial of degree < len(points) through the points (Lagrange)."""
    if not points:
        raise SecAggError("shamir: no shares to reconstruct from")
    xs = [x for x, _ in points]
    _check_xs(xs)
    secret = 0
    for j, (xj, yj) in enumerate(points):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % ORDER
                den = den * (xm - xj) % ORDER
        secret = (secret + yj * num * pow(den, -1, ORDER)) % ORDER
    return secret


def encode_element(v: int) -> bytes:
    """A field element as 32 bytes, little-endian."""
    return v.to_bytes(ELEMENT_BYTES, "little")


def decode_element(raw: bytes) -> int:
    """32 little-endian bytes as a field element; SecAggError when not below the prime."""
    if len(raw) != ELEMENT_BYTES:
        raise SecAggError("shamir: a share is 32 bytes")
    v = int.from_bytes(raw, "little")
    if v >= ORDER:
        raise SecAggError("shamir: a share is not a field element")
    return v


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs) or any(not 0 < x < ORDER for x in xs):
        raise SecAggError("shamir: share points must be distinct and non-zero")
