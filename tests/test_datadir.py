"""The datadir: init refuses to overwrite, one node per datadir, API discovery file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gfl.errors import ConfigError
from gfl.node.config import Config
from gfl.node.datadir import ApiInfo, DataDir, NodeAlreadyRunning, resolve_home


def test_resolve_home(tmp_path, monkeypatch):
    monkeypatch.setenv("GFL_HOME", str(tmp_path / "env"))
    assert resolve_home(None) == tmp_path / "env"
    assert resolve_home(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("GFL_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_home(None) == tmp_path / ".gfl"


def test_init_is_refused_on_an_initialised_datadir(tmp_path):
    d = DataDir(tmp_path / "n")
    first = d.init(Config())
    with pytest.raises(ConfigError, match="already initialised"):
        d.init(Config())
    assert d.load_identity() == first
    second = d.init(Config(), force=True)
    assert d.load_identity() == second != first


def test_the_lock_admits_one_node_and_dies_with_the_process(tmp_path):
    d = DataDir(tmp_path / "n")
    d.init(Config())
    with d.lock():
        assert d.is_locked()
        with pytest.raises(NodeAlreadyRunning, match="already running"), d.lock():
            pass
        with pytest.raises(NodeAlreadyRunning):
            d.init(Config(), force=True)  # never re-key under a running node
    assert not d.is_locked()
    # a process killed while holding the lock leaves nothing stale behind
    code = (
        "import os, sys; from gfl.node.datadir import DataDir\n"
        f"with DataDir({str(d.root)!r}).lock(): os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 9
    assert not d.is_locked()
    with d.lock():
        pass


def test_api_info_round_trip_and_corruption(tmp_path):
    d = DataDir(tmp_path / "n")
    d.init(Config())
    assert d.read_api_info() is None
    d.write_api_info(ApiInfo("127.0.0.1", 1234, os.getpid()))
    assert d.read_api_info() == ApiInfo("127.0.0.1", 1234, os.getpid())
    d.api_info_path.write_text("{")
    with pytest.raises(ConfigError, match="corrupt"):
        d.read_api_info()
    d.clear_api_info()
    assert d.read_api_info() is None
