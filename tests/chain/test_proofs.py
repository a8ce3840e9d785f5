"""The pure helpers nodes and offline verifiers share, and that the contract agrees with them."""

from __future__ import annotations

import os

import pytest
from eth_utils.crypto import keccak

from gfl.chain import ChainError
from gfl.chain.logchain import GENESIS, decode_log, event_hash_step, topic_of
from gfl.chain.proofs import (
    candidate_key,
    job_id_for,
    merkle_proof,
    merkle_root,
    recover_update_signer,
    shard_statement,
    shards_hash,
    sign_update_statement,
    update_statement,
    verify_merkle_proof,
)
from gfl.identity import NodeIdentity

from .conftest import h, new_job

_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 9])
def test_merkle_proofs(size):
    addresses = [NodeIdentity.generate().eth_address for _ in range(size)]
    root = merkle_root(addresses)
    for a in addresses:
        assert verify_merkle_proof(merkle_proof(addresses, a), root, a)
    stranger = NodeIdentity.generate().eth_address
    assert not verify_merkle_proof(merkle_proof(addresses, addresses[0]), root, stranger)
    with pytest.raises(ChainError, match="not on the allow-list"):
        merkle_proof(addresses, stranger)
    assert merkle_root(reversed(addresses)) == root, "the order of the list does not matter"


def test_update_signatures():
    key = NodeIdentity.generate()
    args = (31337, "0x" + "11" * 20, h(1), 3, h(2))
    sig = sign_update_statement(key.private_key, *args)
    assert recover_update_signer(sig, *args) == key.eth_address
    assert recover_update_signer(sig, 31337, "0x" + "11" * 20, h(1), 4, h(2)) != key.eth_address
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    assert recover_update_signer(twin, *args) is None, "the high-s twin is refused, as on chain"
    assert recover_update_signer(b"\x00" * 65, *args) is None
    assert recover_update_signer(b"short", *args) is None


def test_the_contract_computes_the_same(chain):
    owner = chain.first
    fns = owner._contract.functions
    salt, spec_hash = os.urandom(32), os.urandom(32)
    assert fns.jobIdFor(owner.account, salt, spec_hash).call() == job_id_for(
        owner.chain_id, owner.registry_address, owner.account, salt, spec_hash
    )
    assert fns.updateStatement(h(7), 5, h(8)).call() == update_statement(
        owner.chain_id, owner.registry_address, h(7), 5, h(8)
    )
    assert fns.shardStatement(h(7), 5, 2, h(8), keccak(b"\x01")).call() == shard_statement(
        owner.chain_id, owner.registry_address, h(7), 5, 2, h(8), b"\x01"
    )
    start = owner.block_number()
    job_id = new_job(owner, min_updates=1, max_participants=1)
    owner.join_job(job_id)
    owner.commit_update(job_id, 0, h(1), 1)
    shards = shards_hash([h(60), h(61)])
    owner.vote(job_id, 0, h(50), b"", shards)
    key = candidate_key(h(50), b"", shards)
    assert owner.member(job_id, owner.account).vote_key_prefix == key[:10]
    assert owner.final_key(job_id, 0) == key[:10], "a sharded round keeps its key"
    mine, _ = owner.poll_events(start, job_id=job_id)
    head = GENESIS
    for e in mine:
        head = event_hash_step(head, e)
    assert (len(mine), head) == owner.log_head(job_id)


def test_decode_log_ignores_what_is_not_ours():
    assert decode_log({"topics": [], "data": "0x"}) is None
    assert decode_log({"topics": [os.urandom(32)], "data": "0x"}) is None
    # a registry topic with the wrong number of indexed fields
    assert decode_log({"topics": [topic_of("Voted")], "data": "0x"}) is None
