"""`gfl job ...`: publish, list, show, watch, join, leave, cancel and report jobs through a
node's API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfl.errors import GflError

if TYPE_CHECKING:
    from gfl_console.client import NodeClient
    from gfl_console.types import JobDetail, JobSummary


def _client(args: argparse.Namespace) -> NodeClient:
    from gfl.cli.options import node_client

    return node_client(args)


def _pct(v: Any) -> str:
    return f"{100 * v:5.1f}%" if isinstance(v, int | float) else "    -"


def format_jobs(jobs: Sequence[JobSummary]) -> str:
    if not jobs:
        return "no jobs"
    lines = [f"{'JOB':<12} {'NAME':<18} {'STATUS':<10} {'ROUND':>7} {'ACC':>6}  ROLE"]
    for j in jobs:
        priority = f"  priority {j['priority']}" if j.get("priority") else ""
        lines.append(
            f"{j['job_id'][:12]:<12} {j['name'][:18]:<18} {status_word(j):<10} "
            f"{j['round']:>3}/{j['rounds']:<3} {_pct(j.get('accuracy'))}  {j.get('role', '')}"
            f"{priority}"
        )
    return "\n".join(lines)


def status_word(job: JobSummary) -> str:
    """A job's status, with its place in the queue while queued (``queued #2``)."""
    place = job.get("queue_position")
    return f"{job['status']} #{place}" if place else str(job["status"])


def format_job(job: JobDetail) -> str:
    lines = [
        f"job       {job['job_id']}",
        f"name      {job['name']}",
        f"owner     {job['owner']}",
        f"status    {status_word(job)} ({job.get('role')})",
        f"round     {job['round']}/{job['rounds']}",
        f"model     {job.get('model_hash') or '-'}",
    ]
    if job.get("divergent_rounds"):
        shown = ", ".join(str(r + 1) for r in job["divergent_rounds"])
        lines.append(f"ALARM     divergent rounds: {shown}")
    if job.get("queue_position"):
        lines.append(
            f"queue     #{job['queue_position']}, priority {job.get('priority', 0)}: it starts "
            "when one of the node's max_concurrent slots is free"
        )
    if job.get("error"):
        lines.append(f"error     {job['error']}")
    privacy = (job.get("spec") or {}).get("privacy")
    if privacy:
        spent = job.get("epsilon")
        how = (
            "user-level, noise shared under secure aggregation"
            if privacy.get("mode") == "distributed"
            else "DP-SGD"
        )
        lines.append(
            f"privacy   ε {spent if spent is not None else 0:.3g} spent of {privacy['epsilon']:g} "
            f"(δ {privacy['delta']:g}, clip {privacy['max_grad_norm']:g}, {how})"
        )
    rounds = job.get("rounds_detail", [])
    if rounds:
        eps_head = "      ε" if privacy else ""
        lines.append(f"\nround  accuracy    loss{eps_head}  updates  model hash")
        for r in rounds:
            m = r["metrics"]
            eps = m.get("epsilon")
            eps_cell = (f"  {eps:5.3g}" if eps is not None else "      -") if privacy else ""
            lines.append(
                f"{r['round'] + 1:>5}  {_pct(m.get('accuracy')):>8}  "
                f"{m.get('loss', float('nan')):6.4f}{eps_cell}  {m.get('updates', '-'):>7}  "
                f"{(r.get('model_hash') or '-')[:16]}{'  DIVERGENT' if r['divergent'] else ''}"
            )
    return "\n".join(lines)


def cmd_publish(args: argparse.Namespace) -> int:
    from gfl.fl.spec import load_job_file

    spec = load_job_file(args.file)  # validated here first: one clear line for a bad file
    with _client(args) as client:
        job = client.publish(
            spec.to_dict(), participate=not args.no_participate, priority=args.priority
        )
    queued = f"; queued #{job.get('queue_position')}" if job["status"] == "queued" else ""
    print(f"published job {job['job_id']} ({spec.name}, {spec.rounds} rounds){queued}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.jobs()
    print(json.dumps(jobs, indent=2) if args.json else format_jobs(jobs))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.job_id)
    print(json.dumps(job, indent=2) if args.json else format_job(job))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    last = None
    with _client(args) as client:
        while True:
            job = client.job(args.job_id)
            line = (
                f"round {job['round']}/{job['rounds']}  status {job['status']}  "
                f"accuracy {_pct(job.get('accuracy'))}"
            )
            if line != last:
                print(line, flush=True)
                last = line
            if job["status"] not in ("queued", "active"):
                return 0 if job["status"] == "finished" else 1
            if deadline is not None and time.monotonic() > deadline:
                raise GflError(f"job {args.job_id} still running after {args.timeout:g}s")
            time.sleep(0.5)


