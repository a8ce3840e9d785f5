"""`open_network`: a node's libp2p host with its pubsub, DHT and GFL's parts, started and stopped.

Everything runs inside one trio nursery that `open_network` owns, and comes down
in the order py-libp2p 0.8.1 needs: our tasks first, then every peer is
disconnected *before* the pubsub, gossipsub and DHT services stop (leaving the
pubsub context with live peers crashes the library: "Nursery is closed to new
arrivals"), then the swarm.

The host is built with GFL's tuned Noise (``new_host``'s security option,
`gfl.net.noise`) and Yamux (installed on the host's upgrader, `gfl.net.yamux`), for
this host alone; ``tuned=False`` gives the library's stock transport
(bench/transfer.py compares the two).

Every host learns whether others can dial it (`gfl.net.reachability`), accepts relayed
connections and upgrades them to direct ones where the NATs allow (`gfl.net.relay`,
`gfl.net.holepunch`); a private one holds slots on a few relays and advertises its
relayed addresses (`gfl.net.relay_client`); a public one with ``relay.serve`` relays for
others.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import MAX_CONNECTIONS, ConnectionConfig
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11

from gfl.identity import NodeIdentity
from gfl.net import asks, blob_protocol, noise, yamux
from gfl.net.blobs import BlobStore
from gfl.net.discovery import Discovery
from gfl.net.errors import NetError
from gfl.net.holepunch import HolePunch, HolePunchNotifee
from gfl.net.mdns import SERVICE_TYPE as MDNS_SERVICE
from gfl.net.mdns import open_mdns
from gfl.net.network import Network, Parts
from gfl.net.paths import count_tcp
from gfl.net.peers import PeerNotifee, Peers, peer_info
from gfl.net.providers import REPROVIDE_INTERVAL, Providers
from gfl.net.pubsub import GflGossipSub, GflPubsub, Gossip
from gfl.net.reachability import MODES, PUBLIC, Reachability
from gfl.net.relay import RelayProtocol, RelaySettings
from gfl.net.relay_client import Relays
from gfl.net.services import background_service
from gfl.net.traffic import EventCallback, Reporter
from gfl.net.transfer import BlobClient, BlobServer

MAX_PEERS = 64
PUBSUB_READY_TIMEOUT = 10.0


def build_host(
    identity: NodeIdentity, maddrs: Sequence[Any], *, max_peers: int, tuned: bool
) -> Any:
    """A libp2p host for ``identity`` (not yet listening), tuned or the library's stock."""
    key_pair = identity.libp2p_keypair()
    host = new_host(
        key_pair=key_pair,
        listen_addrs=list(maddrs),
        muxer_preference="YAMUX",
        sec_opt=noise.security_options(key_pair) if tuned else None,
        # one connection per peer: with more, each dial waits a fixed 250 ms; the
        # library's total cap stays above ours (`Peers.gate_inbound`)
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            max_connections=max(MAX_CONNECTIONS, 2 * max_peers),
            high_watermark=max(MAX_CONNECTIONS, 2 * max_peers),
        ),
    )
    if tuned:
        yamux.install(host)
    return host


def build_gossipsub() -> GflGossipSub:
    """The gossipsub router with GFL's mesh degrees and without the library's own limits."""
    return GflGossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
        # D_high 8 (the library's 12): each node receives about as many copies of a
        # message as it has mesh peers, so fewer copies cost less CPU per message on a
        # machine running many nodes (bench/gossip.py, bench/RESULTS.md)
        degree=6,
        degree_low=4,
        degree_high=8,
        heartbeat_interval=1,
        # GFL rate-limits and counts itself (gossip.RateLimiter) instead of the
        # library's silent 10 msg/s drop; all test peers share 127.0.0.1, which the
        # IP-diversity (eclipse) rule would keep out of the mesh.
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
        # the library's "adaptive gossip" (not in the gossipsub spec) re-scores the
        # network every 30 s and raises D_low/D_high when it judges it unhealthy,
        # which undoes the degrees above.
        adaptive_gossip_enabled=False,
    )


