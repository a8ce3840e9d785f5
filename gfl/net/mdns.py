"""Peer discovery on the local network with mDNS, bridged from zeroconf's threads into trio.

py-libp2p 0.8.1 ships mDNS (`libp2p.discovery.mdns`) on top of zeroconf, but its
`MDNSDiscovery` writes to the peerstore and to a process-wide event emitter from
zeroconf's browser thread, and spawns a trio system task of its own. We keep the
library's parts that follow the spec — `PeerBroadcaster` (the service with the
``dnsaddr`` TXT records) and `PeerListener`'s parsing of those records — and
replace the plumbing: each peer found is handed to trio through the run's token
(`trio.lowlevel.TrioToken.run_sync_soon`, which never blocks the zeroconf thread)
onto a bounded memory channel, and the zeroconf instance is ours, opened and
closed in a worker thread so that no zeroconf thread outlives the network.

Zeroconf runs on the interfaces the host listens on: a host on 127.0.0.1 only
announces and browses on loopback (Linux delivers multicast on ``lo`` although
the interface has no MULTICAST flag), a host on 0.0.0.0 on every interface.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from gfl.net.errors import NetError

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_p2p._udp.local."  # the libp2p mDNS spec's service
RESOLVE_TIMEOUT_MS = 2000  # one lookup of a found service's TXT record
CLOSE_TIMEOUT = 10.0
FOUND_QUEUE = 256  # peers found but not yet handled; more are dropped (seen again later)
_UNDELIVERABLE = (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError)


def zeroconf_interfaces(listen_addrs: Sequence[str]) -> Any:
    """The interfaces to run mDNS on for a host listening on ``listen_addrs``."""
    from zeroconf import InterfaceChoice

    ips: list[str] = []
    for addr in listen_addrs:
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] == "ip4":
            if parts[2] == "0.0.0.0":
                return InterfaceChoice.All
            ips.append(parts[2])
    if not ips:
        raise NetError("mDNS needs an IPv4 listen address (/ip4/...)")
    if all(ipaddress.ip_address(ip).is_loopback for ip in ips):
        return ["127.0.0.1"]
    return sorted(set(ips))


def announced_addrs(listen_addrs: Sequence[str]) -> list[str]:
    """``listen_addrs`` with 0.0.0.0 replaced by each local IPv4 address."""
    out: list[str] = []
    for addr in listen_addrs:
        if "/ip4/0.0.0.0/" not in addr:
            out.append(addr)
            continue
        for ip in _local_ipv4():
            out.append(addr.replace("/ip4/0.0.0.0/", f"/ip4/{ip}/"))
    return list(dict.fromkeys(out))


def _local_ipv4() -> list[str]:
    import ifaddr

    ips = ["127.0.0.1"]
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip not in ips:
                ips.append(ip.ip)
    return ips


def _make_listener(deliver: Callable[[Any], None]) -> type:
    from libp2p.discovery.mdns.listener import PeerListener

    class Listener(PeerListener):
        """The library's listener with its callbacks sent to trio instead of the peerstore."""

        closing = False

        def add_service(self, zc: Any, type_: str, name: str) -> None:
            if name == self.service_name or type_ != self.service_type or self.closing:
                return
            info = self._get_service_info_with_retry(zc, type_, name)
            peer = self._extract_peer_info(info) if info is not None else None
            if peer is not None and not self.closing:
                deliver(peer)

        update_service = add_service

        def remove_service(self, zc: Any, type_: str, name: str) -> None:
            pass  # a vanished peer is noticed by its connection closing

        def _get_service_info_with_retry(self, zc: Any, type_: str, name: str) -> Any:
            # one bounded lookup: the library retries with time.sleep, which would
            # hold up closing (cancelling a browser joins its thread)
            try:
                return zc.get_service_info(type_, name, timeout=RESOLVE_TIMEOUT_MS)
            except Exception as exc:
                logger.debug("mDNS lookup of %s failed: %s", name, exc)
                return None

    return Listener


class _Zeroconf:
    """The thread side: zeroconf, the library's broadcaster and our listener (blocking calls)."""

    def __init__(
        self,
        peer_id: str,
        addrs: list[str],
        interfaces: Any,
        service_type: str,
        deliver: Callable[[Any], None],
    ) -> None:
        from libp2p.discovery.mdns.broadcaster import PeerBroadcaster
        from libp2p.discovery.mdns.utils import stringGen
        from zeroconf import IPVersion, Zeroconf

        self.zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        self.registered = False
        try:
            name = f"{stringGen(63)}.{service_type}"
            self.broadcaster = PeerBroadcaster(
                zeroconf=self.zc,
                service_type=service_type,
                service_name=name,
                peer_id=peer_id,
                port=0,
                listen_addrs=addrs,
            )
            self.listener = _make_listener(deliver)(
                peerstore=None, zeroconf=self.zc, service_type=service_type, service_name=name
            )
        except BaseException:
            self.zc.close()
            raise

    def announce(self) -> None:
        # probing for a unique name takes ~1.5 s; the broadcaster logs its own errors
        self.broadcaster.register()
        self.registered = True

    def close(self) -> None:
        self.listener.closing = True
        with contextlib.suppress(Exception):
            self.listener.stop()  # cancels both browsers and joins their threads
        if self.registered:
            self.broadcaster.unregister()  # goodbye packets, so peers forget us at once
        self.zc.close()  # joins zeroconf's event-loop thread


@asynccontextmanager
async def open_mdns(
    peer_id: str,
    listen_addrs: Sequence[str],
    *,
    service_type: str = SERVICE_TYPE,
    task_group: trio.Nursery,
) -> AsyncIterator[trio.MemoryReceiveChannel[Any]]:
    """Announce ``peer_id`` at ``listen_addrs`` over mDNS; yields a channel of found `PeerInfo`.

    The announcement (name probing, ~1.5 s) runs in the background in
    ``task_group``; browsing starts at once. On exit zeroconf is closed and its
    threads joined (bounded by `CLOSE_TIMEOUT`).
    """
    send, recv = trio.open_memory_channel[Any](FOUND_QUEUE)
    token = trio.lowlevel.current_trio_token()

    def put(peer: Any) -> None:  # runs in trio; must never raise
        with contextlib.suppress(*_UNDELIVERABLE):
            send.send_nowait(peer)

    def deliver(peer: Any) -> None:  # runs on zeroconf's browser thread
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(put, peer)

    interfaces = zeroconf_interfaces(listen_addrs)
    addrs = announced_addrs(listen_addrs)
    try:
        zc = await trio.to_thread.run_sync(
            _Zeroconf, peer_id, addrs, interfaces, service_type, deliver
        )
    except OSError as exc:
        raise NetError(f"cannot start mDNS on {interfaces}: {exc}") from None
    announced = trio.Event()

    async def announce() -> None:
        try:
            await trio.to_thread.run_sync(zc.announce)
        finally:
            announced.set()

    task_group.start_soon(announce)
    try:
        yield recv
    finally:
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            await announced.wait()
            await trio.to_thread.run_sync(zc.close)
        if scope.cancelled_caught:
            logger.warning("mDNS did not close within %.0fs", CLOSE_TIMEOUT)
        send.close()
