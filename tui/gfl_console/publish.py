"""The Publish pane: write or load a job TOML and publish it; errors are shown inline.

The text is checked as TOML here (a syntax error names its line at once);
what the job spec means is checked by the node, whose refusal is shown under
the editor, word for word.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Button, Checkbox, Input, Static, TextArea

TEMPLATE = """\
name = "demo"
model = "mlp"
dataset = "digits"
rounds = 3
min_updates = 1
round_timeout = 30
local_epochs = 1
batch_size = 16
lr = 0.05
strategy = "fedavg"
seed = 1

[model_kwargs]
in_features = 64
hidden = 32
"""
MAX_TOML = 65536


class PublishError(ValueError):
    """The job text cannot be sent as it is."""


def check_toml(text: str) -> None:
    """Refuse text that is not a TOML table before bothering the node."""
    if not text.strip():
        raise PublishError("the job file is empty")
    if len(text.encode()) > MAX_TOML:
        raise PublishError("a job file is at most 64 KiB")
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PublishError(f"not valid TOML: {exc}") from None


class PublishPane(Vertical):
    """A job editor with a file loader; posts `PublishPane.Submitted` for the app to send.

    ``error`` is shown under the editor: this pane's own TOML check, or the node's refusal.
    """

    error: reactive[str] = reactive("")

    class Submitted(Message):
        """The user asked to publish this text."""

        def __init__(self, pane: PublishPane, toml: str, participate: bool) -> None:
            super().__init__()
            self.pane = pane
            self.toml = toml
            self.participate = participate

        @property
        def control(self) -> PublishPane:
            return self.pane

    def compose(self) -> ComposeResult:
        with Horizontal(id="publish-file"):
            yield Input(placeholder="path to a job .toml file (or edit below)", id="publish-path")
            yield Button("Load", id="publish-load")
        yield TextArea(TEMPLATE, id="publish-toml", show_line_numbers=True)
        yield Static("", id="publish-error")
        with Horizontal(id="publish-actions"):
            yield Checkbox("train on this node too", value=True, id="publish-participate")
            yield Button("Publish", variant="primary", id="publish-go")

    @property
    def text(self) -> str:
        return self.query_one("#publish-toml", TextArea).text

    @text.setter
    def text(self, value: str) -> None:
        self.query_one("#publish-toml", TextArea).load_text(value)

    def watch_error(self, message: str) -> None:
        error = self.query_one("#publish-error", Static)
        error.update(message)
        error.set_class(bool(message), "visible")

    def load_file(self, path: str) -> None:
        try:
            text = Path(path).expanduser().read_text()
        except OSError as exc:
            self.error = f"cannot read {path}: {exc.strerror or exc}"
            return
        except UnicodeDecodeError:
            self.error = f"{path} is not a text file"
            return
        self.text = text
        self.error = ""

    def submit(self) -> None:
        """Check the text and hand it to the app."""
        text = self.text
        try:
            check_toml(text)
        except PublishError as exc:
            self.error = str(exc)
            return
        self.error = ""
        participate = self.query_one("#publish-participate", Checkbox).value
        self.post_message(self.Submitted(self, text, participate))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "publish-load":
            self.load_file(self.query_one("#publish-path", Input).value)
        elif event.button.id == "publish-go":
            self.submit()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "publish-path":
            event.stop()
            self.load_file(event.value)
