"""A small internet in network namespaces: one public host and private hosts behind NATs.

    with nat_lab(nats=("cone", "cone", "symmetric")) as lab:
        lab.public.p2p_ip      # 198.18.0.1: a host on the "internet" (its own namespace)
        lab.private[0].p2p_ip  # 10.1.0.2: behind router 1, seen outside as 198.18.1.2
        lab.private[2].nat     # "symmetric"
        lab.exec_prefix(lab.private[0])  # ["ip", "netns", "exec", NS]
        lab.mgmt_ip            # this (root) namespace's end of the management network

Layout (N is a free slot number, so that runs side by side do not collide):

- ``gflnat-N-inet``: the internet. It routes between the routers' WAN links and is the
  public host too (198.18.0.1 on its loopback). No default route: a packet for a private
  address gets "network unreachable" at once, as on the real internet.
- ``gflnat-N-rI``: router I. WAN 198.18.I.2 (its gateway 198.18.I.1 in inet), LAN
  10.I.0.1/24; nftables masquerades what leaves the WAN and drops every unsolicited packet
  that arrives on it (no RST, no ICMP: a home router). A "cone" router keeps source ports
  where it can (Linux's default: endpoint-independent mapping, so a hole punch can predict
  the external port); a "symmetric" one picks a random port for every connection
  (``masquerade fully-random``), which defeats the prediction. ``nats`` gives one kind per
  router.
- ``gflnat-N-hI``: private host I, 10.I.0.2, default route via its router.
- management: a bridge in this namespace (10.250.N.1/24) with a link into inet and into
  each private host, for the chain's JSON-RPC and the nodes' control APIs. An nftables
  rule in each namespace keeps that link to traffic with this namespace only, so that
  no peer-to-peer traffic can go around the NATs.

Everything is removed on exit, also after a failure; namespaces left by a run that was
killed (their names carry its pid) are removed by the next one. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

PREFIX = "gflnat"
NAT_KINDS = ("cone", "symmetric")
TIMEOUT = 10


class LabError(RuntimeError):
    """The lab could not be built (missing tool, no permission)."""


@dataclass
class Site:
    """A namespace where a node runs: its peer-to-peer and its management address."""

    name: str  # the namespace
    p2p_ip: str
    mgmt_ip: str
    public_ip: str  # where the internet sees it (its router's WAN address, if private)
    nat: str = ""  # its router's kind ("" for the public host)


@dataclass
class Lab:
    slot: int
    mgmt_ip: str
    public: Site
    private: list[Site] = field(default_factory=list)
    routers: list[str] = field(default_factory=list)

    @staticmethod
    def exec_prefix(site: Site) -> list[str]:
        return ["ip", "netns", "exec", site.name]


def missing_tools() -> list[str]:
    """The commands the lab needs that this machine lacks."""
    return [t for t in ("ip", "nft") if shutil.which(t) is None]


def _run(argv: list[str], stdin: str | None = None) -> str:
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    if out.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _nft(ns: str, rules: str) -> None:
    _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=rules)


def _sysctl(ns: str, key: str, value: str) -> None:
    _run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> None:
    """Remove the namespaces and links of earlier runs whose process is gone."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in re.findall(rf"^({PREFIX}-(\d+)-(\d+)-\S+)", names, re.M):
        name, _slot, pid = ns
        if not _alive(int(pid)):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=TIMEOUT)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for name, pid in re.findall(rf"\d+: ({PREFIX[:2]}(\d+)x\w+)[@:]", links):
        if not _alive(int(pid)):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=TIMEOUT)


def _free_slot() -> int:
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    n = os.getpid() % 250
    while f"10.250.{n}." in used or f"{PREFIX}-{n}-" in used:
        n = (n + 1) % 250
    return n


NAT_RULES = """
table ip gflnat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade{random}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    iifname "wan" oifname "lan" ct state established,related accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }}
}}
"""

MGMT_ONLY = """
table inet gflmgmt {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "mgmt" ip saddr != {root} drop
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname "mgmt" ip daddr != {root} drop
  }}
}}
"""


