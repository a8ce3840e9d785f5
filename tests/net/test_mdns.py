"""mDNS discovery between real hosts on this machine's loopback interface."""

import secrets
import socket
import threading
from contextlib import AsyncExitStack

import pytest
from net_helpers import wait_for

from gfl.identity import NodeIdentity
from gfl.net import open_network


def _zeroconf_threads() -> list[str]:
    # zeroconf's event-loop thread runs `_run_loop`; its browsers are named zeroconf-*
    return [t.name for t in threading.enumerate() if "zeroconf" in t.name or "_run_loop" in t.name]


def _loopback_multicast_error() -> str | None:
    """Why multicast on 127.0.0.1 does not work here, or None when it does."""
    group = "224.0.0.251"
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("", 0))
        mreq = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        tx.sendto(b"probe", (group, rx.getsockname()[1]))
        rx.settimeout(2.0)
        rx.recvfrom(16)
    except OSError as exc:
        return f"multicast on the loopback interface does not work here: {exc}"
    finally:
        rx.close()
        tx.close()
    return None


@pytest.mark.trio
async def test_hosts_with_mdns_and_no_bootstrap_find_each_other_and_leave_no_thread(tmp_path):
    # a private service name: another test run on this machine stays out of this one
    if (why := _loopback_multicast_error()) is not None:
        pytest.skip(why)
    service = f"_p2p-t{secrets.token_hex(4)}._udp.local."
    assert _zeroconf_threads() == []
    async with AsyncExitStack() as stack:
        nets = [
            await stack.enter_async_context(
                open_network(
                    NodeIdentity.generate(),
                    mdns=True,
                    mdns_service=service,
                    discover=False,  # no DHT lookups: mDNS is the only way to meet
                    blob_dir=tmp_path / f"m{i}",
                )
            )
            for i in range(3)
        ]
        # announced under another service name: must not be found
        other = await stack.enter_async_context(
            open_network(
                NodeIdentity.generate(),
                mdns=True,
                mdns_service=f"_p2p-o{secrets.token_hex(4)}._udp.local.",
                discover=False,
                blob_dir=tmp_path / "other",
            )
        )
        ids = {n.peer_id for n in nets}
        await wait_for(lambda: all(len(n.peers()) == 2 for n in nets), timeout=30)
        for n in nets:
            assert {p["peer_id"] for p in n.peers()} == ids - {n.peer_id}
        await wait_for(lambda: all(n.stats()["mdns_peers_found"] == 2 for n in nets), timeout=10)
        assert other.peers() == [] and other.stats()["mdns_peers_found"] == 0
        assert _zeroconf_threads()
    assert _zeroconf_threads() == []
