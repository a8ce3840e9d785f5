"""The `gfl` command line, run as a user runs it: as a subprocess."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest
import torch
from eth_account import Account

from gfl.cli.main import build_parser, main
from gfl.node.datadir import DataDir

LOCAL_LISTEN = "/ip4/127.0.0.1/tcp/0"


def one_clean_line(stderr: str) -> str:
    """The error output must be a single line and never a traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def run_main(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (fast); subprocess tests cover the real entry point."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def init_args(home: Path, *extra: str) -> list[str]:
    return [
        "init",
        "--home",
        str(home),
        "--listen",
        LOCAL_LISTEN,
        "--api-port",
        "0",
        "--chain",
        "embedded",
        "--no-mdns",
        *extra,
    ]


def test_init_writes_key_token_and_config(tmp_path, run_gfl):
    home = tmp_path / "n"
    result = run_gfl(*init_args(home))
    assert result.returncode == 0, result.stderr
    datadir = DataDir(home)
    identity = datadir.load_identity()
    assert identity.eth_address in result.stdout
    assert identity.peer_id in result.stdout
    assert (datadir.keys_dir / "node.key").stat().st_mode & 0o777 == 0o600
    assert datadir.token_path.stat().st_mode & 0o777 == 0o600
    assert len(datadir.read_token()) >= 32
    config = datadir.load_config()
    assert config.net.listen == [LOCAL_LISTEN] and config.api.port == 0
    assert not config.net.mdns


def test_init_twice_refuses_and_force_reinitialises(tmp_path, run_gfl):
    home = tmp_path / "n"
    assert run_gfl(*init_args(home)).returncode == 0
    first = DataDir(home).load_identity().eth_address

    again = run_gfl(*init_args(home))
    assert again.returncode == 1
    assert "already initialised" in one_clean_line(again.stderr)
    assert DataDir(home).load_identity().eth_address == first

    forced = run_gfl(*init_args(home, "--force"))
    assert forced.returncode == 0, forced.stderr
    assert DataDir(home).load_identity().eth_address != first


def test_init_with_passphrase_writes_an_encrypted_keystore(tmp_path, run_gfl):
    secret = tmp_path / "pass"
    secret.write_text("correct horse\n")
    home = tmp_path / "n"
    result = run_gfl(*init_args(home, "--passphrase-file", str(secret)))
    assert result.returncode == 0, result.stderr
    keystore = json.loads((home / "keys" / "node.keystore.json").read_text())
    key = Account.decrypt(keystore, "correct horse")
    assert Account.from_key(key).address in result.stdout
    assert not (home / "keys" / "node.key").exists()


def test_up_status_stop_and_identity_is_stable(init_home, start_node, run_gfl):
    home = init_home("a")
    node = start_node(home)
    key = (home / "keys" / "node.key").read_bytes()
    # the address really is the Ethereum address of the key on disk
    assert node.status["address"] == Account.from_key(key).address

    status = run_gfl("status", "--home", home, timeout=30)
    assert status.returncode == 0, status.stderr
    assert node.peer_id in status.stdout
    assert node.status["address"] in status.stdout

    as_json = run_gfl("status", "--home", home, "--json", timeout=30)
    assert json.loads(as_json.stdout)["peer_id"] == node.peer_id

    attach = run_gfl("attach", "--home", home, timeout=30)
    assert attach.returncode == 0 and node.peer_id in attach.stdout

    stop = run_gfl("stop", "--home", home, timeout=40)
    assert stop.returncode == 0, stop.stderr
    assert node.proc.wait(20) == 0
    assert not DataDir(home).is_locked()
    assert not DataDir(home).api_info_path.exists()

    log = (home / "logs" / "node.log").read_text()
    assert "node stopped" in log and node.peer_id in log

    again = start_node(home)
    assert (again.peer_id, again.status["address"]) == (node.peer_id, node.status["address"])
    again.proc.send_signal(signal.SIGINT)  # Ctrl-C is a clean stop too
    assert again.proc.wait(60) == 0
    assert not DataDir(home).api_info_path.exists()


def test_attach_by_host_and_port(init_home, start_node, run_gfl):
    home = init_home("a")
    node = start_node(home)
    api = node.status["api"]
    token_file = home / "api.token"
    result = run_gfl(
        "attach", "-H", api["host"], "-P", api["port"], "--token-file", token_file, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert node.peer_id in result.stdout

    bad = home.parent / "bad.token"
    bad.write_text("nope")
    refused = run_gfl(
        "status", "-H", api["host"], "-P", api["port"], "--token-file", bad, timeout=30
    )
    assert refused.returncode == 1
    assert "token" in one_clean_line(refused.stderr)


def test_second_up_on_the_same_datadir_refuses(init_home, start_node, run_gfl):
    home = init_home("a")
    start_node(home)
    second = run_gfl("up", "--home", home, timeout=60)
    assert second.returncode == 1
    assert "already running" in one_clean_line(second.stderr)


def test_p2p_port_in_use_is_one_line(init_home, run_gfl):
    home = init_home("a")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_gfl("up", "--home", home, "--listen", f"/ip4/127.0.0.1/tcp/{port}", timeout=60)
    assert result.returncode == 1
    line = one_clean_line(result.stderr)
    assert f"tcp/{port} is in use" in line and "--listen" in line
    assert not DataDir(home).is_locked() and not DataDir(home).api_info_path.exists()


def test_encrypted_key_needs_its_passphrase(tmp_path, capsys):
    home = tmp_path / "n"
    DataDir(home).init(passphrase="right")
    code, _, err = run_main(capsys, "up", "--home", home)
    assert code == 1 and "encrypted" in one_clean_line(err)
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong\n")
    code, _, err = run_main(capsys, "up", "--home", home, "--passphrase-file", wrong)
    assert code == 1 and "wrong passphrase" in one_clean_line(err)
    code, _, err = run_main(capsys, "up", "--home", home, "--passphrase-file", tmp_path / "no")
    assert code == 1 and "cannot read the passphrase file" in one_clean_line(err)


def test_api_port_in_use_is_one_line(init_home, run_gfl):
    home = init_home("a")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_gfl("up", "--home", home, "--api-port", port, timeout=60)
    assert result.returncode == 1
    line = one_clean_line(result.stderr)
    assert "already in use" in line and str(port) in line


def test_wrong_arguments_are_one_line_exit_2(run_gfl):
    result = run_gfl("up", "--bogus")
    assert result.returncode == 2
    line = one_clean_line(result.stderr)
    assert line.startswith("gfl: error:") and "unrecognized arguments: --bogus" in line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["frobnicate"], "invalid choice"),
        (["up", "--api-port", "many"], "invalid int value"),
        (["status", "--wait"], "expected one argument"),
        ([], "required"),
    ],
)
def test_more_wrong_arguments(capsys, args, expected):
    code, _, err = run_main(capsys, *args)
    assert code == 2
    line = one_clean_line(err)
    assert line.startswith("gfl: error:") and expected in line


