"""Anyone can verify a job later: `gfl job export` then `gfl job verify --bundle --rpc`.

A devnet job (real node processes, the embedded chain served over JSON-RPC, and anvil) is
exported by one node and re-derived from the bundle and the chain alone, through the CLI;
then each kind of tampering with the bundle is caught.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from support import run_gfl_process
from test_network_e2e import _chains

from gfl.node.devnet import demo_spec, running_devnet, watch_job

pytestmark = pytest.mark.slow


def _verify(bundle: Path, rpc: str) -> tuple[int, str, str]:
    res = run_gfl_process("job", "verify", "--bundle", str(bundle), "--rpc", rpc, "--json")
    return res.returncode, res.stdout, res.stderr


@pytest.mark.parametrize("prefer_anvil", _chains())
def test_an_exported_job_verifies_from_the_bundle_and_the_chain_alone(tmp_path, prefer_anvil):
    with running_devnet(3, root=tmp_path / "net", prefer_anvil=prefer_anvil) as net:
        spec = demo_spec(3, data="digits", rounds=3, allow=[n.address for n in net.nodes])
        job = net.client(0).publish(spec.to_dict())
        watch_job(net, job["job_id"], timeout=300, out=io.StringIO())
        bundle = tmp_path / "bundle"
        res = run_gfl_process(
            "job", "export", job["job_id"][:12], "-o", str(bundle), "--home", str(net.nodes[1].home)
        )
        assert res.returncode == 0, res.stderr
        rc, out, err = _verify(bundle, net.chain_url)
        assert rc == 0, (out, err)
        verdict = json.loads(out)
        assert verdict["verified"] and len(verdict["rounds"]) == 3
        assert all(r["derived_model"] == r["chain_model"] for r in verdict["rounds"])
        final = net.client(2).job(job["job_id"])["model_hash"]
        assert verdict["rounds"][-1]["chain_model"] == final

        manifest = json.loads((bundle / "bundle.json").read_text())
        used = manifest["rounds"][1]["updates"][0]["hash"]
        cases = {
            # a bundle's update rewritten: its hash no longer matches the chain's
            "update": lambda d: (d / "blobs" / used).write_bytes(b"\0" * 64),
            # another spec: not the one the chain registered
            "spec": lambda d: (d / "spec.msgpack").write_bytes(spec.replace(lr=0.2).to_bytes()),
            # M_0 missing
            "model0": lambda d: (d / "blobs" / manifest["model0"]).unlink(),
        }
        for what, tamper in cases.items():
            copy = tmp_path / f"tampered-{what}"
            shutil.copytree(bundle, copy)
            tamper(copy)
            rc, out, _ = _verify(copy, net.chain_url)
            assert rc == 1 and not json.loads(out)["verified"], what
