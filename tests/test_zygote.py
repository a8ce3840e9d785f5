"""The zygote: processes forked from one that imported their modules once."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from gfl.node.zygote import Zygote, ZygoteError

# what the children print: proof they reuse the zygote's modules and got their own env
PROBE = (
    "import os, sys, numpy; "
    "print('preloaded', 'numpy' in sys.modules, os.environ.get('PROBE'), sys.argv[1:]); "
    "print('random', numpy.random.randint(1 << 30)); "
    "print('session', os.getsid(0) == os.getpid())"
)


@pytest.fixture
def zygote(tmp_path: Path):
    z = Zygote.start(("numpy",), env=dict(os.environ), stderr=tmp_path / "zygote.log")
    z.wait_ready()
    yield z
    z.close()


def test_children_run_with_their_own_env_log_and_random_state(zygote: Zygote, tmp_path: Path):
    outputs = []
    for i in range(2):
        log_path = tmp_path / f"child{i}.log"
        child = zygote.spawn(
            ["-c", PROBE, "a", str(i)], log_path=log_path, env={**os.environ, "PROBE": f"p{i}"}
        )
        assert child.wait(30) == 0
        outputs.append(log_path.read_text())
    assert f"preloaded True p0 {['a', '0']}" in outputs[0]
    assert f"preloaded True p1 {['a', '1']}" in outputs[1]
    assert all("session True" in out for out in outputs)
    draws = [next(ln for ln in out.splitlines() if ln.startswith("random")) for out in outputs]
    assert draws[0] != draws[1], "numpy's global generator must be reseeded in each child"


def test_exit_status_like_popen(zygote: Zygote, tmp_path: Path):
    log_path = tmp_path / "out.log"
    assert zygote.spawn(["-c", "raise SystemExit(3)"], log_path=log_path, env={}).wait(30) == 3
    crash = zygote.spawn(["-c", "1 / 0"], log_path=log_path, env={})
    assert crash.wait(30) == 1
    assert "ZeroDivisionError" in log_path.read_text()

    sleeper = zygote.spawn(["-c", "import time; time.sleep(60)"], log_path=log_path, env={})
    assert sleeper.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(0.3)
    sleeper.kill()
    assert sleeper.wait(30) == -signal.SIGKILL


def test_runs_a_module_as_main(zygote: Zygote, tmp_path: Path):
    log_path = tmp_path / "out.log"
    child = zygote.spawn(["-m", "gfl", "--version"], log_path=log_path, env=dict(os.environ))
    assert child.wait(60) == 0
    assert "gfl" in log_path.read_text()


def test_bad_requests_get_an_error_not_a_dead_zygote(zygote: Zygote, tmp_path: Path):
    with pytest.raises(ZygoteError, match="-m MODULE or -c CODE"):
        zygote.spawn(["script.py"], log_path=tmp_path / "x.log", env={})
    with pytest.raises(ZygoteError, match="cannot open"):
        zygote.spawn(["-c", "pass"], log_path=tmp_path / "no" / "x.log", env={})
    assert zygote.spawn(["-c", "pass"], log_path=tmp_path / "x.log", env={}).wait(30) == 0


def test_a_broken_preload_is_one_clear_error(tmp_path: Path):
    z = Zygote.start(("no_such_module_gfl",), env=dict(os.environ))
    try:
        with pytest.raises(ZygoteError, match="no_such_module_gfl"):
            z.wait_ready()
    finally:
        z.close()


def test_children_outlive_a_closed_zygote(tmp_path: Path):
    z = Zygote.start((), env=dict(os.environ))
    marker = tmp_path / "done"
    code = f"import time; time.sleep(1); open({str(marker)!r}, 'w').close()"
    child = z.spawn(["-c", code], log_path=tmp_path / "out.log", env={})
    z.close()
    assert child.wait(30) == -1  # it ran to its end; its status went with the zygote
    assert marker.exists()
