"""What nodes compute and the JobRegistry checks: job ids, vote keys and masks, allow-list
Merkle proofs, signed update statements. Pure functions, no web3: an offline verifier and
the node share them (docs/contract.md gives each formula).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from gfl.chain.errors import ChainError

UPDATE_TAG = "GFL update"
SHARD_TAG = "GFL shard"
#: secp256k1n / 2: the contract refuses the high-s twin of a signature.
_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


def spec_hash_of(spec_bytes: bytes) -> bytes:
    """The hash a job registers for its canonical spec bytes (sha256)."""
    return hashlib.sha256(spec_bytes).digest()


def job_id_for(chain_id: int, registry: str, owner: str, salt: bytes, spec_hash: bytes) -> bytes:
    """keccak256(abi.encode(chainid, registry, owner, salt, specHash)), as `register` computes."""
    return keccak(
        abi_encode(
            ["uint256", "address", "address", "bytes32", "bytes32"],
            [chain_id, _addr(registry), _addr(owner), _b32(salt), _b32(spec_hash)],
        )
    )


# ------------------------------------------------------------------- votes


def candidate_key(model_hash: bytes, mask: bytes, shards_hash: bytes) -> bytes:
    """The key votes are counted under:
    keccak256(abi.encode(modelHash, keccak256(mask), shardsHash))."""
    return keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32"],
            [_b32(model_hash), keccak(bytes(mask)), _b32(shards_hash)],
        )
    )


def shards_hash(reduced_hashes: Sequence[bytes]) -> bytes:
    """A sharded round's shards hash: keccak256 of its reduced shards' hashes (32 bytes
    each) in shard order, what the contract's ``slashShardLie`` recomputes."""
    return keccak(b"".join(_b32(h) for h in reduced_hashes))


# -------------------------------------------------------------- allow-list


def allow_leaf(address: str) -> bytes:
    """keccak256(abi.encode(address)): an allow-list leaf."""
    return keccak(abi_encode(["address"], [_addr(address)]))


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


def _levels(addresses: Iterable[str]) -> list[list[bytes]]:
    leaves = sorted({allow_leaf(a) for a in addresses})
    if not leaves:
        raise ChainError("an allow-list needs at least one address")
    levels = [leaves]
    while len(levels[-1]) > 1:
        level = levels[-1]
        up = [_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])  # an odd node moves up unpaired
        levels.append(up)
    return levels


def merkle_root(addresses: Iterable[str]) -> bytes:
    """The allow-list root (sorted-pair keccak tree over `allow_leaf`s)."""
    return _levels(addresses)[-1][0]


def merkle_proof(addresses: Iterable[str], address: str) -> list[bytes]:
    """The proof `join` needs for `address` on the allow-list of `addresses`."""
    levels = _levels(addresses)
    leaf = allow_leaf(address)
    try:
        index = levels[0].index(leaf)
    except ValueError:
        raise ChainError(f"{address} is not on the allow-list") from None
    proof = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return proof


def verify_merkle_proof(proof: Sequence[bytes], root: bytes, address: str) -> bool:
    h = allow_leaf(address)
    for p in proof:
        h = _pair(h, bytes(p))
    return h == bytes(root)


# --------------------------------------------------------- update statements


def update_statement(
    chain_id: int, registry: str, job_id: bytes, round: int, update_hash: bytes
) -> bytes:
    """keccak256(abi.encode("GFL update", chainid, registry, jobId, round, hash)): what a
    member signs for each update it announces."""
    return keccak(
        abi_encode(
            ["string", "uint256", "address", "bytes32", "uint32", "bytes32"],
            [UPDATE_TAG, chain_id, _addr(registry), _b32(job_id), round, _b32(update_hash)],
        )
    )


def sign_update_statement(
    private_key: bytes,
    chain_id: int,
    registry: str,
    job_id: bytes,
    round: int,
    update_hash: bytes,
) -> bytes:
    """The 65-byte EIP-191 (personal_sign) signature of the update statement."""
    return _sign(private_key, update_statement(chain_id, registry, job_id, round, update_hash))


def recover_update_signer(
    signature: bytes,
    chain_id: int,
    registry: str,
    job_id: bytes,
    round: int,
    update_hash: bytes,
) -> str | None:
    """Who signed the update statement, or None for a malformed signature."""
    return _recover(signature, update_statement(chain_id, registry, job_id, round, update_hash))


# ---------------------------------------------------------- shard statements


def shard_statement(
    chain_id: int,
    registry: str,
    job_id: bytes,
    round: int,
    shard: int,
    reduced_hash: bytes,
    mask: bytes,
) -> bytes:
    """keccak256(abi.encode("GFL shard", chainid, registry, jobId, round, shard, hash,
    keccak256(mask))): what an aggregator signs for a reduced shard it publishes."""
    return keccak(
        abi_encode(
            ["string", "uint256", "address", "bytes32", "uint32", "uint32", "bytes32", "bytes32"],
            [
                SHARD_TAG,
                chain_id,
                _addr(registry),
                _b32(job_id),
                round,
                shard,
                _b32(reduced_hash),
                keccak(bytes(mask)),
            ],
        )
    )


def sign_shard_statement(
    private_key: bytes,
    chain_id: int,
    registry: str,
    job_id: bytes,
    round: int,
    shard: int,
    reduced_hash: bytes,
    mask: bytes,
) -> bytes:
    """The 65-byte EIP-191 (personal_sign) signature of the shard statement."""
    statement = shard_statement(chain_id, registry, job_id, round, shard, reduced_hash, mask)
    return _sign(private_key, statement)


def recover_shard_signer(
    signature: bytes,
    chain_id: int,
    registry: str,
    job_id: bytes,
    round: int,
    shard: int,
    reduced_hash: bytes,
    mask: bytes,
) -> str | None:
    """Who signed the shard statement, or None for a malformed signature or statement."""
    try:
        statement = shard_statement(chain_id, registry, job_id, round, shard, reduced_hash, mask)
    except Exception:  # eth_abi refuses out-of-range values with its own exception types
        return None
    return _recover(signature, statement)


def _sign(private_key: bytes, statement: bytes) -> bytes:
    signed = Account.sign_message(encode_defunct(primitive=statement), private_key)
    return bytes(signed.signature)


def _recover(signature: bytes, statement: bytes) -> str | None:
    signature = bytes(signature)
    if len(signature) != 65 or int.from_bytes(signature[32:64], "big") > _HALF_N:
        return None
    try:
        signer: str = Account.recover_message(
            encode_defunct(primitive=statement), signature=signature
        )
    except Exception:
        return None
    return signer


def _addr(value: str) -> str:
    try:
        return to_checksum_address(value)
    except (ValueError, TypeError):
        raise ChainError(f"{value!r} is not an Ethereum address") from None


def _b32(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise ChainError("a hash, salt or id must be 32 bytes")
    return bytes(value)
