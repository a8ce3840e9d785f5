"""Chain unavailable, wrong chain, no registry: one clear error, retries, nothing lost."""

from __future__ import annotations

import os
import threading
import time

import pytest

from gfl.chain import (
    ChainError,
    ChainUnavailable,
    ContractRevert,
    JobStatus,
    NoRegistry,
    WrongChain,
    deploy_registry,
    open_chain,
)
from gfl.chain.devchain import EMBEDDED_DEV_KEY, free_port, fund, serve_embedded
from gfl.identity import NodeIdentity

from .conftest import require_anvil


def test_rpc_down_is_one_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ChainUnavailable, match=r"did not answer within 0\.5s .*cannot connect"):
        open_chain(url, NodeIdentity.generate(), registry_address="0x" + "11" * 20, timeout=0.5)
    assert time.monotonic() - started < 5


def test_connecting_retries_until_the_chain_comes_up(tmp_path):
    port = free_port()
    servers = []
    timer = threading.Timer(0.6, lambda: servers.append(serve_embedded(port=port)))
    timer.start()
    try:
        identity = NodeIdentity.generate()
        registry = open_chain(
            f"http://127.0.0.1:{port}", identity, registry_address=_embedded_registry(), timeout=10
        )
        assert registry.block_number() >= 1
        registry.close()
    finally:
        timer.join()
        for s in servers:
            s.close()


def _embedded_registry() -> str:
    from gfl.chain.embedded import EmbeddedChain

    chain = EmbeddedChain()
    try:
        return chain.registry_address
    finally:
        chain.close()


def test_chain_going_down_mid_job_loses_nothing(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = serve_embedded(port=port, state_dir=tmp_path / "chain")
    owner, member = NodeIdentity.generate(), NodeIdentity.generate()
    fund(url, EMBEDDED_DEV_KEY, [owner.eth_address, member.eth_address], 10**20)
    a = open_chain(url, owner, registry_address=server.registry_address, timeout=2)
    b = open_chain(url, member, registry_address=server.registry_address, timeout=2)
    job_id = os.urandom(32)
    a.register_job(job_id, b"\x01" * 32, 1, 2, 600)
    a.join_job(job_id)
    b.join_job(job_id)
    a.commit_update(job_id, 0, b"\xaa" * 32, 5)
    server.close()

    with pytest.raises(ChainUnavailable):
        b.commit_update(job_id, 0, b"\xbb" * 32, 6)
    with pytest.raises(ChainUnavailable):
        b.get_job(job_id)

    server = serve_embedded(port=port, state_dir=tmp_path / "chain")  # same journal
    try:
        job = b.get_job(job_id)
        assert job.joined_count == 2 and job.status is JobStatus.ACTIVE
        b.commit_update(job_id, 0, b"\xbb" * 32, 6)  # the retry goes through, nonce recovered
        r0 = a.get_round(job_id, 0)
        assert [u.samples for u in r0.updates] == [5, 6] and r0.closed
        assert a.get_job(job_id).status is JobStatus.FINISHED
    finally:
        a.close()
        b.close()
        server.close()


def test_a_stale_nonce_is_read_again_on_the_embedded_chain():
    """py-evm words "nonce too low" as "Expected 6, but got 5" (seen after a chain restart)."""
    with serve_embedded() as server:
        owner = NodeIdentity.generate()
        fund(server.url, EMBEDDED_DEV_KEY, [owner.eth_address], 10**20)
        a = open_chain(server.url, owner, registry_address=server.registry_address, timeout=2)
        try:
            job_id = os.urandom(32)
            a.register_job(job_id, b"\x01" * 32, 1, 1, 600)
            a._sender._nonce = 0  # as if the last transaction's answer had been lost
            a.join_job(job_id)
            assert a.get_job(job_id).joined_count == 1
        finally:
            a.close()


def test_no_registry_at_the_address():
    with serve_embedded() as server:
        identity = NodeIdentity.generate()
        with pytest.raises(NoRegistry, match="no contract at"):
            open_chain(server.url, identity, registry_address="0x" + "12" * 20, timeout=2)
        with pytest.raises(NoRegistry, match="gfl chain deploy"):
            open_chain(server.url, identity, timeout=2)
        with pytest.raises(NoRegistry):
            open_chain("embedded", identity, registry_address="0x" + "12" * 20)


def test_wrong_chain_id(tmp_path):
    with serve_embedded() as server:
        identity = NodeIdentity.generate()
        with pytest.raises(WrongChain, match="expected chain 1"):
            open_chain(
                server.url,
                identity,
                registry_address=server.registry_address,
                chain_id=1,
                timeout=2,
            )
        with pytest.raises(WrongChain):
            open_chain("embedded", identity, chain_id=1)
        # a node remembers its chain in its state dir
        state = tmp_path / "node"
        (state).mkdir()
        (state / "chain.json").write_text('{"chain_id": 31337, "url": "http://old"}')
        with pytest.raises(WrongChain, match="remembered"):
            open_chain(
                server.url,
                identity,
                registry_address=server.registry_address,
                state_dir=state,
                timeout=2,
            )


@pytest.mark.anvil
def test_wrong_chain_after_switching_to_anvil(tmp_path):
    require_anvil()
    from gfl.chain.devchain import start_anvil

    state = tmp_path / "node"
    identity = NodeIdentity.generate()
    with serve_embedded() as server:
        open_chain(
            server.url,
            identity,
            registry_address=server.registry_address,
            state_dir=state,
            timeout=2,
        ).close()
    with start_anvil() as anvil, pytest.raises(WrongChain, match="31337"):
        open_chain(
            anvil.url, identity, registry_address="0x" + "11" * 20, state_dir=state, timeout=2
        )


def test_reverts_decode_to_the_same_error_on_every_backend(chain):
    with pytest.raises(ContractRevert) as info:
        chain.first.join_job(b"\x07" * 32)
    assert info.value.name == "UnknownJob"
    assert info.value.args_dict == {"jobId": b"\x07" * 32}
    assert isinstance(info.value, ChainError)


def test_deploy_to_a_down_chain():
    with pytest.raises(ChainUnavailable):
        deploy_registry(f"http://127.0.0.1:{free_port()}", NodeIdentity.generate(), timeout=0.3)


def test_unsupported_url():
    with pytest.raises(ChainError, match="unsupported chain URL"):
        open_chain("ftp://example", NodeIdentity.generate(), registry_address="0x" + "11" * 20)
