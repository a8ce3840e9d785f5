"""A finished job read through the CLI: rounds numbered 1..N, reports, output paths, pipes,
and a node driven from outside its datadir (-H/-P, --token-file, $GFL_API_TOKEN)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess

from support import gfl_command, gfl_env, run_gfl_process

from gfl.node.datadir import DataDir


def one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_rounds_are_counted_from_one_everywhere_people_read_them(trained, tmp_path):
    home, job = trained.home, trained.job_id
    shown = run_gfl_process("job", "show", job[:10], "--home", home, timeout=30)
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.split("round  accuracy", 1)[1].splitlines()[1:]
    assert [line.split()[0] for line in table] == ["1", "2"]
    assert "round     2/2" in shown.stdout

    watched = run_gfl_process("job", "watch", job, "--home", home, timeout=30)
    assert watched.returncode == 0 and watched.stdout.startswith("round 2/2  status finished")

    report = run_gfl_process("job", "report", job, "--home", home, timeout=30)
    assert [r["round"] for r in json.loads(report.stdout)["rounds"]] == [1, 2]
    as_csv = run_gfl_process("job", "report", job, "--csv", "--home", home, timeout=30)
    assert [row["round"] for row in csv.DictReader(io.StringIO(as_csv.stdout))] == ["1", "2"]

    # the API keeps the chain's numbering, from 0: the report is where it changes
    with trained.client() as client:
        assert [r["round"] for r in client.job(job)["rounds_detail"]] == [0, 1]
        assert [c["round"] for c in client.verify(job)] == [0, 1]

    png = tmp_path / "rounds.png"
    plotted = run_gfl_process("job", "report", job, "--plot", png, "--home", home, timeout=60)
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_to_a_path_that_cannot_be_written_is_one_line(trained, tmp_path):
    home, job = trained.home, trained.job_id
    for option, what in (("-o", "the report"), ("--plot", "the plot")):
        result = run_gfl_process(
            "job", "report", job, option, "/nonexistent/x.out", "--home", home, timeout=30
        )
        assert result.returncode == 1, result
        line = one_clean_line(result.stderr)
        assert line.startswith(f"gfl: cannot write {what} /nonexistent/x.out"), line
    folder = tmp_path / "a-folder"
    folder.mkdir()
    result = run_gfl_process("job", "report", job, "-o", folder, "--home", home, timeout=30)
    assert result.returncode == 1 and "cannot write the report" in one_clean_line(result.stderr)


def test_plotting_a_job_without_rounds_is_refused(trained, tmp_path):
    png = tmp_path / "empty.png"
    result = run_gfl_process(
        "job", "report", trained.idle_job_id, "--plot", png, "--home", trained.home, timeout=60
    )
    assert result.returncode == 1, result
    assert "no evaluated round yet" in one_clean_line(result.stderr)
    assert not png.exists() and result.stdout == ""


def test_output_into_a_closed_pipe_ends_quietly(trained):
    """`gfl job list | head -0`: the reader is gone before the first line."""
    for args in (["job", "list", "--home", trained.home], ["--help"], ["chain", "--help"]):
        read, write = os.pipe()
        os.close(read)
        try:
            result = subprocess.run(
                gfl_command(*args),
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                env=gfl_env(),
            )
        finally:
            os.close(write)
        assert result.stderr == "", (args, result.stderr)
        # 128 + SIGPIPE, as a Unix tool killed by it (argparse's help ignores the pipe: 0)
        assert result.returncode == (141 if args[0] == "job" else 0), args


def test_a_node_is_driven_without_its_datadir(trained, tmp_path):
    api = trained.node.status["api"]
    token = DataDir(trained.home).read_token()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    nowhere = tmp_path / "no-datadir"
    env = gfl_env(GFL_API_TOKEN=token)
    where = ["-H", api["host"], "-P", str(api["port"]), "--home", str(nowhere)]

    listed = run_gfl_process("job", "list", *where, "--token-file", token_file, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert trained.job_id[:12] in listed.stdout
    shown = run_gfl_process("job", "show", trained.job_id[:8], *where, timeout=30, env=env)
    assert shown.returncode == 0 and "finished" in shown.stdout, shown.stderr
    report = run_gfl_process("job", "report", trained.job_id, "-P", api["port"], env=env)
    assert report.returncode == 0 and json.loads(report.stdout)["job_id"] == trained.job_id

    # GFL_API_TOKEN stands in for a datadir that is not there, also without -H
    attached = run_gfl_process(
        "attach", "--plain", "-P", str(api["port"]), "--home", nowhere, timeout=30, env=env
    )
    assert attached.returncode == 0, attached.stderr
    assert trained.node.peer_id in attached.stdout
    status = run_gfl_process(
        "status", "--home", nowhere, "--token-file", token_file, "-P", str(api["port"]), timeout=30
    )
    assert status.returncode == 0, status.stderr
    # a token file alone: the datadir's node address, the file's token
    by_file = run_gfl_process("status", "--home", trained.home, "--token-file", token_file)
    assert by_file.returncode == 0 and trained.node.peer_id in by_file.stdout, by_file.stderr

    # a wrong token from the environment is named, in one line
    refused = run_gfl_process("job", "list", *where, env=gfl_env(GFL_API_TOKEN="nope"))
    assert refused.returncode == 1 and "token" in one_clean_line(refused.stderr)


def test_plain_status_shows_jobs_drops_and_the_balance(trained):
    result = run_gfl_process("status", "--home", trained.home, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "finished 1" in lines["jobs"] and "active 1" in lines["jobs"], result.stdout
    assert lines["drops"].split(None, 1)[1] == "none"
    assert re.search(r"balance \d+(\.\d+)? ETH$", lines["account"]), lines["account"]
