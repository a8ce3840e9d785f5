"""Fixtures for the console tests: the asyncio backend for anyio, bounded waits, a training node.

The behavioural tests drive `ConsoleApp` with Textual's Pilot against a real
`gfl up` process (the root conftest's ``start_node``); only the snapshot tests
feed canned data, because live uptime and hashes change every run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gfl.config import Config, load_config, write_config
from gfl.datadir import DataDir


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


async def _wait_until(pilot: Any, condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Let the app run until ``condition()`` is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[Any]]:
    """``await wait_until(pilot, lambda: ..., timeout=20)``."""
    return _wait_until


@pytest.fixture
def training_home(init_home: Callable[..., Path]) -> Path:
    """A datadir whose node joins jobs and trains on scikit-learn's digits."""
    home = init_home("trainer")
    path = DataDir(home).config_path
    config: Config = load_config(path)
    config = dataclasses.replace(config, data={"digits": ""})
    write_config(path, config.replace("jobs", auto_join=True))
    return home


def token_of(home: Path) -> str:
    return DataDir(home).read_token()
