"""The one py-libp2p release GFL runs on, checked before the library is imported.

GFL's fixes and transport tuning subclass py-libp2p internals (`gfl.net.pubsub`,
`gfl.net.yamux`, `gfl.net.noise`) that change between releases without notice, so
another release is refused with one line instead of failing somewhere inside a
connection. The version is read from the installed distribution's metadata, which
does not import the library.
"""

from __future__ import annotations

from importlib import metadata

from gfl.net.errors import NetError

SUPPORTED_LIBP2P = "0.8.1"


class LibP2PVersionError(NetError):
    """The installed py-libp2p is not the release GFL was written for."""


def check_libp2p_version() -> str:
    """The installed py-libp2p version; raises `LibP2PVersionError` unless it is supported."""
    fix = f"install it with: pip install libp2p=={SUPPORTED_LIBP2P}"
    try:
        installed = metadata.version("libp2p")
    except metadata.PackageNotFoundError:
        raise LibP2PVersionError(f"py-libp2p is not installed; {fix}") from None
    if installed != SUPPORTED_LIBP2P:
        raise LibP2PVersionError(
            f"py-libp2p {installed} is installed, but GFL supports only {SUPPORTED_LIBP2P}; {fix}"
        )
    return installed
