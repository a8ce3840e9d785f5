"""The Jobs pane: every job this node knows, one row each; Enter opens its detail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable, Static

from gfl_console.format import percent, round_progress, short
from gfl_console.types import JobSummary

STATUS_STYLE = {
    "queued": "cyan",
    "active": "bold green",
    "finished": "bold",
    "cancelled": "yellow",
    "error": "bold red",
}


HINT = "Enter or click a job for its rounds; n publishes a new one."


def status_word(job: JobSummary) -> str:
    """A job's status, with its place in the queue while queued (``queued #2``)."""
    place = job.get("queue_position")
    return f"{job.get('status', '?')} #{place}" if place else str(job.get("status", "?"))


def job_cells(job: JobSummary) -> tuple[Any, ...]:
    """The table cells of one job summary."""
    status = str(job.get("status", "?"))
    divergent = job.get("divergent_rounds") or []
    return (
        str(job.get("name", "?")),
        short(job.get("job_id"), 8),
        Text(status_word(job), style=STATUS_STYLE.get(status, "")),
        round_progress(job),
        str(job.get("role") or "–"),
        str(job.get("participants", "–")),
        percent(job.get("accuracy")),
        Text(f"{len(divergent)} divergent", style="bold red") if divergent else Text("ok"),
    )


class JobsHint(Static):
    """The line above the jobs: how to open one, or why the list could not be loaded."""

    error: reactive[str] = reactive("")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(HINT, id=id)

    def watch_error(self, error: str) -> None:
        self.update(Text(error, style="bold red") if error else HINT)


class JobsTable(DataTable[Any]):
    """Jobs keyed by id; rows are updated in place so the cursor stays where the user put it."""

    jobs: reactive[list[JobSummary] | None] = reactive(None)

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for label, key in (
            ("Name", "name"),
            ("Job", "job"),
            ("Status", "status"),
            ("Round", "round"),
            ("Role", "role"),
            ("Peers", "participants"),
            ("Accuracy", "accuracy"),
            ("Check", "check"),
        ):
            self.add_column(label, key=key)

    def watch_jobs(self, jobs: list[JobSummary] | None) -> None:
        if jobs is not None:
            self.show(jobs)

    def show(self, jobs: Sequence[JobSummary]) -> None:
        rows = {str(j.get("job_id")): j for j in jobs}
        for key in [k for k in self.rows if k.value not in rows]:
            self.remove_row(key)
        ordered = sorted(rows.values(), key=lambda j: -(j.get("created_at") or 0))
        for job in ordered:
            jid = str(job.get("job_id"))
            cells = job_cells(job)
            if jid in self.rows:
                for column, value in zip(self.columns, cells, strict=True):
                    self.update_cell(jid, column, value)
            else:
                self.add_row(*cells, key=jid)

    @property
    def selected_job(self) -> str | None:
        """The id of the job under the cursor."""
        if not self.row_count:
            return None
        key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return key.value
