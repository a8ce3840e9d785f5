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
#: Bytes a node fetched per phase of a sharded round (docs/protocol.md, section 8).
SHARD_BYTES = ("bytes_manifests", "bytes_shards", "bytes_settled", "bytes_recomputed")
COLUMNS = (
    "round", "accuracy", "loss", "epsilon", "train_loss", "train_accuracy", "updates", "samples",
    "bytes_sent_update", "bytes_received", *PHASES, "mode", "role", "aggregated", "recomputed",
    *SHARD_BYTES, "divergent", "model_hash",
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
    """Accuracy and loss per round as a PNG (and the ε spent, for a job with ``[privacy]``);
    `ReportError` when no round was evaluated yet."""
    rows = [r for r in report_rows(detail) if r["accuracy"] is not None]
    if not rows:
        raise ReportError(
            f"job {str(detail.get('job_id'))[:12]} has no evaluated round yet: nothing to plot"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spent = [r for r in report_rows(detail) if r["epsilon"] is not None]
    fig, axes = plt.subplots(1, 3 if spent else 2, figsize=(13 if spent else 9, 3.5))
    xs = [r["round"] for r in rows]
    axes[0].plot(xs, [100 * r["accuracy"] for r in rows], marker="o")
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].plot(xs, [r["loss"] for r in rows], marker="o", color="tab:red")
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("test loss")
    if spent:
        axes[2].plot([r["round"] for r in spent], [r["epsilon"] for r in spent], marker="o")
        axes[2].set_xlabel("round")
        axes[2].set_ylabel("ε spent by this node")
    fig.suptitle(f"{detail.get('name')} ({str(detail.get('job_id'))[:10]}…)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
