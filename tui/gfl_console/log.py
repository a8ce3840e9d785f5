"""The Log pane: the node's live events, with a filter box."""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, RichLog

from gfl_console.format import clock, event_level, event_text, matches
from gfl_console.types import Event

LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "info": "", "console": "bold cyan"}
KEEP = 2000


def event_line(event: Mapping[str, Any]) -> Text:
    """One coloured log line: time, type, data."""
    level = event_level(str(event.get("type", "")))
    line = Text(clock(event.get("ts")) + " ", style="dim")
    line.append(event_text(event), style=LEVEL_STYLE[level])
    return line


class EventLog(Vertical):
    """Keeps the last events and shows those matching the filter."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.events: collections.deque[Event] = collections.deque(maxlen=KEEP)
        self.query_text = ""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: words that every shown event contains", id="log-filter")
        yield RichLog(id="log-lines", max_lines=KEEP, wrap=True, markup=False)

    def add(self, event: Event) -> None:
        self.events.append(event)
        if matches(event, self.query_text):
            self.query_one(RichLog).write(event_line(event))

    def note(self, text: str) -> None:
        """A line from the console itself (connection lost, node restarted)."""
        self.add({"seq": 0, "ts": time.time(), "type": "console", "data": {"message": text}})

    def shown(self) -> list[Event]:
        """The events the filter lets through, oldest first."""
        return [e for e in self.events if matches(e, self.query_text)]

    def on_input_changed(self, message: Input.Changed) -> None:
        message.stop()
        self.query_text = message.value
        view = self.query_one(RichLog)
        view.clear()
        for event in self.shown():
            view.write(event_line(event))
