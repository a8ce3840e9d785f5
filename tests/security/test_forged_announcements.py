"""Forged job announcements are refused inside the gossip validator, so an honest node
never relays them: attacker -> honest node (in this trio loop, embedded chain) -> observer."""

from __future__ import annotations

import functools
from typing import Any

import msgpack
import pytest
import trio
from malicious_peer import open_malicious_peer, register_job
from support import running_node

from gfl.identity import NodeIdentity
from gfl.net import JOBS_TOPIC
from gfl.node.devnet import demo_spec
from gfl.scheduler.messages import VERSION as V


def unverified(node: Any) -> int:
    """Announcements the node's job service refused after checking them against the chain."""
    return node.jobs.store.counters("rejected.").get("rejected.unverified", 0)


@pytest.mark.trio
async def test_an_honest_node_refuses_forged_announcements_and_never_relays_them(init_home):
    """attacker -> honest node -> observer: the observer, whose only peer is the honest node,
    hears the owner's true announcement relayed but none of the forgeries, and the node counts
    each forgery as rejected (by its gossip validator, chain check included)."""
    async with running_node(init_home(), full=True, timeout=150) as node:
        owner_key, other_key = (NodeIdentity.generate().private_key for _ in range(2))
        owner_chain = node.chain.for_identity(NodeIdentity(owner_key))
        spec = demo_spec(1, data="digits", rounds=2).replace(name="attacker-own")
        wrong = spec.replace(name="evil", lr=9.0).to_bytes()
        own_id = await node.chain_call(register_job, owner_chain, spec, b"\1")
        # the same spec hash, registered with other params than the spec's
        skewed = functools.partial(register_job, min_updates=spec.min_updates + 1)
        skewed_id = await node.chain_call(skewed, owner_chain, spec, b"\2")

        async with (
            open_malicious_peer(owner_key) as owner,
            open_malicious_peer(other_key) as other,
            open_malicious_peer() as observer,
        ):
            [addr] = node.network.listen_addrs()
            target = await owner.connect(addr)
            await other.connect(addr)
            await observer.connect(addr)
            heard: list[Any] = []
            observer.nursery.start_soon(observer.capture, JOBS_TOPIC, heard)

            def announce(jid: bytes, spec_bytes: bytes) -> bytes:
                return msgpack.packb({"v": V, "type": "job", "job_id": jid, "spec": spec_bytes})

            forged = [
                (other, own_id, spec.to_bytes()),  # not the owner
                (owner, own_id, wrong),  # not the registered spec
                (owner, skewed_id, spec.to_bytes()),  # registered with other params
                (owner, b"\x5a" * 32, spec.to_bytes()),  # a job the chain does not hold
            ]
            for peer, jid, spec_bytes in forged:
                assert await peer.publish_batch(target, JOBS_TOPIC, [announce(jid, spec_bytes)])
            with trio.fail_after(30):  # every forgery judged
                while unverified(node) < len(forged):
                    await trio.sleep(0.05)
            assert node.network.stats()["drops"].get("rejected", 0) >= len(forged)

            # the owner's true announcement is relayed: the path to the observer works
            true_one = announce(own_id, spec.to_bytes())
            with trio.fail_after(30):
                while not heard:
                    assert await owner.publish_batch(target, JOBS_TOPIC, [true_one])
                    with trio.move_on_after(1.0):
                        while not heard:
                            await trio.sleep(0.05)
            await trio.sleep(1.0)  # anything else the node would relay arrives by now
            for msg in heard:
                relayed = (msg.from_id, msg.data)
                assert relayed == (owner.peer_id.to_bytes(), true_one), "a forgery was relayed"
            assert unverified(node) == len(forged)
            assert [j["job_id"] for j in node.jobs.jobs()] == [own_id.hex()]
