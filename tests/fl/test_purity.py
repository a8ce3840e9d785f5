import subprocess
import sys
from pathlib import Path


def test_fl_layer_imports_no_network_or_chain_stack():
    code = (
        "import sys\n"
        "import gfl.fl.spec, gfl.fl.codec, gfl.fl.models, gfl.fl.data, gfl.fl.trainer\n"
        "import gfl.fl.strategies, gfl.fl.rounds, gfl.simulate.engine\n"
        "bad = [m for m in ('libp2p', 'web3', 'trio') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == ""
