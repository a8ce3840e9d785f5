"""`gfl chain deploy | fund | serve`."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib

import pytest
from support import small_job_params

from gfl.chain import open_chain
from gfl.chain.devchain import free_port, serve_embedded
from gfl.cli.chain import register
from gfl.identity import NodeIdentity, save_identity


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gfl")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_deploy_records_the_registry_in_config(tmp_path, capsys):
    identity = NodeIdentity.generate()
    save_identity(tmp_path / "keys", identity)
    with serve_embedded() as server:
        assert (
            run_cli("chain", "fund", "--rpc", server.url, identity.eth_address, "--eth", "5") == 0
        )
        assert run_cli("chain", "deploy", "--rpc", server.url, "--home", str(tmp_path)) == 0
        config = tomllib.loads((tmp_path / "config.toml").read_text())
        assert config["chain"]["url"] == server.url
        address = config["chain"]["registry"]
        assert address in capsys.readouterr().out
        registry = open_chain(server.url, identity, registry_address=address, timeout=5)
        assert 0 < registry.balance() < 5 * 10**18  # funded, then paid for the deployment
        registry.close()


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    rc = run_cli("chain", "fund", "--rpc", url, "0x" + "11" * 20, "--timeout", "0.3")
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("gfl chain: ") and err.count("\n") == 1
    rc = run_cli("chain", "deploy", "--rpc", url, "--home", str(tmp_path / "nokey"))
    err = capsys.readouterr().err
    assert rc == 1 and "gfl init" in err and "Traceback" not in err


def test_serve_runs_an_embedded_chain_for_other_processes():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gfl", "chain", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        if proc.poll() is not None:
            pytest.fail(proc.stderr.read())
        assert f"http://127.0.0.1:{port}" in lines[0]
        address = lines[1].split()[-1]
        identity = NodeIdentity.generate()
        assert (
            run_cli("chain", "fund", "--rpc", f"http://127.0.0.1:{port}", identity.eth_address) == 0
        )
        registry = open_chain(
            f"http://127.0.0.1:{port}", identity, registry_address=address, timeout=5
        )
        params = small_job_params(registry)
        job_id, _ = registry.register_job(b"\x05" * 32, b"\x06" * 32, b"\x07" * 32, params)
        assert registry.get_job(job_id).owner == identity.eth_address
        registry.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_ports_handed_out_for_one_devnet_are_all_distinct():
    """A devnet picks 2n ports before any node binds one; at 32 nodes two random picks
    would collide in about one devnet of six (a node then "exited at start")."""
    taken: set[int] = set()
    ports = [free_port(taken) for _ in range(400)]
    assert len(set(ports)) == len(ports) and set(ports) == taken
