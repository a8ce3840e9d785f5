"""The link bar: one line under the header saying whether the console reaches the node."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static

from gfl_console.link import LinkState, LinkStatus

ICONS = {
    LinkState.CONNECTED: "●",
    LinkState.CONNECTING: "…",
    LinkState.DOWN: "✖",
    LinkState.UNAUTHORIZED: "✖",
}


class LinkBar(Static):
    """The link's state as an icon and a sentence; its CSS class (``-down``...) colours it."""

    link: reactive[LinkStatus | None] = reactive(None)

    def watch_link(self, link: LinkStatus | None) -> None:
        if link is None:
            return
        self.update(f"{ICONS[link.state]} {link.message}")
        for state in LinkState:
            self.set_class(link.state is state, f"-{state.value}")