def cmd_join(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.join(args.job_id, priority=args.priority)
    if job["status"] == "queued":
        print(
            f"job {job['job_id']} queued #{job.get('queue_position')} "
            f"(priority {job.get('priority', 0)}): it starts when a slot is free"
        )
    else:
        print(f"joined job {job['job_id']}: {job['status']}")
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.leave(args.job_id)
    print(f"left job {job['job_id']}: this node no longer trains it ({job['role']})")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job_id)
    print(f"cancelled job {job['job_id']}")
    return 0


def _check_writable(path: str, what: str) -> None:
    """Refuse an output path before fetching anything: its folder must exist."""
    folder = Path(path).expanduser().absolute().parent
    if not folder.is_dir():
        raise GflError(f"cannot write {what} {path}: no folder {folder}")


def _write(path: str, text: str, what: str) -> None:
    try:
        Path(path).expanduser().write_text(text)
    except OSError as exc:
        raise GflError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def cmd_report(args: argparse.Namespace) -> int:
    from gfl.scheduler.report import plot_report

    for path, what in ((args.output, "the report"), (args.plot, "the plot")):
        if path:
            _check_writable(path, what)
    with _client(args) as client:
        if args.csv:
            text = client.report(args.job_id, "csv")
        else:
            text = json.dumps(client.report(args.job_id), indent=2)
        job = client.job(args.job_id) if args.plot else None
    if job is not None:  # first: a job with nothing to plot is refused before any output
        try:
            plot_report(dict(job), Path(args.plot).expanduser())
        except OSError as exc:
            raise GflError(f"cannot write the plot {args.plot}: {exc.strerror or exc}") from None
    if args.output:
        _write(args.output, text, "the report")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if job is not None:
        print(f"wrote {args.plot}")
    return 0


def _priority_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--priority",
        type=int,
        metavar="N",
        help="place in the job queue: higher starts first (default 0; equal ones in order)",
    )


def register(job_sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the `gfl job` subcommands to ``job_sub`` (the job group's subparsers)."""

    def add(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = job_sub.add_parser(
            name, help=help, description=help, parents=parents
        )
        p.set_defaults(func=func)
        return p

    p = add("publish", "register a job (TOML file) on chain and announce it", cmd_publish)
    p.add_argument("file", help="job file (TOML)")
    p.add_argument(
        "--no-participate", action="store_true", help="only publish; this node does not train"
    )
    _priority_option(p)
    p = add("list", "list the jobs this node knows", cmd_list)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("show", "show one job with its rounds", cmd_show)
    p.add_argument("job_id", help="job id (a unique prefix is enough)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("watch", "follow a job until it ends", cmd_watch)
    p.add_argument("job_id", help="job id (a unique prefix is enough)")
    p.add_argument(
        "--timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="give up after SECONDS (default: never)",
    )
    p = add("join", "take part in a job (queued until a slot is free)", cmd_join)
    p.add_argument("job_id", help="job id (a unique prefix is enough)")
    _priority_option(p)
    p = add("leave", "stop taking part in a job (leaves it on chain)", cmd_leave)
    p.add_argument("job_id", help="job id (a unique prefix is enough)")
    p = add("cancel", "cancel a job you own", cmd_cancel)
    p.add_argument("job_id", help="job id (a unique prefix is enough)")
    p = add("report", "per-round metrics as JSON or CSV, and a PNG plot", cmd_report)
    p.add_argument("job_id", help="job id (a unique prefix is enough)")
    p.add_argument("--csv", action="store_true", help="CSV instead of JSON")
    p.add_argument("--json", action="store_true", help="JSON (the default)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--plot", metavar="PNG", help="also plot accuracy and loss per round")
    from gfl.cli import bundle

    bundle.register(add)
