"""GFL's network layer: a libp2p host with discovery, validated gossip and a blob protocol.

Importing this package first checks that the installed py-libp2p is the one
release GFL supports (`gfl.net.version`), then imports it. It changes nothing in
the library: GFL's fixes and tuning are subclasses handed to each host that
`open_network` builds (docs/libp2p.md lists them).
"""

import warnings

from gfl.net.version import check_libp2p_version

check_libp2p_version()

with warnings.catch_warnings():
    # `import libp2p` imports websockets.legacy, which warns on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    import libp2p  # noqa: F401

from gfl.net.blobs import BlobStore, blob_hash  # noqa: E402
from gfl.net.errors import BlobError, MessageError, NetError  # noqa: E402
from gfl.net.gossip import JOBS_TOPIC, GossipMessage, round_topic  # noqa: E402
from gfl.net.host import open_network  # noqa: E402
from gfl.net.messages import decode_message, encode_message, register_schema  # noqa: E402
from gfl.net.network import Network  # noqa: E402
from gfl.net.version import LibP2PVersionError  # noqa: E402

__all__ = [
    "JOBS_TOPIC",
    "BlobError",
    "BlobStore",
    "GossipMessage",
    "LibP2PVersionError",
    "MessageError",
    "NetError",
    "Network",
    "blob_hash",
    "check_libp2p_version",
    "decode_message",
    "encode_message",
    "open_network",
    "register_schema",
    "round_topic",
]
