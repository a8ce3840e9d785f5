"""An account without ETH: the node says so at start, `gfl status` shows the balance, and a
transaction it cannot pay for is refused in one line that names the account and the fix."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from support import local_config, run_gfl_process

from gfl.chain.devchain import serve_embedded
from gfl.node.datadir import DataDir


@pytest.fixture
def chain() -> Iterator[Any]:
    """An embedded chain served over JSON-RPC, as `gfl chain serve` runs it (registry deployed)."""
    with serve_embedded("127.0.0.1", 0) as server:
        yield server


def test_an_unfunded_node_warns_at_start(tmp_path, chain, start_node):
    home = tmp_path / "poor"
    config = local_config().replace("chain", url=chain.url, registry=chain.registry_address)
    address = DataDir(home).init(config).eth_address
    node = start_node(home)

    with node.client(timeout=30) as client:
        events = list(itertools.islice(client.events(since=0, dead_after=10), 3))
    warned = [e for e in events if e["type"] == "chain.underfunded"]
    assert warned, [e["type"] for e in events]
    data = warned[0]["data"]
    assert data["account"] == address and data["balance_wei"] == 0 and data["round_wei"] > 0
    assert f"gfl chain fund --rpc {chain.url} {address}" in data["hint"]
    log = DataDir(home).log_path.read_text()
    assert f"account {address} has 0 ETH, less than one round costs" in log

    status = run_gfl_process("status", "--home", home, timeout=30)
    assert f"account   {address}  balance 0 ETH" in status.stdout, status.stdout


def test_a_transaction_without_funds_names_the_account_and_the_fix(tmp_path, chain):
    home = tmp_path / "poor"
    address = DataDir(home).init(local_config()).eth_address
    result = run_gfl_process("chain", "deploy", "--rpc", chain.url, "--home", home, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert f"account {address} has 0 ETH, too little to pay for gas" in result.stderr
    assert f"`gfl chain fund --rpc {chain.url} {address}`" in result.stderr
