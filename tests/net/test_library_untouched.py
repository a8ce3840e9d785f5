"""Importing gfl.net and running GFL hosts leaves py-libp2p as it was: every fix and
tuning is a subclass handed to the hosts GFL builds (docs/libp2p.md)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import libp2p.pubsub.pubsub as pubsub_mod
import libp2p.pubsub.validators as validators_mod
from libp2p.io.msgio import FixedSizeLenMsgReadWriter
from libp2p.security.noise.io import BaseNoiseMsgReadWriter, NoisePacketReadWriter
from libp2p.stream_muxer.yamux import yamux

import gfl.net  # noqa: F401


def test_after_import_the_library_has_its_own_settings_and_methods() -> None:
    assert yamux.MAX_MESSAGE_SIZE == 64 * 1024
    for cls, name in [
        (yamux.YamuxStream, "write"),
        (yamux.YamuxStream, "_auto_tune_and_send_window_update"),
        (BaseNoiseMsgReadWriter, "write_msg"),
        (pubsub_mod.Pubsub, "stream_handler"),
        (pubsub_mod.Pubsub, "push_msg"),
    ]:
        assert getattr(cls, name).__module__.startswith("libp2p."), (cls, name)
    assert NoisePacketReadWriter.read_msg is FixedSizeLenMsgReadWriter.read_msg
    assert not isinstance(vars(yamux.YamuxStream).get("send_window"), property)
    assert pubsub_mod.signature_validator is validators_mod.signature_validator


# Runs in a fresh interpreter: snapshots the library before gfl.net is imported, then
# runs two GFL hosts (gossip and a blob both ways) and compares.
SCRIPT = textwrap.dedent(
    """
    import os, tempfile, warnings
    from pathlib import Path
    warnings.simplefilter("ignore", DeprecationWarning)
    import trio
    import libp2p
    import libp2p.network.swarm, libp2p.peer.peerstore, libp2p.pubsub.gossipsub
    import libp2p.pubsub.pubsub, libp2p.pubsub.utils, libp2p.pubsub.validators
    import libp2p.security.noise.io, libp2p.security.noise.patterns
    import libp2p.security.noise.transport, libp2p.stream_muxer.muxer_multistream
    import libp2p.stream_muxer.yamux.yamux

    MODULES = [m for n, m in sorted(__import__("sys").modules.items()) if n.startswith("libp2p")]

    def code_or_setting(name, value):
        # the library's own state (caches, timestamps) changes as it runs; its code and
        # its settings (MAX_MESSAGE_SIZE, ...) must not
        return callable(value) or isinstance(value, property) or name.isupper()

    def snapshot():
        out = {}
        for mod in MODULES:
            for name, value in list(vars(mod).items()):
                if code_or_setting(name, value):
                    out[(mod.__name__, name)] = value
                if isinstance(value, type) and value.__module__ == mod.__name__:
                    for attr, v in list(vars(value).items()):
                        if code_or_setting(attr, v):
                            out[(mod.__name__, name, attr)] = v
        return out

    before = snapshot()
    import gfl.net
    from gfl.identity import NodeIdentity
    from gfl.net import JOBS_TOPIC, open_network

    async def run():
        with tempfile.TemporaryDirectory() as d:
            async with open_network(NodeIdentity.generate(), blob_dir=Path(d, "a")) as a:
                async with open_network(NodeIdentity.generate(), blob_dir=Path(d, "b")) as b:
                    await b.connect(a.listen_addrs()[0])
                    ra = await a.subscribe(JOBS_TOPIC)
                    await b.subscribe(JOBS_TOPIC)
                    with trio.fail_after(60):
                        while not b.stats()["mesh"][JOBS_TOPIC]:
                            await trio.sleep(0.05)
                        await b.publish(JOBS_TOPIC, {"v": 1, "type": "t"})
                        await ra.receive()
                    h = a.blobs.put(os.urandom(3 << 20))
                    await b.fetch_blob(h, [a.peer_id], max_size=4 << 20, timeout=60)

    trio.run(run)
    after = snapshot()
    changed = sorted(
        str(k) for k in before.keys() & after.keys() if before[k] is not after[k]
    )
    added = sorted(
        str(k) for k in after.keys() - before.keys() if not isinstance(after[k], type(os))
    )
    print("changed:", changed)
    print("added:", added)
    """
)


def test_running_gfl_hosts_changes_nothing_in_the_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "changed: []" in out.stdout and "added: []" in out.stdout, out.stdout
