"""The Overview pane: who this node is, where it listens, its chain and what it is doing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from gfl_console.format import DASH, counts, human_duration


def _grid() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def overview_table(status: Mapping[str, Any], jobs: list[Mapping[str, Any]] | None) -> Table:
    """The node's status as a two-column grid of labels and values."""
    table = _grid()
    name = status.get("name") or DASH
    table.add_row(
        "Node", f"{name}  (gfl {status.get('version', '?')}, pid {status.get('pid', '?')})"
    )
    table.add_row("Address", status.get("address") or DASH)
    table.add_row("Peer ID", status.get("peer_id") or DASH)
    addrs = status.get("listen_addrs") or []
    table.add_row("Listening", "\n".join(addrs) if addrs else DASH)
    table.add_row("Uptime", human_duration(status.get("uptime_s")))
    chain = status.get("chain")
    if chain:
        table.add_row(
            "Chain",
            f"{chain.get('endpoint', DASH)}  (id {chain.get('chain_id', DASH)}, "
            f"block {chain.get('block', DASH)})",
        )
        table.add_row("Registry", chain.get("registry") or DASH)
    else:
        table.add_row("Chain", Text("not connected", style="italic"))
    table.add_row("Peers", str(len(status.get("peers") or [])))
    job_counts = status.get("jobs")
    if not isinstance(job_counts, Mapping):
        job_counts = Counter(j.get("status", "?") for j in jobs) if jobs is not None else None
    table.add_row("Jobs", counts(job_counts) if job_counts is not None else DASH)
    alarms = status.get("alarms")
    if alarms is not None:
        text = counts(alarms)
        table.add_row("Alarms", Text(text, style="bold red" if text != "none" else ""))
    rejected = status.get("rejected")
    if rejected is not None:
        table.add_row("Rejected", counts(rejected))
    home = status.get("home")
    if home:
        table.add_row("Datadir", home)
    return table


class OverviewPane(VerticalScroll):
    """Status of the node, refreshed by the app every few seconds."""

    def compose(self) -> ComposeResult:
        yield Static("Waiting for the node…", id="overview-body")

    def show(self, status: Mapping[str, Any], jobs: list[Mapping[str, Any]] | None) -> None:
        self.query_one("#overview-body", Static).update(overview_table(status, jobs))
