"""gfl/fl is pure FL: importing every one of its modules pulls in no network, chain or
event loop (the FL layer is called from worker threads and from the simulator)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fl_modules() -> list[str]:
    """Every module under gfl/fl, found on disk: a new one is checked without a change here."""
    pkg = ROOT / "gfl" / "fl"
    names = []
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_fl_module_is_found():
    found = set(fl_modules())
    assert {"gfl.fl", "gfl.fl.optim", "gfl.fl.strategies.krum", "gfl.fl.codec"} <= found
    assert len(found) >= 20


def test_fl_layer_imports_no_network_or_chain_stack():
    modules = [*fl_modules(), "gfl.simulate.engine"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = [m for m in ('libp2p', 'web3', 'trio', 'eth_tester', 'httpx') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == ""
