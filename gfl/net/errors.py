"""Errors raised by the network layer, each with a message meant for the user."""

from gfl.errors import GflError


class NetError(GflError):
    """A network operation failed (dial, publish, fetch)."""


class MessageError(NetError):
    """A gossip message does not fit the envelope: size, depth, types or schema."""


class BlobError(NetError):
    """A blob could not be fetched or stored (missing, oversize, wrong hash, timeout)."""


class BusyError(BlobError):
    """The holder is serving as many blobs as it serves at once: ask again soon."""


class RelayLimitError(BlobError):
    """A blob is larger than what the relay between us and its holder still carries."""
