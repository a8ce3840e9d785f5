"""`gfl init`, `up`, `stop` as an operator runs them: one node per port, one line per mistake,
a stop that returns once the process is gone, a clean stop on every signal."""

from __future__ import annotations

import argparse
import signal

import pytest
from support import run_gfl_process

from gfl.cli.main import build_parser
from gfl.node.datadir import DataDir

PEER = "16Uiu2HAm6Uw21mhHZ9Cm7S2gSCJQNE9cvyiGzGgAY3KuzJobm1TZ"


def one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_second_node_on_a_port_in_use_is_refused(init_home, start_node, free_port):
    port = free_port()
    listen = f"/ip4/127.0.0.1/tcp/{port}"
    first = start_node(init_home("a"), "--listen", listen)
    assert any(f"/tcp/{port}/" in a for a in first.listen_addrs)
    # libp2p binds with SO_REUSEPORT: without the check the second node would share the port
    other = init_home("b")
    for second in (listen, f"/ip4/0.0.0.0/tcp/{port}"):
        result = run_gfl_process("up", "--home", other, "--listen", second, timeout=60)
        assert result.returncode == 1, result.stdout
        line = one_clean_line(result.stderr)
        assert line == f"gfl: tcp/{port} is in use by another process: choose another with --listen"
    assert first.proc.poll() is None


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--bootstrap", "/ip4/127.0.0.1/tcp/4001"], "lacks /p2p/<peer id>"),
        (["--bootstrap", f"/ip4/127.0.0.1/p2p/{PEER}"], "lacks /tcp/PORT"),
        (["--bootstrap", "/ip4/127.0.0.1/tcp/4001/p2p/nope"], "is not a multiaddr"),
        (["--listen", "/ip9/x"], "'/ip9/x' is not a multiaddr: unknown protocol"),
        (["--listen", "/ip4/127.0.0.1/udp/4001"], "is not /ip4|ip6/HOST/tcp/PORT"),
    ],
)
def test_bad_addresses_are_one_line_in_init_and_up(tmp_path, init_home, args, expected):
    result = run_gfl_process("init", "--home", tmp_path / "new", *args, timeout=30)
    assert result.returncode == 1 and expected in one_clean_line(result.stderr)
    assert not (tmp_path / "new" / "config.toml").exists()
    result = run_gfl_process("up", "--home", init_home("a"), *args, timeout=30)
    assert result.returncode == 1 and expected in one_clean_line(result.stderr)


@pytest.mark.parametrize(
    "section, changes, expected",
    [
        ("chain", {"registry": "0xzz"}, "chain.registry must be a contract address"),
        ("net", {"bootstrap": ["/ip4/127.0.0.1/tcp/1"]}, "net.bootstrap"),
    ],
)
def test_bad_config_values_are_one_line(init_home, section, changes, expected):
    home = init_home("a")
    path = DataDir(home).config_path
    text = path.read_text()
    for key, value in changes.items():  # written by hand, as an operator edits the file
        shown = repr(value).replace("'", '"')
        text = "\n".join(
            f"{key} = {shown}" if line.startswith(f"{key} = ") else line
            for line in text.splitlines()
        )
    path.write_text(text)
    result = run_gfl_process("up", "--home", home, timeout=30)
    assert result.returncode == 1
    line = one_clean_line(result.stderr)
    assert expected in line and "config.toml" in line


def test_a_partition_past_its_count_is_refused(init_home):
    home = init_home("a")
    path = DataDir(home).config_path
    entry = 'digits = {partition = "iid", index = 3, of = 3}'
    path.write_text(path.read_text().replace("[data]\n", f"[data]\n{entry}\n"))
    result = run_gfl_process("up", "--home", home, timeout=30)
    assert result.returncode == 1
    line = one_clean_line(result.stderr)
    assert "data.digits.index must be between 0 and data.digits.of - 1 = 2, not 3" in line


def test_chain_fund_refuses_a_bad_address_in_one_line(free_port):
    url = f"http://127.0.0.1:{free_port()}"
    result = run_gfl_process("chain", "fund", "--rpc", url, "0xnope", "-v", timeout=30)
    assert result.returncode == 1
    assert "'0xnope' is not an Ethereum address" in one_clean_line(result.stderr)


def test_stop_returns_once_the_process_is_gone(init_home, start_node):
    node = start_node(init_home("a"))
    result = run_gfl_process("stop", "--home", node.home, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "node stopped"
    assert node.proc.poll() == 0, "`gfl stop` said stopped while the process still ran"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_node_as_cleanly_as_gfl_stop(init_home, start_node, signum):
    node = start_node(init_home("a"))
    node.proc.send_signal(signum)
    assert node.proc.wait(30) == 0, node.output()[-2000:]
    datadir = DataDir(node.home)
    assert not datadir.is_locked() and not datadir.api_info_path.exists()
    assert "node stopped" in node.output()
    assert "node stopped" in datadir.log_path.read_text()


def test_every_command_takes_home_and_verbose(tmp_path, monkeypatch):
    """Before or after the command, as the README says (the error names the datadir)."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    leaves: list[tuple[list[str], argparse.ArgumentParser]] = []
    for name, sub in commands.items():
        groups = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if groups:
            leaves += [([name, child], p) for child, p in groups[0].choices.items()]
        else:
            leaves.append(([name], sub))
    words_seen = [words for words, _ in leaves]
    assert ["chain", "fund"] in words_seen and ["job", "report"] in words_seen
    assert ["job", "export"] in words_seen and ["simulate"] in words_seen
    for words, sub in leaves:
        args = parser.parse_args([*words, "--home", str(tmp_path), "-vv", *_required(sub)])
        assert args.home == str(tmp_path) and args.verbose == 2, words
        args = parser.parse_args(["--home", str(tmp_path), "-v", *words, *_required(sub)])
        assert args.home == str(tmp_path) and args.verbose == 1, words


def _required(command: argparse.ArgumentParser) -> list[str]:
    """Just enough arguments for a command to parse: a word for each positional it needs
    and each required option (none of them is typed)."""
    out: list[str] = []
    for action in command._actions:
        if action.option_strings:
            out += [action.option_strings[0], "x"] if action.required else []
        elif action.nargs not in ("?", "*"):
            out.append("x")
    return out
