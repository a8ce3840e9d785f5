"""`gfl job ...` against a real single node with the embedded chain: publish, follow, report."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest
from support import local_config

from gfl.fl.spec import load_job_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_job_file_is_valid(path):
    spec = load_job_file(path)
    assert spec.publish_problems() == [], spec.publish_problems()
    assert spec.to_bytes() == type(spec).from_bytes(spec.to_bytes()).to_bytes()


def _one_node_job(tmp_path: Path) -> Path:
    text = (EXAMPLES / "digits-fedavg.toml").read_text()
    text = text.replace("rounds = 5", "rounds = 2").replace("min_updates = 2", "min_updates = 1")
    job = tmp_path / "job.toml"
    job.write_text(text)
    return job


def test_publish_watch_show_and_report_on_one_node(tmp_path, init_home, start_node, run_gfl):
    config = dataclasses.replace(local_config(), data={"digits": ""})
    home = init_home("solo", config=config.replace("jobs", auto_join=True))
    start_node(home)
    job_file = _one_node_job(tmp_path)

    published = run_gfl("job", "publish", job_file, "--home", home, timeout=60)
    assert published.returncode == 0, published.stderr
    job_id = published.stdout.split()[2]

    watched = run_gfl("job", "watch", job_id[:10], "--home", home, "--timeout", "120", timeout=150)
    assert watched.returncode == 0, watched.stderr
    assert "status finished" in watched.stdout

    listed = run_gfl("job", "list", "--json", "--home", home, timeout=30)
    [job] = json.loads(listed.stdout)
    assert job["job_id"] == job_id and job["round"] == 2 and job["status"] == "finished"

    shown = run_gfl("job", "show", job_id, "--home", home, timeout=30)
    assert "round     2/2" in shown.stdout

    png = tmp_path / "acc.png"
    report = run_gfl("job", "report", job_id, "--csv", "--plot", png, "--home", home, timeout=60)
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(io.StringIO(report.stdout.split("wrote")[0])))
    assert [int(r["round"]) for r in rows] == [1, 2]  # rounds as people count them
    assert all(float(r["accuracy"]) > 0 for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_job_file_is_one_line(tmp_path, init_home, start_node, run_gfl):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmodel = "mlp"\ndataset = "digits"\nrounds = 0\n')
    result = run_gfl("job", "publish", bad, "--home", tmp_path / "none", timeout=30)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "rounds" in lines[0] and "Traceback" not in result.stderr


def test_the_owner_cancels_a_job_and_the_node_stops_running_it(
    tmp_path, init_home, start_node, run_gfl
):
    config = dataclasses.replace(local_config(), data={"digits": ""})
    home = init_home("owner", config=config.replace("jobs", auto_join=True))
    start_node(home)
    text = (EXAMPLES / "digits-fedavg.toml").read_text().replace("rounds = 5", "rounds = 500")
    job_file = tmp_path / "long.toml"
    job_file.write_text(text.replace("min_updates = 2", "min_updates = 1"))
    published = run_gfl("job", "publish", job_file, "--home", home, timeout=60)
    job_id = published.stdout.split()[2]

    cancelled = run_gfl("job", "cancel", job_id[:12], "--home", home, timeout=60)
    assert cancelled.returncode == 0, cancelled.stderr
    watched = run_gfl("job", "watch", job_id, "--home", home, "--timeout", "60", timeout=90)
    assert "status cancelled" in watched.stdout and watched.returncode == 1
    # cancelling again is refused by the chain: one clear line
    again = run_gfl("job", "cancel", job_id, "--home", home, timeout=60)
    assert again.returncode != 0
    assert len([ln for ln in again.stderr.splitlines() if ln.strip()]) == 1