@asynccontextmanager
async def open_network(
    identity: NodeIdentity,
    *,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    bootstrap: Sequence[str] = (),
    mdns: bool = False,
    blob_dir: Path | None = None,
    blob_cap_bytes: int = 2 << 30,
    on_event: EventCallback | None = None,
    discover: bool = True,
    max_peers: int = MAX_PEERS,
    reprovide_interval: float = REPROVIDE_INTERVAL,
    mdns_service: str = MDNS_SERVICE,
    tuned: bool = True,
    reachability: str = "auto",
    relay: RelaySettings = RelaySettings(),
) -> AsyncIterator[Network]:
    """Start a libp2p host for ``identity`` and yield its `Network`; stops it cleanly on exit.

    ``discover=False`` keeps to the bootstrap peers and explicit `Network.connect`
    calls (no DHT peer lookups): for fixed topologies in tests. ``mdns`` announces
    and finds peers on the local network (under ``mdns_service``: a private
    ``_p2p-NAME._udp.local.`` keeps separate networks apart). ``max_peers`` bounds
    the connected peers that inbound connections may reach; ``reprovide_interval``
    is how often held blobs are announced again in the DHT. ``tuned=False``: the
    library's stock Yamux and Noise. ``reachability`` "auto" finds out whether others can
    dial us (AutoNAT), "public" or "private" says so; ``relay`` says whether and how much
    we relay for others while public.
    """
    if reachability not in MODES:
        raise NetError(f"reachability must be one of {', '.join(MODES)}, not {reachability!r}")
    if max_peers < 1:
        raise NetError("max_peers must be at least 1")
    if reprovide_interval <= 0:
        raise NetError("reprovide_interval must be positive")
    try:
        maddrs = [multiaddr.Multiaddr(a) for a in listen]
    except Exception as exc:
        raise NetError(f"invalid listen address: {exc}") from None
    boot = [peer_info(b, "bootstrap address") for b in bootstrap]

    async with AsyncExitStack() as stack:
        if blob_dir is None:
            blob_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gfl-blobs-")))
        blobs = BlobStore(Path(blob_dir), blob_cap_bytes)
        host = build_host(identity, maddrs, max_peers=max_peers, tuned=tuned)
        report = Reporter(on_event)
        wrap_inbound = count_tcp(host, report.traffic.paths)
        gossipsub = build_gossipsub()
        pubsub = GflPubsub(host, gossipsub, strict_signing=True)
        dht = KadDHT(host, DHTMode.SERVER)
        relay_protocol = RelayProtocol(host, relay, report.traffic.paths, report)
        holepunch = HolePunch(host, report)

        try:
            await stack.enter_async_context(host.run(maddrs))
        except Exception as exc:
            raise NetError(f"cannot listen on {', '.join(listen)}: {exc}") from None
        await stack.enter_async_context(background_service(pubsub))
        await stack.enter_async_context(background_service(gossipsub))
        await stack.enter_async_context(background_service(dht))
        await stack.enter_async_context(background_service(relay_protocol))
        await stack.enter_async_context(background_service(holepunch))
        with trio.fail_after(PUBSUB_READY_TIMEOUT):
            await pubsub.wait_until_ready()

        nursery = await stack.enter_async_context(trio.open_nursery())
        peers = Peers(host, dht, report, max_peers, nursery)
        holepunch.peers = peers
        providers = Providers(host, dht, blobs, report)
        boot_ids = [b.peer_id.to_base58() for b in boot]
        reach = Reachability(host, peers, report, mode=reachability, bootstrap=boot_ids)
        relays = Relays(host, peers, relay_protocol, report, bootstrap=boot_ids)
        relays.advertise_on(host)
        peers.use_relays(relays)
        parts = Parts(
            host=host,
            pubsub=pubsub,
            dht=dht,
            report=report,
            peers=peers,
            gossip=Gossip(pubsub, peers, report),
            providers=providers,
            client=BlobClient(
                host, blobs, peers, providers, report, circuit_to=relay_protocol.circuit_to
            ),
            server=BlobServer(blobs, report),
            asks=asks.Asks(host, peers),
            reachability=reach,
            relays=relays,
            relay=relay_protocol,
            holepunch=holepunch,
        )
        net = Network(identity.eth_address, blobs, parts)
        peers.gate_inbound(wrap_inbound)
        host.get_network().register_notifee(PeerNotifee(peers))
        host.get_network().register_notifee(HolePunchNotifee(holepunch, peers))
        host.set_stream_handler(TProtocol(blob_protocol.PROTOCOL), parts.server.serve)
        host.set_stream_handler(TProtocol(asks.PROTOCOL), parts.asks.serve)

        def serve_relay(status: str) -> None:
            on = relay.serve and status == PUBLIC
            if on != relay_protocol.serving:
                relay_protocol.serve(on)
                peers.start_soon(relays.announce)  # peers learn the protocol list changed

        reach.on_change(relays.on_reachability)
        reach.on_change(serve_relay)
        nursery.start_soon(reach.run)
        nursery.start_soon(relays.run)

        discovery = Discovery(host, dht, peers, report, lookups=discover)
        for info in boot:
            nursery.start_soon(discovery.keep_bootstrap, info)
        if discover:
            nursery.start_soon(discovery.run_lookups)
        nursery.start_soon(providers.run_reprovide, reprovide_interval)
        if mdns:
            found = await stack.enter_async_context(
                open_mdns(
                    net.peer_id, net.listen_addrs(), service_type=mdns_service, task_group=nursery
                )
            )
            nursery.start_soon(discovery.run_mdns, found)
        try:
            yield net
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await peers.disconnect_all()
