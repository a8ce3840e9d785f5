"""Hostile peers against a 3-node devnet, for longer than CI runs it.

Runs tests/security/test_malicious_peers.py with ``--messages`` fuzzed gossip
messages (CI: 10,500) and prints its report: messages per category, drops and
rejections per node, /status latency during the attack, slowloris cut-offs,
and whether the honest job still finished with every node agreeing.

    .venv/bin/python bench/attack.py --messages 50000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_500, help="fuzzed gossip messages")
    args = parser.parse_args(argv)
    env = {**os.environ, "GFL_FUZZ_MESSAGES": str(args.messages)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        str(ROOT / "tests" / "security" / "test_malicious_peers.py"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    keep = ("attack wall", "frames sent", "slowloris", "time to join", "/status latency", "node")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(keep)]
    print(f"hostile peers vs a 3-node devnet, {args.messages} fuzzed gossip messages")
    print("\n".join(lines) or proc.stdout[-3000:])
    print(
        "result:",
        "PASS (no crash, no stall, nothing forged accepted, job agreed)"
        if proc.returncode == 0
        else f"FAIL (pytest exit {proc.returncode})",
    )
    if proc.returncode:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
