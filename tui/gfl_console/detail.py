"""The job detail screen: progress, accuracy and loss per round, commitments and checks.

It reloads ``GET /jobs/{id}`` and ``GET /jobs/{id}/verify`` whenever the app
sees an event about this job (and every few seconds, in case one was missed).
The API numbers rounds from 0, as the chain does; this screen shows them from 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static
from textual_plotext import PlotextPlot

from gfl_console.client import AsyncNodeClient
from gfl_console.confirm import ConfirmScreen
from gfl_console.errors import NodeClientError
from gfl_console.format import DASH, human_bytes, number, percent, round_label, short
from gfl_console.jobs import status_word
from gfl_console.types import (
    Commitment,
    JobDetail,
    JobSummary,
    RoundCheck,
    RoundMetrics,
    RoundRecord,
)

POLL_S = 5.0
ROUND_COLUMNS = (
    "Round",
    "Phase",
    "Acc",
    "Loss",
    "Upd",
    "Train s",
    "Model",
    "Chain",
    "Role",
    "Fetched",
)
PRIVATE_ROUND_COLUMNS = (*ROUND_COLUMNS[:4], "ε", *ROUND_COLUMNS[4:])


def role_cell(m: RoundMetrics) -> str:
    """This node's part in a round: all-to-all, or (sharded) the shards it aggregated and
    recomputed (shards counted from 0, as on the wire)."""
    if m.get("mode") != "sharded":
        return "all-to-all" if m.get("mode") else DASH
    parts = [str(m.get("role") or "member")]
    for shards, label in ((m.get("aggregated"), "agg"), (m.get("recomputed"), "re")):
        if shards:
            parts.append(f"{label} {','.join(map(str, shards))}")
    return " · ".join(parts)


#: A sharded round's download by phase (docs/protocol.md, 8.6), as the Fetched cell names it.
FETCH_PHASES = (
    ("bytes_manifests", "manifests"),
    ("bytes_shards", "shards"),
    ("bytes_settled", "settled"),
    ("bytes_recomputed", "recomputed"),
)


def fetched_cell(m: RoundMetrics) -> str:
    """What this node downloaded in a round; in a sharded round, by phase too."""
    total = human_bytes(m.get("bytes_received"))
    if m.get("mode") != "sharded":
        return total
    got: dict[str, Any] = dict(m)
    parts = [f"{label} {human_bytes(got[key])}" for key, label in FETCH_PHASES if got.get(key)]
    return f"{total} ({' · '.join(parts)})" if parts else total


def verify_cell(check: RoundCheck | None) -> Text:
    """How a round's model hash compares with what the chain decided."""
    if check is None:
        return Text("…", style="dim")
    if check.get("verified"):
        return Text("✓ ok", style="bold green")
    if check.get("decision") == "void":
        return Text("void", style="yellow")
    if check.get("chain_model") is None:
        return Text("pending", style="yellow")
    return Text("✗ differs", style="bold red")


def commitment_check(c: Commitment, check: RoundCheck | None) -> Text:
    """An update: whether this node fetched it and its hash matched. A vote: whether it is
    for the model the chain finalized for its round."""
    if c.get("verified") is True:
        return Text("✓ fetched, hash ok", style="green")
    if c.get("verified") is False:
        return Text("✗ hash mismatch", style="bold red")
    majority = check.get("chain_model") if check else None
    if c.get("kind") == "model" and majority:
        if majority == c.get("hash"):
            return Text("✓ finalized", style="green")
        return Text("✗ dissent", style="bold red")
    return Text("–", style="dim")


def title_text(job: JobSummary) -> Text:
    status = str(job.get("status", "?"))
    text = Text(str(job.get("name", "?")), style="bold")
    text.append(f"  {short(job.get('job_id'), 16)}  ", style="dim")
    style = {"error": "bold red", "active": "bold green", "queued": "cyan"}.get(status, "bold")
    text.append(status_word(job), style=style)
    text.append(f" · {job.get('role') or DASH} · owner {short(job.get('owner'), 10)}")
    if job.get("error"):
        text.append(f"\nerror: {job['error']}", style="bold red")
    return text


