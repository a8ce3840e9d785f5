"""The Peers pane: the node's connected libp2p peers, live."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.reactive import reactive
from textual.widgets import DataTable

from gfl_console.format import DASH, short
from gfl_console.types import PeerInfo

# who dialled whom; the node says "unknown" when libp2p does not tell it
DIRECTIONS = {"inbound": "in", "outbound": "out"}


class PeersTable(DataTable[Any]):
    """One row per connected peer, keyed by peer id so the cursor survives refreshes."""

    peers: reactive[list[PeerInfo]] = reactive(list)

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_column("Peer ID", key="peer_id")
        self.add_column("Eth address", key="address")
        self.add_column("Dir", key="direction")
        self.add_column("Msgs", key="msgs")
        self.add_column("Addrs", key="addrs")

    def watch_peers(self, peers: list[PeerInfo]) -> None:
        self.show(peers)

    def show(self, peers: Sequence[PeerInfo]) -> None:
        rows = {p.get("peer_id", "?"): p for p in peers}
        for key in [k for k in self.rows if k.value not in rows]:
            self.remove_row(key)
        for pid, p in sorted(rows.items()):
            cells = (
                short(pid, 18),
                short(p.get("eth_address"), 12),
                DIRECTIONS.get(str(p.get("direction")), DASH),
                str(p.get("msgs_in", DASH)),
                ", ".join(p.get("addrs") or []) or DASH,
            )
            if pid in self.rows:
                for column, value in zip(self.columns, cells, strict=True):
                    self.update_cell(pid, column, value)
            else:
                self.add_row(*cells, key=pid)
