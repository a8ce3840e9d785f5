"""GFL runs on the one py-libp2p release its fixes and tuning were written for."""

from __future__ import annotations

from pathlib import Path

from support import gfl_env, run_gfl_process

from gfl.net.version import SUPPORTED_LIBP2P, check_libp2p_version


def test_the_installed_libp2p_is_the_supported_one() -> None:
    assert check_libp2p_version() == SUPPORTED_LIBP2P == "0.8.1"


def test_the_pin_in_setup_cfg_is_the_supported_version() -> None:
    setup_cfg = Path(__file__).resolve().parents[2] / "setup.cfg"
    lines = [line.strip() for line in setup_cfg.read_text().splitlines()]
    pins = [line for line in lines if line.startswith("libp2p")]
    assert pins == [f"libp2p=={SUPPORTED_LIBP2P}"]


def _fake_libp2p(root: Path, version: str) -> Path:
    """A directory that, first on the path, makes importlib.metadata report ``version``."""
    dist = root / f"libp2p-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: libp2p\nVersion: {version}\n")
    return root


def test_gfl_up_refuses_another_libp2p_in_one_line(tmp_path: Path, init_home) -> None:
    home = init_home("node")
    fake = _fake_libp2p(tmp_path / "site", "9.9.9")
    result = run_gfl_process("up", "--home", home, timeout=120, env=gfl_env(PYTHONPATH=str(fake)))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "gfl: py-libp2p 9.9.9 is installed, but GFL supports only 0.8.1;"
        " install it with: pip install libp2p==0.8.1"
    ], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
