"""Per-round metrics of a job as JSON, CSV or a PNG plot (`gfl job report`).

Rounds are numbered 1..N here, as people count them; the store, the API's job detail
and the chain number them from 0, and this is where one becomes the other.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from gfl.errors import GflError

#: Seconds per phase of a round on one node, in the order they happen.
PHASES = (
    "t_train_s",
    "t_encode_s",
    "t_commit_s",
    "t_fetch_s",
    "t_aggregate_s",
    "t_model_commit_s",
    "t_eval_s",
)
COLUMNS = (
    "round", "accuracy", "loss", "train_loss", "train_accuracy", "updates", "samples",
    "bytes_sent_update", "bytes_received", *PHASES, "divergent", "model_hash",
)  # fmt: skip


class ReportError(GflError):
    """The report cannot be drawn (a plot of a job without evaluated rounds)."""


def report_rows(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per round from a job's detail (as the API serves it), rounds from 1."""
    rows = []
    for r in detail.get("rounds_detail", []):
        m = r.get("metrics", {})
        row = {c: m.get(c) for c in COLUMNS}
        row.update(
            round=r["round"] + 1,
            divergent=bool(r.get("divergent")),
            model_hash=r.get("model_hash"),
        )
        rows.append(row)
    return rows


def render_report(detail: dict[str, Any], fmt: str) -> tuple[str, str]:
    """(text, media type) of the report in ``fmt`` ("json" or "csv")."""
    rows = report_rows(detail)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue(), "text/csv"
    doc = {
        "job_id": detail.get("job_id"),
        "name": detail.get("name"),
        "status": detail.get("status"),
        "rounds": rows,
    }
    return json.dumps(doc, indent=2), "application/json"


def plot_report(detail: dict[str, Any], path: Path) -> Path:
    """Accuracy and loss per round as a PNG; `ReportError` when no round was evaluated yet."""
    rows = [r for r in report_rows(detail) if r["accuracy"] is not None]
    if not rows:
        raise ReportError(
            f"job {str(detail.get('job_id'))[:12]} has no evaluated round yet: nothing to plot"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    xs = [r["round"] for r in rows]
    ax1.plot(xs, [100 * r["accuracy"] for r in rows], marker="o")
    ax1.set_xlabel("round")
    ax1.set_ylabel("test accuracy (%)")
    ax2.plot(xs, [r["loss"] for r in rows], marker="o", color="tab:red")
    ax2.set_xlabel("round")
    ax2.set_ylabel("test loss")
    fig.suptitle(f"{detail.get('name')} ({str(detail.get('job_id'))[:10]}…)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
