"""GFL's network layer: a libp2p host with discovery, validated gossip and a blob protocol.

Importing this package imports py-libp2p and applies `gfl.net.patches`.
"""

from gfl.net import patches
from gfl.net.blobs import BlobStore, blob_hash
from gfl.net.errors import BlobError, MessageError, NetError
from gfl.net.gossip import JOBS_TOPIC, GossipMessage, round_topic
from gfl.net.messages import decode_message, encode_message, register_schema
from gfl.net.network import Network, open_network

patches.apply()
patches.tune_transport()

__all__ = [
    "JOBS_TOPIC",
    "BlobError",
    "BlobStore",
    "GossipMessage",
    "MessageError",
    "NetError",
    "Network",
    "blob_hash",
    "decode_message",
    "encode_message",
    "open_network",
    "register_schema",
    "round_topic",
]
