"""The skip policy (tests/skip_policy.py): under any truthy CI a skip fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from skip_policy import in_ci

TESTS = Path(__file__).resolve().parent

SAMPLE = """
import pytest

NEEDED = None  # a precondition that is missing, like an offline data set


def test_needs_the_data():
    if NEEDED is None:
        pytest.skip("offline data set not present")


@pytest.mark.parametrize("path", [])
def test_every_example(path):
    pass


def test_runs():
    pass
"""
GPU = """
import pytest


@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_on_gpu():
    pass
"""


def _pytest(tmp_path: Path, ci: str | None, *files: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the policy alone: a quicker start
    plugins = ["-p", "skip_policy", "-p", "no:cacheprovider"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-q", "-rA", *files],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_trainer.py").write_text(GPU)
    return tmp_path


@pytest.mark.parametrize("ci", ["1", "true", " Yes "])
def test_a_missing_precondition_fails_under_any_truthy_ci(sample, ci):
    run = _pytest(sample, ci, "test_sample.py")
    assert run.returncode == 1, run.stdout
    # the empty parameter set is skipped at set-up: an error
    assert "1 failed, 1 passed, 1 error" in run.stdout, run.stdout
    assert "skipped under CI: offline data set not present" in run.stdout
    assert "skipped under CI: got empty parameter set" in run.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_missing_precondition_only_skips(sample, ci):
    run = _pytest(sample, ci, "test_sample.py")
    assert run.returncode == 0, run.stdout
    assert "1 passed, 2 skipped" in run.stdout, run.stdout


def test_an_allowed_skip_stays_a_skip_under_ci(sample):
    run = _pytest(sample, "1", "test_trainer.py")
    assert run.returncode == 0 and "1 skipped" in run.stdout, run.stdout
    # the same reason elsewhere is not on the list
    (sample / "test_other.py").write_text(GPU)
    run = _pytest(sample, "1", "test_other.py")
    assert run.returncode == 1 and "skipped under CI: needs a CUDA GPU" in run.stdout


def test_a_module_skipped_as_a_whole_fails_under_ci(tmp_path):
    (tmp_path / "test_module.py").write_text(
        "import pytest\npytest.skip('no anvil', allow_module_level=True)\n"
    )
    (tmp_path / "test_runs.py").write_text("def test_runs():\n    pass\n")
    assert _pytest(tmp_path, None, ".").returncode == 0
    run = _pytest(tmp_path, "true", ".")
    assert run.returncode != 0 and "skipped under CI: no anvil" in run.stdout, run.stdout


def test_in_ci_reads_the_environment(monkeypatch):
    for value, expected in [("1", True), ("Yes", True), ("true", True), ("0", False), ("", False)]:
        monkeypatch.setenv("CI", value)
        assert in_ci() is expected
    monkeypatch.delenv("CI")
    assert in_ci() is False