def test_missing_datadir_is_one_line(tmp_path, run_gfl, capsys):
    result = run_gfl("up", "--home", tmp_path / "nowhere", timeout=30)
    assert result.returncode == 1
    assert "gfl init" in one_clean_line(result.stderr)
    for command in ("status", "stop", "attach"):
        code, _, err = run_main(capsys, command, "--home", tmp_path / "nowhere")
        assert code == 1, command
        assert "gfl init" in one_clean_line(err)


def test_corrupt_config_is_one_line(init_home, run_gfl):
    home = init_home("a")
    (home / "config.toml").write_text("[net\nlisten = 3")
    result = run_gfl("up", "--home", home, timeout=30)
    assert result.returncode == 1
    line = one_clean_line(result.stderr)
    assert "not valid TOML" in line and "config.toml" in line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[net]\nlisten = 3\n", "net.listen must be an array"),
        ("[api]\nport = 'x'\n", "api.port must be an integer"),
        ("[api]\nprot = 1\n", "unknown key api.prot"),
        ("[bogus]\n", "unknown section [bogus]"),
        ("[chain]\nurl = 'ftp://x'\n", "chain.url"),
        ("[data]\nmnist = 1\n", "data.mnist must be a string (a path) or a table"),
        ("[data]\nmnist = {root = []}\n", "data.mnist.root must be a string or a number"),
        ("[train]\ndevice = 'meta'\n", "train.device: device 'meta': use cpu, cuda"),
        (f"[train]\ndevice = 'cuda:{torch.cuda.device_count()}'\n", "train.device: device 'cuda:"),
    ],
)
def test_invalid_config_names_the_key(init_home, capsys, text, expected):
    home = init_home("a")
    (home / "config.toml").write_text(text)
    code, _, err = run_main(capsys, "up", "--home", home)
    assert code == 1
    line = one_clean_line(err)
    assert expected in line and "config.toml" in line


def test_status_of_a_stopped_node(init_home, capsys, free_port):
    home = init_home("a")
    code, _, err = run_main(capsys, "status", "--home", home)
    assert code == 1
    assert "no node is running" in one_clean_line(err)
    code, _, err = run_main(
        capsys, "status", "-H", "127.0.0.1", "-P", free_port(), "--token-file", home / "api.token"
    )
    assert code == 1
    assert "no node answers" in one_clean_line(err)


def test_devnet_and_job_refuse_bad_arguments_in_one_line(tmp_path, run_gfl, capsys):
    for args in (["devnet", "--nodes", "0"], ["devnet", "--rounds", "0"]):
        result = run_gfl(*args, "--home", tmp_path)
        assert result.returncode in (1, 2), args
        assert "must be between" in one_clean_line(result.stderr)
    code, _, err = run_main(capsys, "job", "--home", tmp_path)
    assert code == 2
    assert "gfl" in one_clean_line(err)
    code, _, err = run_main(capsys, "up", "--console", "--home", tmp_path / "none")
    assert code != 0
    assert "gfl" in one_clean_line(err)


def test_job_commands_without_a_node_are_one_line(tmp_path, capsys):
    for args in (["job", "list"], ["job", "show", "abcd"], ["job", "watch", "abcd"]):
        code, _, err = run_main(capsys, *args, "--home", tmp_path / "none")
        assert code in (1, 2), args
        assert "gfl" in one_clean_line(err)


def test_every_command_has_help(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in [
        "init",
        "up",
        "run",
        "status",
        "attach",
        "stop",
        "devnet",
        "job",
        "chain",
        "simulate",
    ]:
        assert name in commands
    for name in ["init", "up", "status", "attach", "stop", "devnet", "job", "job list"]:
        code, out, _ = run_main(capsys, *name.split(), "--help")
        assert code == 0 and "--home" in out, name


def test_home_and_verbose_before_or_after_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GFL_HOME", raising=False)
    for args in (
        ["--home", tmp_path / "x", "-v", "status"],
        ["status", "-v", "--home", tmp_path / "x"],
    ):
        code, _, err = run_main(capsys, *args)
        assert code == 1 and str(tmp_path / "x") in one_clean_line(err)
    monkeypatch.setenv("GFL_HOME", str(tmp_path / "env"))
    code, _, err = run_main(capsys, "status")
    assert code == 1 and str(tmp_path / "env") in one_clean_line(err)
