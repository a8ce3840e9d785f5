"""Shared fixtures for the whole suite; the plain helpers behind them live in `support`.

Test modules import helpers with ``from support import ...`` — never ``from conftest``:
several directories have a conftest.py, and which one that name finds depends on order.
Under CI a skip fails the run unless `skip_policy.ALLOWED` lists it (tests/skip_policy.py).
"""

from skip_policy import pytest_make_collect_report, pytest_runtest_makereport
from support import free_port_fixture, init_home, run_gfl, start_node

__all__ = [
    "free_port_fixture",
    "init_home",
    "pytest_make_collect_report",
    "pytest_runtest_makereport",
    "run_gfl",
    "start_node",
]
