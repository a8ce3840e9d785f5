"""Shared fixtures for the whole suite; the plain helpers behind them live in `support`.

Test modules import helpers with ``from support import ...`` — never ``from conftest``:
several directories have a conftest.py, and which one that name finds depends on order.
"""

from support import free_port_fixture, init_home, run_gfl, start_node

__all__ = ["free_port_fixture", "init_home", "run_gfl", "start_node"]