@contextlib.contextmanager
def nat_lab(nats: tuple[str, ...] = ("cone", "cone")) -> Iterator[Lab]:
    """Build the lab (see the module's docstring), yield it, tear it down."""
    if any(nat not in NAT_KINDS for nat in nats):
        raise ValueError(f"each NAT must be one of {NAT_KINDS}")
    if os.geteuid() != 0:
        raise LabError("network namespaces and nftables need root")
    missing = missing_tools()
    if missing:
        raise LabError(f"missing {', '.join(missing)} (Debian: apt-get install iproute2 nftables)")
    sweep_leftovers()
    n, pid = _free_slot(), os.getpid()
    base = f"{PREFIX}-{n}-{pid}"
    link = f"{PREFIX[:2]}{pid}x{n}"  # root-side link names (15 characters at most)
    mgmt_net = f"10.250.{n}"
    namespaces: list[str] = []
    try:
        inet = f"{base}-inet"
        lab = Lab(
            slot=n,
            mgmt_ip=f"{mgmt_net}.1",
            public=Site(inet, "198.18.0.1", f"{mgmt_net}.10", "198.18.0.1"),
        )
        _ip("link", "add", f"{link}b", "type", "bridge")
        _ip("addr", "add", f"{lab.mgmt_ip}/24", "dev", f"{link}b")
        _ip("link", "set", f"{link}b", "up")
        _add_ns(inet, namespaces)
        _ip("-n", inet, "addr", "add", "198.18.0.1/32", "dev", "lo")
        _sysctl(inet, "net.ipv4.ip_forward", "1")
        _mgmt_link(inet, f"{link}b", f"{link}m0", lab.public.mgmt_ip, lab.mgmt_ip)
        for i, nat in enumerate(nats, start=1):
            router, host = f"{base}-r{i}", f"{base}-h{i}"
            _add_ns(router, namespaces)
            _add_ns(host, namespaces)
            lab.routers.append(router)
            _veth(inet, f"wan{i}", f"198.18.{i}.1/24", router, "wan", f"198.18.{i}.2/24")
            _veth(router, "lan", f"10.{i}.0.1/24", host, "eth0", f"10.{i}.0.2/24")
            _ip("-n", router, "route", "add", "default", "via", f"198.18.{i}.1")
            _ip("-n", host, "route", "add", "default", "via", f"10.{i}.0.1")
            _sysctl(router, "net.ipv4.ip_forward", "1")
            _nft(router, NAT_RULES.format(random=" fully-random" if nat == "symmetric" else ""))
            site = Site(host, f"10.{i}.0.2", f"{mgmt_net}.{10 + i}", f"198.18.{i}.2", nat)
            _mgmt_link(host, f"{link}b", f"{link}m{i}", site.mgmt_ip, lab.mgmt_ip)
            lab.private.append(site)
        yield lab
    finally:
        for ns in reversed(namespaces):  # its links and rules go with it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT)
        subprocess.run(["ip", "link", "del", f"{link}b"], capture_output=True, timeout=TIMEOUT)


def _add_ns(name: str, namespaces: list[str]) -> None:
    _ip("netns", "add", name)
    namespaces.append(name)
    _ip("-n", name, "link", "set", "lo", "up")


def _veth(ns_a: str, name_a: str, ip_a: str, ns_b: str, name_b: str, ip_b: str) -> None:
    _ip("-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    _ip("-n", ns_a, "addr", "add", ip_a, "dev", name_a)
    _ip("-n", ns_b, "addr", "add", ip_b, "dev", name_b)
    _ip("-n", ns_a, "link", "set", name_a, "up")
    _ip("-n", ns_b, "link", "set", name_b, "up")


def _mgmt_link(ns: str, bridge: str, outside: str, inside_ip: str, root_ip: str) -> None:
    """A link from ``ns`` to the management bridge, for traffic with this namespace only."""
    _ip("link", "add", outside, "type", "veth", "peer", "name", "mgmt", "netns", ns)
    _ip("link", "set", outside, "master", bridge)
    _ip("link", "set", outside, "up")
    _ip("-n", ns, "addr", "add", f"{inside_ip}/24", "dev", "mgmt")
    _ip("-n", ns, "link", "set", "mgmt", "up")
    _nft(ns, MGMT_ONLY.format(root=root_ip))
