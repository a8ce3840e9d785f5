"""The help screen: every key, what each pane shows, and how to leave."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("o / p / j / l / n", "Overview, Peers, Jobs, Log, Publish (its path box takes the keys)"),
    ("Enter (on a job)", "open the job's detail: rounds, plots, commitments"),
    ("Esc", "back from a job's detail; close this help"),
    ("r", "refresh now (and retry a refused connection)"),
    ("c (in a job)", "cancel the job (owner only; asks first)"),
    ("a / x (in a job)", "join the job (queued until a slot is free) / leave it (asks first)"),
    ("/", "filter the log"),
    ("d", "toggle dark / light theme"),
    ("Ctrl+P", "command palette: every action by name"),
    ("?", "this help"),
    ("q", "quit the console (the node keeps running)"),
)
ABOUT = (
    "The console is a client of the node's control API: it shows what the node "
    "reports and follows its event stream, reconnecting when the node restarts. "
    "Quitting it never stops the node; use `gfl stop` for that. Mouse: click tabs, "
    "rows and buttons."
)


def keys_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, what in KEYS:
        table.add_row(key, what)
    return table


class HelpScreen(ModalScreen[None]):
    """Keys and a word about what the console is."""

    BINDINGS = [  # noqa: RUF012
        Binding("escape,q,question_mark", "dismiss", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static("GFL console — help", id="help-title")
            yield Static(keys_table())
            yield Static(ABOUT, id="help-about")

    def on_click(self) -> None:
        self.dismiss()
