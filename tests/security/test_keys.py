"""The node key on disk and in logs: private files, an encrypted keystore, never printed.

A real `gfl up -vvv` (debug logging, the libraries too: more than -vv) runs a
one-node job on the embedded chain — key loading, libp2p signing, transaction
signing — and then every byte it wrote (stdout, stderr, every file under
logs/) is searched for the private key in every spelling.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from pathlib import Path

import pytest

from gfl.identity import KEY_FILE, KEYSTORE_FILE, NodeIdentity
from gfl.node.datadir import DataDir

pytestmark = pytest.mark.slow


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _config():
    from support import local_config

    config = local_config()
    config = config.replace("jobs", auto_join=True)
    return dataclasses.replace(config, data={"digits": ""})


def _spellings(key: bytes) -> list[bytes]:
    hx = key.hex()
    return [
        hx.encode(),
        hx.upper().encode(),
        f"0x{hx}".encode(),
        key,  # raw bytes
        # a 16-hex-digit window catches truncated or wrapped printing too
        hx[8:24].encode(),
    ]


def test_key_files_are_private(tmp_path: Path) -> None:
    plain = DataDir(tmp_path / "plain")
    plain.init(_config())
    assert _mode(plain.keys_dir) == 0o700
    assert _mode(plain.keys_dir / KEY_FILE) == 0o600
    assert _mode(plain.token_path) == 0o600
    enc = DataDir(tmp_path / "enc")
    enc.init(_config(), passphrase="correct horse")
    assert _mode(enc.keys_dir) == 0o700
    assert _mode(enc.keys_dir / KEYSTORE_FILE) == 0o600
    assert not (enc.keys_dir / KEY_FILE).exists()
    # the keystore does not hold the key in the clear
    key = enc.load_identity("correct horse").private_key
    blob = (enc.keys_dir / KEYSTORE_FILE).read_bytes()
    assert not any(s in blob for s in _spellings(key))
    # a key file others can read is refused, with the fix in the message
    os.chmod(plain.keys_dir / KEY_FILE, 0o644)
    from gfl.errors import IdentityError

    with pytest.raises(IdentityError, match="chmod 600"):
        plain.load_identity()


def test_wrong_passphrase_is_one_clear_line(tmp_path: Path, run_gfl) -> None:
    home = tmp_path / "enc"
    DataDir(home).init(_config(), passphrase="correct horse")
    wrong = tmp_path / "wrong"
    wrong.write_text("battery staple\n")
    result = run_gfl("up", "--home", home, "--passphrase-file", wrong, timeout=60)
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "wrong passphrase" in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_keystore_node_runs_a_job_and_never_logs_its_key(tmp_path: Path, start_node) -> None:
    """The encrypted keystore in use, -vvv, a job signed on chain: the key is in no output."""
    from gfl.node.devnet import demo_spec

    home = tmp_path / "node"
    passphrase = "correct horse battery"
    identity = NodeIdentity.generate()
    DataDir(home).init(_config(), identity=identity, passphrase=passphrase)
    pfile = tmp_path / "pass"
    pfile.write_text(passphrase + "\n")
    os.chmod(pfile, 0o600)
    node = start_node(home, "-vvv", "--passphrase-file", pfile)  # -vv plus the libraries
    assert node.status["peer_id"] == identity.peer_id
    assert node.status["address"] == identity.eth_address
    # the API listens on loopback by default, and then says nothing about exposure
    assert node.status["api"]["host"] == "127.0.0.1"
    spec = demo_spec(1, data="digits", rounds=1).replace(min_updates=1, round_timeout=10)
    with node.client(timeout=30) as client:
        job = client.request("POST", "/jobs", json={"spec": spec.to_dict()})
        deadline = time.monotonic() + 120
        while client.request("GET", f"/jobs/{job['job_id']}")["status"] != "finished":
            assert time.monotonic() < deadline, "the one-node job did not finish"
            time.sleep(0.5)
    assert node.stop() == 0
    assert "reachable from other machines" not in node.output()
    written = {node.log_path: node.log_path.read_bytes()}  # its stdout + stderr
    for f in (home / "logs").rglob("*"):
        if f.is_file():
            written[f] = f.read_bytes()
    # the run logged plenty at debug level (libraries included), so the search means something
    assert sum(len(b) for b in written.values()) > 20_000
    assert any(b"DEBUG" in b for b in written.values())
    for path, data in written.items():
        for s in [*_spellings(identity.private_key), passphrase.encode()]:
            assert s not in data, f"a secret appears in {path}"
    # nor is it anywhere else in the datadir in the clear (config, database, blobs, token)
    for f in home.rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            data = f.read_bytes()
            assert identity.private_key.hex().encode() not in data, f
            assert identity.private_key not in data, f


def test_exposed_api_is_warned_about(tmp_path: Path) -> None:
    """127.0.0.1 by default, silently; `gfl up` warns on stderr when the API is exposed.

    To stay on 127.0.0.1, the exposed case runs the real `gfl up` (its own logging
    set-up, its stderr) with `is_loopback` answering False for the bound address.
    """
    import signal
    import subprocess
    import sys

    from support import gfl_env

    from gfl.node.api.server import is_loopback

    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
    home = tmp_path / "node"
    DataDir(home).init(_config())
    code = (
        "import sys, gfl.node.api.server as s; s.is_loopback = lambda host: False; "
        "from gfl.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "up", "--home", str(home)],
            stdout=subprocess.DEVNULL,
            stderr=f,
            env=gfl_env(),
        )
    try:
        deadline = time.monotonic() + 60
        while "reachable from other machines" not in err.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    line = next(ln for ln in err.read_text().splitlines() if "reachable" in ln)
    assert line.startswith("WARNING") and "anyone with the token controls this node" in line
