"""The Overview pane: who this node is, where it listens, whether others can dial it (and
how its bytes travel: direct or through relays), its chain and what it is doing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

from gfl_console.format import DASH, bytes_by_path, counts, human_duration, reachability
from gfl_console.link import LinkState, LinkStatus
from gfl_console.types import JobSummary, NodeStatus


def _grid() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def _unprefixed(counters: Mapping[str, int]) -> dict[str, int]:
    """{"alarms.divergence": 1} -> {"divergence": 1}: the node keeps the group in the name."""
    return {name.partition(".")[2] or name: n for name, n in counters.items()}


def overview_table(status: NodeStatus, jobs: Sequence[JobSummary] | None) -> Table:
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
    net = status.get("net")
    if net:
        state = str(net.get("reachability") or "unknown")
        style = {"public": "green", "private": "yellow"}.get(state, "italic")
        table.add_row("Reachable", Text(reachability(net), style=style))
        table.add_row("Traffic", bytes_by_path(net))
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
    service = status.get("jobs")
    job_counts: Mapping[str, Any] | None = service.get("jobs") if service else None
    if job_counts is None and jobs is not None:
        job_counts = Counter(j.get("status", "?") for j in jobs)
    table.add_row("Jobs", counts(job_counts) if job_counts is not None else DASH)
    if service:
        alarms = counts(_unprefixed(service.get("alarms") or {}))
        table.add_row("Alarms", Text(alarms, style="bold red" if alarms != "none" else ""))
        table.add_row("Rejected", counts(_unprefixed(service.get("rejected") or {})))
    home = status.get("home")
    if home:
        table.add_row("Datadir", home)
    return table


class OverviewPane(VerticalScroll):
    """Status of the node; redraws itself when the status, the jobs or the link change."""

    status: reactive[NodeStatus | None] = reactive(None)
    jobs: reactive[list[JobSummary] | None] = reactive(None)
    link: reactive[LinkStatus | None] = reactive(None)

    def __init__(self, where: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.where = where

    def compose(self) -> ComposeResult:
        yield Static(self.body(), id="overview-body")

    def body(self) -> RenderableType:
        """What the pane shows now: the status, or why there is none."""
        link = self.link
        if link is not None and link.state is LinkState.UNAUTHORIZED:
            return Text(link.message, style="bold red")
        if self.status:
            return overview_table(self.status, self.jobs)
        if link is not None and link.state is LinkState.DOWN:
            return Text(
                f"No node is running at {self.where}. Start one with `gfl up`; "
                "the console connects as soon as it answers.",
                style="bold",
            )
        return "Waiting for the node…"

    def _redraw(self) -> None:
        if self.is_mounted:
            self.query_one("#overview-body", Static).update(self.body())

    def watch_status(self) -> None:
        self._redraw()

    def watch_jobs(self) -> None:
        self._redraw()

    def watch_link(self) -> None:
        self._redraw()
