"""The committed artifact matches the contract source and the pinned build settings."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from skip_policy import in_ci

from gfl.chain.artifact import decode_revert, load_artifact

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def test_artifact_was_built_from_the_current_source():
    artifact = load_artifact()
    source = (CONTRACTS / "JobRegistry.sol").read_bytes()
    assert artifact["sourceSha256"] == hashlib.sha256(source).hexdigest(), (
        "contracts/JobRegistry.sol changed: run `npm run build` in contracts/"
    )
    assert artifact["settings"]["evmVersion"] == "prague"
    assert artifact["compiler"]["version"].startswith("0.8.30+")
    assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 1000


def test_fresh_build_matches_the_committed_artifact():
    if shutil.which("node") is None or not (CONTRACTS / "node_modules" / "solc").exists():
        if in_ci():
            pytest.fail("solc-js missing: CI must run `npm ci` in contracts/")
        pytest.skip("node or solc-js not installed")
    done = subprocess.run(
        ["node", "build.js", "--check"], cwd=CONTRACTS, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_decode_revert_knows_every_custom_error():
    errors = [e["name"] for e in load_artifact()["abi"] if e["type"] == "error"]
    assert {"UnknownJob", "AlreadyCommitted", "WrongRound", "NotOwner"} <= set(errors)
    data = bytes.fromhex("e498a481") + b"\x07" * 32  # UnknownJob(bytes32)
    assert decode_revert(data) == ("UnknownJob", {"jobId": b"\x07" * 32})
    assert decode_revert(b"\xde\xad\xbe\xef") is None
