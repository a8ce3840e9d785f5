"""The GFL attach console: a Textual app that watches and drives one node over its API.

It is a client of the node's control API and nothing else: no libp2p, web3 or
torch is imported here, so the console starts in a moment and can watch a node
on another machine through a tunnel. Data comes from two places: the event
stream (`gfl_console.link.NodeLink`), which drives the log and triggers reloads,
and a slow poll of ``/status`` for what has no event (uptime, chain block).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Input,
    TabbedContent,
    TabPane,
    Tabs,
    TextArea,
)
from textual.worker import Worker

from gfl_console.client import AsyncNodeClient
from gfl_console.detail import JobDetailScreen
from gfl_console.errors import NodeClientError, NodeNotRunning, Unauthorized
from gfl_console.format import short
from gfl_console.help import HelpScreen
from gfl_console.jobs import JobsHint, JobsTable
from gfl_console.link import LinkState, LinkStatus, NodeLink
from gfl_console.linkbar import LinkBar
from gfl_console.log import EventLog
from gfl_console.overview import OverviewPane
from gfl_console.peers import PeersTable
from gfl_console.publish import PublishPane
from gfl_console.types import Event, JobSummary, NodeStatus, PeerInfo

STATUS_POLL_S = 2.0
JOBS_POLL_S = 10.0
PANES = ("overview", "peers", "jobs", "log", "publish")
PEER_EVENTS = ("peer_connected", "peer_disconnected")
PANE_FOCUS = {"peers": "#peers-table", "jobs": "#jobs-table", "publish": "#publish-path"}


class ConsoleApp(App[int]):
    """Watch one node: overview, peers, jobs and their rounds, the event log; publish jobs.

    The app holds what it learns from the node in reactive attributes; the widgets
    are bound to them (`data_bind`) and redraw themselves when they change.
    """

    CSS_PATH = "console.tcss"
    TITLE = "GFL console"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("o", "show_pane('overview')", "Overview"),
        Binding("p", "show_pane('peers')", "Peers"),
        Binding("j", "show_pane('jobs')", "Jobs"),
        Binding("l", "show_pane('log')", "Log"),
        Binding("n", "show_pane('publish')", "Publish"),
        Binding("escape", "leave_input", "Leave text box", show=False),
        Binding("r", "refresh_all", "Refresh", show=False),
        Binding("slash", "filter_log", "Filter log", show=False, key_display="/"),
        Binding("d", "toggle_dark", "Dark/light", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    link_status: reactive[LinkStatus] = reactive(LinkStatus(LinkState.CONNECTING, "connecting…"))
    node_status: reactive[NodeStatus | None] = reactive(None)
    peers: reactive[list[PeerInfo]] = reactive(list)
    jobs: reactive[list[JobSummary] | None] = reactive(None)
    jobs_error: reactive[str] = reactive("")

    class NodeEvent(Message):
        """An event from the node's stream."""

        def __init__(self, event: Event) -> None:
            super().__init__()
            self.event = event

    class LinkChanged(Message):
        """The connection to the node changed."""

        def __init__(self, status: LinkStatus) -> None:
            super().__init__()
            self.status = status

    def __init__(
        self, host: str, port: int, token: str, *, client: AsyncNodeClient | None = None
    ) -> None:
        """``client`` replaces the default one (the snapshot tests serve canned answers)."""
        super().__init__()
        self.where = f"{host}:{port}"
        self.client = client or AsyncNodeClient(host, port, token)
        self.link = NodeLink(self.client, self.where)
        self.set_reactive(
            ConsoleApp.link_status, LinkStatus(LinkState.CONNECTING, f"connecting to {self.where}…")
        )
        self._link_worker: Worker[None] | None = None

    # -- layout -----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield LinkBar(self.link_status.message, id="link").data_bind(link=ConsoleApp.link_status)
        with TabbedContent(initial="overview", id="panes"):
            with TabPane("Overview", id="overview"):
                yield OverviewPane(self.where, id="overview-pane").data_bind(
                    status=ConsoleApp.node_status,
                    jobs=ConsoleApp.jobs,
                    link=ConsoleApp.link_status,
                )
            with TabPane("Peers", id="peers"):
                yield PeersTable(id="peers-table").data_bind(ConsoleApp.peers)
            with TabPane("Jobs", id="jobs"):
                yield JobsHint(id="jobs-hint").data_bind(error=ConsoleApp.jobs_error)
                yield JobsTable(id="jobs-table").data_bind(ConsoleApp.jobs)
            with TabPane("Log", id="log"):
                yield EventLog(id="event-log")
            with TabPane("Publish", id="publish"):
                yield PublishPane(id="publish-pane")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.where
        self._link_worker = self.run_worker(self._follow(), name="link", group="link")
        self.set_interval(STATUS_POLL_S, self.reload_status)
        self.set_interval(JOBS_POLL_S, self.reload_jobs)

    async def on_unmount(self) -> None:
        await self.client.aclose()

    # -- the link ---------------------------------------------------------------------------
    async def _follow(self) -> None:
        await self.link.run(
            lambda ev: self.post_message(self.NodeEvent(ev)),
            lambda st: self.post_message(self.LinkChanged(st)),
        )

    def _event_log(self) -> EventLog | None:
        try:
            return self.query_one(EventLog)
        except NoMatches:  # the link outlives the widgets while the console closes
            return None

    def on_console_app_link_changed(self, message: LinkChanged) -> None:
        status, previous = message.status, self.link_status
        self.link_status = status
        log = self._event_log()
        if status.state is LinkState.CONNECTED:
            if status.restarted and log is not None:
                log.note("the node restarted")
            self.reload_status()
            self.reload_jobs()
            if isinstance(self.screen, JobDetailScreen):
                self.screen.reload()
        elif (
            status.state in (LinkState.DOWN, LinkState.UNAUTHORIZED)
            and previous.state is LinkState.CONNECTED
            and log is not None
        ):
            log.note(status.message)

    def on_console_app_node_event(self, message: NodeEvent) -> None:
        event = message.event
        log = self._event_log()
        if log is None:  # the console is closing
            return
        log.add(event)
        kind = str(event.get("type", ""))
        if kind in PEER_EVENTS or kind.startswith("chain."):
            self.reload_status()
        if kind.startswith("job."):
            self.reload_jobs()
            job_id = (event.get("data") or {}).get("job_id")
            for screen in self.screen_stack:
                if isinstance(screen, JobDetailScreen) and screen.job_id == job_id:
                    screen.reload()

    # -- data -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.link_status.state is LinkState.CONNECTED

    @work(exclusive=True, group="status")
    async def reload_status(self) -> None:
        if not self.connected:
            return
        try:
            status = await self.client.status()
        except NodeClientError:
            return  # the link reports the connection state
        self.node_status = status
        self.peers = status.get("peers") or []

    @work(exclusive=True, group="jobs")
    async def reload_jobs(self) -> None:
        if not self.connected:
            return
        try:
            self.jobs = await self.client.jobs()
        except NodeClientError as exc:
            self.jobs_error = str(exc)
            return
        self.jobs_error = ""

    @on(DataTable.RowSelected, "#jobs-table")
    def _open_job(self, event: DataTable.RowSelected) -> None:
        self.open_job(str(event.row_key.value))

    def open_job(self, job_id: str) -> None:
        """Show one job's detail screen."""
        self.push_screen(JobDetailScreen(job_id, self.client))

    @on(PublishPane.Submitted)
    def _publish(self, message: PublishPane.Submitted) -> None:
        self.publish_job(message.pane, message.toml, message.participate)

    @work(exclusive=True, group="publish")
    async def publish_job(self, pane: PublishPane, toml: str, participate: bool = True) -> None:
        """Send a job file to the node; its refusal is shown under the editor."""
        pane.error = ""
        try:
            job = await self.client.publish(toml=toml, participate=participate)
        except (NodeNotRunning, Unauthorized) as exc:
            pane.error = str(exc)
            return
        except NodeClientError as exc:
            pane.error = str(exc).removeprefix(f"{self.where}: ")
            return
        self.notify(f"published {job.get('name')} ({short(job.get('job_id'), 10)})")
        self.reload_jobs()
        self.action_show_pane("jobs")

    # -- actions ----------------------------------------------------------------------------
    def action_show_pane(self, pane: str) -> None:
        while len(self.screen_stack) > 1:
            self.pop_screen()
        tabs = self.query_one(TabbedContent)
        tabs.active = pane
        self._focus_pane(pane)

    @on(TabbedContent.TabActivated, "#panes")
    def _pane_shown(self, event: TabbedContent.TabActivated) -> None:
        # a click on a tab focuses as its key does, unless an action already focused inside
        focused = self.focused
        if event.pane.id is not None and (focused is None or event.pane not in focused.ancestors):
            self._focus_pane(event.pane.id)

    def _focus_pane(self, pane: str) -> None:
        # Tables take the focus (arrows, Enter), and the Publish pane's path box, so that a
        # path typed at once is text, not shortcuts (Esc gives the keys back); elsewhere the
        # tab strip does, so that the single-letter keys keep working.
        widget = PANE_FOCUS.get(pane)
        (self.query_one(widget) if widget else self.query_one(Tabs)).focus()

    def action_leave_input(self) -> None:
        """Esc in a text box gives the keys back to the console."""
        if isinstance(self.focused, Input | TextArea):
            self.query_one(Tabs).focus()

    def action_refresh_all(self) -> None:
        if self.link_status.state is LinkState.UNAUTHORIZED or (
            self._link_worker is not None and self._link_worker.is_finished
        ):
            self._link_worker = self.run_worker(self._follow(), name="link", group="link")
        self.reload_status()
        self.reload_jobs()

    def action_filter_log(self) -> None:
        self.action_show_pane("log")
        self.query_one("#log-filter", Input).focus()

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        self.exit(0)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for pane in PANES:
            yield SystemCommand(
                f"Show {pane}",
                f"Switch to the {pane} pane",
                lambda p=pane: self.action_show_pane(p),
            )
        yield SystemCommand("Refresh", "Reload status and jobs now", self.action_refresh_all)
        yield SystemCommand("Filter log", "Focus the log's filter box", self.action_filter_log)
        yield SystemCommand("Toggle dark/light", "Switch theme", self.action_toggle_dark)
        yield SystemCommand("Help", "Keys and panes", self.action_help)
        if isinstance(screen, JobDetailScreen):
            yield SystemCommand(
                "Cancel job", "Cancel this job (owner only)", screen.action_cancel_job
            )
            yield SystemCommand(
                "Join job",
                "Take part in this job (queued until a slot is free)",
                screen.action_join_job,
            )
            yield SystemCommand(
                "Leave job", "Stop taking part in this job (asks first)", screen.action_leave_job
            )
            yield SystemCommand("Back", "Back to the panes", self.pop_screen)
        else:
            jobs = self.jobs or []
            for job in jobs:
                jid = str(job.get("job_id"))
                yield SystemCommand(
                    f"Open job {job.get('name')} {short(jid, 8)}",
                    "Rounds, plots and commitments of this job",
                    lambda j=jid: self.open_job(j),
                )
