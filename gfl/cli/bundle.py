"""`gfl job export` and `gfl job verify --bundle`: a job's record, checkable by anyone later.

``export`` asks a node for what a verifier needs and writes it to a folder; ``verify``
re-derives every round from that folder and a chain endpoint alone (docs/protocol.md, 7).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gfl.content import content_hash
from gfl.errors import GflError


def export_bundle(client: Any, job_id: str, out: Path) -> tuple[str, int, list[str]]:
    """Write job ``job_id``'s bundle from the node behind ``client`` into ``out``; returns
    (the full job id, blobs written, hashes of the blobs the node does not hold)."""
    from gfl.scheduler.audit import BLOBS_DIR, BUNDLE_FILE, SPEC_FILE

    try:
        (out / BLOBS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GflError(f"cannot write the bundle to {out}: {exc.strerror}") from None
    bundle = client.bundle(job_id)
    missing = []
    for entry in bundle["blobs"]:
        h = bytes.fromhex(entry["hash"])
        path = out / BLOBS_DIR / entry["hash"]
        if path.exists() and content_hash(path.read_bytes()) == h:
            continue
        if not entry["held"]:
            missing.append(entry["hash"])
            continue
        data = client.blob(entry["hash"])
        if content_hash(data) != h:
            raise GflError(f"the node sent blob {entry['hash'][:16]}… with other bytes")
        path.write_bytes(data)
    (out / SPEC_FILE).write_bytes(bytes.fromhex(bundle["spec"]))
    (out / BUNDLE_FILE).write_text(json.dumps(bundle["manifest"], indent=1) + "\n")
    return bundle["manifest"]["job_id"], len(bundle["blobs"]) - len(missing), missing


def cmd_export(args: argparse.Namespace) -> int:
    from gfl.cli.options import node_client

    out = Path(args.output)
    with node_client(args) as client:
        job_id, written, missing = export_bundle(client, args.job_id, out)
    print(f"bundle of job {job_id[:16]}… in {out}: {written} blobs")
    if missing:
        print(
            f"{len(missing)} blobs this node does not hold (an archive node keeps them all): "
            + ", ".join(h[:12] for h in missing[:5]),
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from gfl.chain import open_chain
    from gfl.identity import NodeIdentity
    from gfl.scheduler.audit import read_manifest, verify

    folder = Path(args.bundle)
    manifest = read_manifest(folder)
    job_id = bytes.fromhex(str(manifest["job_id"]))
    registry = args.registry or str(manifest["registry"])
    # reads only: a throw-away key, never funded
    with open_chain(args.rpc, NodeIdentity.generate(), registry_address=registry) as chain:
        if chain.chain_id != int(manifest["chain_id"]):
            raise GflError(
                f"{args.rpc} serves chain {chain.chain_id}, the bundle is of chain "
                f"{manifest['chain_id']}"
            )
        events = chain.verify_log(job_id)
    verdict = verify(folder, events, job_id)
    if args.json:
        print(json.dumps(_as_json(verdict), indent=1))
    else:
        print(f"job {verdict.job_id[:16]}… on chain {manifest['chain_id']}, registry {registry}")
        for r in verdict.rounds:
            mark = "verified" if r.ok else f"FAILED: {r.problem}"
            model = (r.chain_model or "-")[:16]
            print(f"round {r.round + 1:>4}  {r.decision or '-':<9}  {model:<16}  {mark}")
        if verdict.problem:
            print(f"not verified: {verdict.problem}")
        elif verdict.ok:
            print(f"every decided round ({len(verdict.rounds)}) re-derived and matches the chain")
    return 0 if verdict.ok else 1


def _as_json(verdict: Any) -> dict[str, Any]:
    return {
        "job_id": verdict.job_id,
        "verified": verdict.ok,
        "problem": verdict.problem,
        "rounds": [r.as_dict() for r in verdict.rounds],
    }


def register(add: Any) -> None:
    """Add ``export`` and ``verify`` to the job group (``add(name, help, func)``)."""
    p = add(
        "export", "write what a verifier needs (spec, M_0, updates, models) to a folder", cmd_export
    )
    p.add_argument("job_id", help="job id (a unique prefix is enough)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the bundle's folder")
    p = add(
        "verify", "re-derive every round of an exported job from the bundle and a chain", cmd_verify
    )
    p.add_argument("--bundle", required=True, metavar="DIR", help="a folder from `gfl job export`")
    p.add_argument("--rpc", required=True, metavar="URL", help="a JSON-RPC endpoint of the chain")
    p.add_argument("--registry", metavar="ADDRESS", help="the JobRegistry (default: the bundle's)")
    p.add_argument("--json", action="store_true", help="print JSON")
