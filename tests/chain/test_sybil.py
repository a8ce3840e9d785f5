"""10,000 Sybils join an open job and commit updates; the honest two still finalize rounds.

On anvil only: its accounts are minted with anvil_setBalance and the Sybils' transactions
sent unsigned (auto-impersonation), a thousand per JSON-RPC batch, mined in large blocks.
Every view the node needs must stay cheap; the Sybils never vote, so at the vote deadline
the honest key wins by plurality with its mask excluding every Sybil position.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import requests

from gfl.chain import JobParams, JobStatus, Registry, deploy_registry, open_chain
from gfl.chain.devchain import start_anvil
from gfl.chain.proofs import candidate_key
from gfl.fl.rounds import NO_SHARDS, mask_bytes
from gfl.identity import NodeIdentity

from .conftest import MODEL0, h, require_anvil, set_balance

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

SYBILS = 10_000
BATCH = 1_000
BOND = 1
#: What one view call may cost: far below any endpoint's eth_call cap (geth's is 50M).
VIEW_GAS = 10_000_000


class Rpc:
    """Raw JSON-RPC batches to anvil."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.next_id = 0

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(calls), BATCH):
            body = []
            for method, params in calls[i : i + BATCH]:
                self.next_id += 1
                body.append(
                    {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
                )
            answers = self.session.post(self.url, json=body, timeout=120).json()
            for a in sorted(answers, key=lambda a: a["id"]):
                assert "error" not in a, a["error"]
                out.append(a["result"])
        return out

    def call(self, method: str, *params: Any) -> Any:
        return self.batch([(method, list(params))])[0]

    def mine_all(self) -> None:
        """Mine until the pool is empty (bounded: the block gas limit fits ~thousands)."""
        for _ in range(200):
            if int(self.call("txpool_status")["pending"], 16) == 0:
                return
            self.call("evm_mine")
        raise AssertionError("the transaction pool did not drain")


def sybil_address(i: int) -> str:
    return "0x" + (0x5B1 << 148 | i).to_bytes(20, "big").hex()


def send_from_all(
    rpc: Rpc, registry: Registry, senders: list[str], datas: list[str], value: int
) -> None:
    rpc.batch(
        [
            (
                "eth_sendTransaction",
                [
                    {
                        "from": s,
                        "to": registry.registry_address,
                        "data": d,
                        "value": hex(value),
                        "gas": hex(300_000),
                    }
                ],
            )
            for s, d in zip(senders, datas, strict=True)
        ]
    )
    rpc.mine_all()


def view_gas(registry: Registry, fn: str, *args: Any) -> int:
    fn_ = getattr(registry._contract.functions, fn)
    return registry._w3.eth.estimate_gas(
        {"to": registry.registry_address, "data": fn_(*args)._encode_transaction_data()}
    )


def test_ten_thousand_sybils_cannot_stop_two_honest_members():
    require_anvil()
    started = time.monotonic()
    with start_anvil() as anvil:
        rpc = Rpc(anvil.url)
        rpc.call("anvil_autoImpersonateAccount", True)
        rpc.call("evm_setBlockGasLimit", hex(1_000_000_000))
        honest = []
        for identity in (NodeIdentity.generate(), NodeIdentity.generate()):
            set_balance(anvil.url, identity.eth_address, 10**20)
            honest.append(identity)
        address = deploy_registry(anvil.url, honest[0], timeout=30)
        a, b = (open_chain(anvil.url, i, registry_address=address, timeout=60) for i in honest)
        params = JobParams(
            rounds=2,
            min_updates=2,
            max_participants=SYBILS + 2,
            round_timeout=600,
            vote_timeout=300,
            deadline=a.chain_time() + 86_400,
            bond=BOND,
        )
        job_id, _ = a.register_job(os.urandom(32), h(1), MODEL0, params)
        a.join_job(job_id)
        b.join_job(job_id)

        sybils = [sybil_address(i) for i in range(SYBILS)]
        rpc.batch([("anvil_setBalance", [s, hex(10**18)]) for s in sybils])
        rpc.call("evm_setAutomine", False)
        join = a._contract.encode_abi("join", args=[job_id, [], bytes(32)])
        send_from_all(rpc, a, sybils, [join] * SYBILS, BOND)
        rpc.call("evm_setAutomine", True)
        job = a.get_job(job_id)
        assert (job.joined, job.eligible) == (SYBILS + 2, SYBILS + 2)

        a.commit_update(job_id, 0, h(10), 5)
        commits = [
            a._contract.encode_abi(
                "commitUpdate", args=[job_id, 0, (i + 100).to_bytes(32, "big"), 1]
            )
            for i in range(SYBILS)
        ]
        rpc.call("evm_setAutomine", False)
        send_from_all(rpc, a, sybils, commits, 0)
        rpc.call("evm_setAutomine", True)
        b.commit_update(job_id, 0, h(11), 5)  # the last eligible update closes round 0
        job = a.get_job(job_id)
        assert (job.round, job.closed_updates, job.voting) == (1, SYBILS + 2, True)

        # Every view a node needs stays cheap with 10,002 members and updates.
        for fn, args in [
            ("getJob", [job_id]),
            ("member", [job_id, a.account]),
            ("members", [job_id, 9_000, 1_000]),
            ("logHead", [job_id]),
            ("finalKey", [job_id, 0]),
            ("tally", [job_id, 0, h(3)]),
        ]:
            assert view_gas(a, fn, *args) < VIEW_GAS, fn
        pages = [a.members(job_id, offset, 1_000) for offset in range(0, SYBILS + 2, 1_000)]
        assert sum(len(p) for p, _ in pages) == SYBILS + 2
        positions = {a.account: a.member(job_id, a.account).position_in(0)}
        positions[b.account] = b.member(job_id, b.account).position_in(0)

        # The honest two exclude every Sybil update they could not fetch, and vote.
        n = SYBILS + 2
        mask = mask_bytes(set(range(n)) - set(positions.values()), n)
        a.vote(job_id, 0, h(50), mask)
        b.vote(job_id, 0, h(50), mask)
        a.advance_time(301)
        tx = a.settle(job_id)  # 2 > 0 and 2 * 2 > 10,002 - 10,000: finalized by plurality
        events, _ = a.poll_events(tx.block_number, tx.block_number, job_id=job_id)
        assert [e.name for e in events] == ["RoundFinalized"]
        assert events[0].args["key"] == candidate_key(h(50), mask, NO_SHARDS)

        # Round 1: the Sybils go quiet; the round closes at its timeout with the honest two.
        a.commit_update(job_id, 1, h(20), 5)
        b.commit_update(job_id, 1, h(21), 5)
        a.advance_time(601)
        a.settle(job_id)
        a.vote(job_id, 1, h(60))
        b.vote(job_id, 1, h(60))  # 2 of 2 contributors: finalized at once
        job = a.get_job(job_id)
        assert job.status is JobStatus.FINISHED

        events = a.verify_log(job_id)  # ~20,000 events against the running hash
        assert len(events) == job.log_seq > 2 * SYBILS
        a.close()
        b.close()
    assert time.monotonic() - started < 300