def traffic_text(job: JobSummary) -> str:
    divergent = job.get("divergent_rounds") or []
    spent = job.get("epsilon")
    return (
        f"sent {human_bytes(job.get('bytes_sent'))} · received "
        f"{human_bytes(job.get('bytes_received'))} · participants {job.get('participants', DASH)}"
        f" · divergent rounds: {', '.join(map(round_label, divergent)) if divergent else 'none'}"
        + (f" · ε spent {number(spent, 2)}" if spent is not None else "")
    )


class JobDetailScreen(Screen[None]):
    """One job, live: it loads itself through the client and redraws on `reload()`."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "reload", "Refresh"),
        Binding("c", "cancel_job", "Cancel job"),
        Binding("a", "join_job", "Join job", show=False),
        Binding("x", "leave_job", "Leave job", show=False),
        Binding("question_mark", "app.help", "Help", key_display="?"),
    ]

    def __init__(self, job_id: str, client: AsyncNodeClient) -> None:
        super().__init__()
        self.job_id = job_id
        self.client = client
        self.detail: JobDetail | None = None
        self.checks: dict[int, RoundCheck] = {}
        self.private = False  # the job has a [privacy] table: rounds show the ε spent

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        with VerticalScroll(id="detail"):
            yield Static("Loading the job…", id="detail-title")
            with Horizontal(id="detail-progress"):
                yield ProgressBar(total=None, show_eta=False, id="detail-bar")
                yield Static("", id="detail-round")
            with Horizontal(id="detail-plots"):
                yield PlotextPlot(id="plot-accuracy")
                yield PlotextPlot(id="plot-loss")
            yield Static("", id="detail-traffic")
            yield DataTable(id="detail-rounds", cursor_type="row", zebra_stripes=True)
            yield DataTable(id="detail-commitments", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"job {short(self.job_id, 12)}"
        rounds = self.query_one("#detail-rounds", DataTable)
        rounds.border_title = "Rounds"
        for label in ROUND_COLUMNS:
            rounds.add_column(label)
        commitments = self.query_one("#detail-commitments", DataTable)
        commitments.border_title = "Commitments"
        for label in ("Round", "Kind", "Participant", "Hash", "Samples", "Check"):
            commitments.add_column(label)
        self.set_interval(POLL_S, self.reload)
        self.reload()

    def action_reload(self) -> None:
        self.reload()

    @work(exclusive=True, group="detail")
    async def reload(self) -> None:
        try:
            detail = await self.client.job(self.job_id)
        except NodeClientError as exc:
            self.query_one("#detail-title", Static).update(Text(str(exc), style="bold red"))
            return
        checks: list[RoundCheck]
        try:
            checks = await self.client.verify(self.job_id)
        except NodeClientError:
            checks = []  # the chain may be unreachable: the rounds still show
        self.show(detail, checks)

    def show(self, detail: JobDetail, checks: Sequence[RoundCheck]) -> None:
        """Draw the job from its API detail and its verification list."""
        self.detail = detail
        self.checks = {int(c["round"]): c for c in checks if "round" in c}
        private = bool((detail.get("spec") or {}).get("privacy"))
        if private != self.private:
            self.private = private
            table: DataTable[Any] = self.query_one("#detail-rounds", DataTable)
            table.clear(columns=True)
            for label in PRIVATE_ROUND_COLUMNS if private else ROUND_COLUMNS:
                table.add_column(label)
        total = int(detail.get("rounds") or 0)
        done = int(detail.get("round") or 0)
        self.query_one("#detail-title", Static).update(title_text(detail))
        bar = self.query_one("#detail-bar", ProgressBar)
        bar.update(total=max(total, 1), progress=min(done, max(total, 1)))
        self.query_one("#detail-round", Static).update(f"round {done}/{total}")
        self.query_one("#detail-traffic", Static).update(traffic_text(detail))
        rounds = list(detail.get("rounds_detail") or [])
        self._plot(rounds)
        self._rounds_table(rounds)
        self._commitments_table(detail.get("commitments") or [])

    def _plot(self, rounds: Sequence[RoundRecord]) -> None:
        done = [r for r in rounds if (r.get("metrics") or {}).get("accuracy") is not None]
        xs: list[float] = [int(r["round"]) + 1 for r in done]
        series = {
            "accuracy": [float(r["metrics"].get("accuracy") or 0.0) for r in done],
            "loss": [float(r["metrics"].get("loss") or 0.0) for r in done],
        }
        for key, ys in series.items():
            widget = self.query_one(f"#plot-{key}", PlotextPlot)
            plt = widget.plt
            plt.clear_data()
            plt.clear_figure()
            plt.title(key)
            plt.xlabel("round")
            if xs:
                plt.plot(xs, ys, marker="braille")
                plt.scatter(xs, ys)
                plt.xticks(xs)
            widget.refresh()

    def _rounds_table(self, rounds: Sequence[RoundRecord]) -> None:
        table: DataTable[Any] = self.query_one("#detail-rounds", DataTable)
        table.clear()
        for r in rounds:
            m = r.get("metrics") or {}
            n = int(r.get("round", 0))
            epsilon = [number(m.get("epsilon"), 2)] if self.private else []
            table.add_row(
                round_label(n),
                str(r.get("phase") or DASH),
                percent(m.get("accuracy")),
                number(m.get("loss")),
                *epsilon,
                str(m.get("updates", DASH)),
                number(m.get("t_train_s"), 2),
                short(r.get("model_hash"), 8),
                verify_cell(self.checks.get(n))
                if not r.get("divergent")
                else Text("✗ divergent", style="bold red"),
                role_cell(m),
                fetched_cell(m),
                key=str(n),
            )

    def _commitments_table(self, commitments: Sequence[Commitment]) -> None:
        table: DataTable[Any] = self.query_one("#detail-commitments", DataTable)
        table.clear()
        for c in commitments:
            table.add_row(
                round_label(c.get("round")),
                str(c.get("kind", DASH)),
                short(c.get("participant"), 12),
                short(c.get("hash"), 12),
                str(c.get("samples") or DASH),
                commitment_check(c, self.checks.get(int(c.get("round", -1)))),
            )

    def action_cancel_job(self) -> None:
        """Ask first: a cancelled job cannot be resumed."""
        name = (self.detail.get("name") if self.detail else None) or short(self.job_id, 10)
        question = f"Cancel job {name}? Every participant stops training it; this cannot be undone."

        def answered(yes: bool | None) -> None:
            if yes:
                self.cancel_job()

        self.app.push_screen(ConfirmScreen(question, yes="Cancel the job"), answered)

    @work(exclusive=True, group="cancel")
    async def cancel_job(self) -> None:
        """Cancel the job on the node (owner only); the refusal is shown as a notification."""
        try:
            await self.client.cancel(self.job_id)
        except NodeClientError as exc:
            self.notify(str(exc), title="Cancel refused", severity="error")
            return
        self.notify(f"job {short(self.job_id, 10)} cancelled")
        self.reload()

    def action_join_job(self) -> None:
        self.join_job()

    @work(exclusive=True, group="membership")
    async def join_job(self) -> None:
        """Ask the node to take part in the job (queued until a slot is free); a refusal
        says why, in a notification."""
        try:
            job = await self.client.join(self.job_id)
        except NodeClientError as exc:
            self.notify(str(exc), title="Join refused", severity="error")
            return
        self.notify(f"job {short(self.job_id, 10)}: {status_word(job)}")
        self.reload()

    def action_leave_job(self) -> None:
        """Ask first: the registry admits an account to a job once."""
        name = (self.detail.get("name") if self.detail else None) or short(self.job_id, 10)
        question = (
            f"Leave job {name}? This node stops training it and leaves its member set; "
            "it cannot join the job again."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.leave_job()

        self.app.push_screen(ConfirmScreen(question, yes="Leave the job"), answered)

    @work(exclusive=True, group="membership")
    async def leave_job(self) -> None:
        """Ask the node to leave the job; a refusal says why, in a notification."""
        try:
            await self.client.leave(self.job_id)
        except NodeClientError as exc:
            self.notify(str(exc), title="Leave refused", severity="error")
            return
        self.notify(f"left job {short(self.job_id, 10)}")
        self.reload()
