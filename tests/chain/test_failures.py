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
    InsufficientFunds,
    JobParams,
    JobStatus,
    NoRegistry,
    WrongChain,
    deploy_registry,
    open_chain,
)
from gfl.chain.devchain import EMBEDDED_DEV_KEY, free_port, fund, serve_embedded
from gfl.identity import NodeIdentity

from .conftest import MODEL0, new_job, require_anvil


def params(registry, **overrides) -> JobParams:
    fields = {
        "rounds": 1,
        "min_updates": 2,
        "max_participants": 4,
        "round_timeout": 600,
        "vote_timeout": 600,
        "deadline": registry.chain_time() + 86_400,
        "bond": 1,
    }
    return JobParams(**(fields | overrides))


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
    job_id, _ = a.register_job(os.urandom(32), b"\x01" * 32, MODEL0, params(a))
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
        assert job.joined == 2 and job.status is JobStatus.ACTIVE
        b.commit_update(job_id, 0, b"\xbb" * 32, 6)  # the retry goes through, nonce recovered
        events = a.verify_log(job_id)
        assert [e.args["samples"] for e in events if e.name == "UpdateCommitted"] == [5, 6]
        job = a.get_job(job_id)
        assert (job.round, job.closed_updates, job.voting) == (1, 2, True)
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
            job_id, _ = a.register_job(os.urandom(32), b"\x01" * 32, MODEL0, params(a))
            a._sender._nonce = 0  # as if the last transaction's answer had been lost
            a.join_job(job_id)
            assert a.get_job(job_id).joined == 1
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


def test_an_empty_account_is_told_to_fund_itself():
    with serve_embedded() as server:
        poor = NodeIdentity.generate()
        registry = open_chain(server.url, poor, registry_address=server.registry_address, timeout=2)
        try:
            with pytest.raises(InsufficientFunds, match=r"has 0 ETH.*gfl chain fund --rpc"):
                registry.register_job(os.urandom(32), b"\x01" * 32, MODEL0, params(registry))
        finally:
            registry.close()


def test_out_of_gas_on_a_read_is_retried_then_unavailable():
    from gfl.chain.transactions import with_retry

    calls = []

    def capped() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("execution reverted: out of gas")
        return 7

    assert with_retry(capped, timeout=5, endpoint="x", what="reading", reading=True) == 7

    def always() -> int:
        raise ValueError("gas required exceeds allowance (30000000)")

    with pytest.raises(ChainUnavailable, match="gas cap"):
        with_retry(always, timeout=0.3, endpoint="x", what="reading", reading=True)
    with pytest.raises(ValueError):  # out of gas on a write is a refusal, not a hiccup
        with_retry(always, timeout=0.3, endpoint="x", what="writing")


def test_a_read_out_of_gas_is_unavailable_on_every_backend(chain):
    """An endpoint whose eth_call gas cap is too low looks down, not like a registry refusal."""
    registry = chain.first
    page = registry._contract.functions.members(new_job(registry), 0, 1000)
    registry._timeout = 0.3
    with pytest.raises(ChainUnavailable, match="gas cap"):
        registry._read(lambda: page.call({"gas": 25_000}), "reading members")
