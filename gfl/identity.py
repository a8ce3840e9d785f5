"""One secp256k1 key per node: its libp2p peer ID and its Ethereum address.

The peer ID of a secp256k1 key embeds the compressed public key (an identity
multihash), so anyone holding a peer ID can derive the Ethereum address behind
it. That is what lets a node check that a libp2p-signed gossip message came
from the address that owns a job on chain.

On disk the key lives in ``DATADIR/keys/``: ``node.key`` (32 raw bytes, mode
0600) or, when a passphrase is set, ``node.keystore.json`` (an eth-account v3
keystore). The key itself is never logged or printed.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gfl.errors import IdentityError

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

KEY_FILE = "node.key"
KEYSTORE_FILE = "node.keystore.json"
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True)
class NodeIdentity:
    """A node's private key and the two public names derived from it."""

    private_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.private_key) != 32:
            raise IdentityError("a node key must be 32 bytes")
        k = int.from_bytes(self.private_key, "big")
        if not 0 < k < _SECP256K1_ORDER:
            raise IdentityError("the node key is not a valid secp256k1 private key")

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh random identity."""
        while True:
            candidate = secrets.token_bytes(32)
            if 0 < int.from_bytes(candidate, "big") < _SECP256K1_ORDER:
                return cls(candidate)

    @property
    def eth_address(self) -> str:
        """The checksummed Ethereum address of the key."""
        from eth_keys.datatypes import PrivateKey

        address: str = PrivateKey(self.private_key).public_key.to_checksum_address()
        return address

    @property
    def public_key_compressed(self) -> bytes:
        from eth_keys.datatypes import PrivateKey

        key: bytes = PrivateKey(self.private_key).public_key.to_compressed_bytes()
        return key

    def libp2p_keypair(self) -> KeyPair:
        """The libp2p key pair (imported lazily: `import libp2p` is slow and noisy)."""
        from libp2p.crypto.secp256k1 import create_new_key_pair

        return create_new_key_pair(self.private_key)

    @property
    def peer_id(self) -> str:
        """The base58 libp2p peer ID (``16Uiu2…``)."""
        from libp2p.peer.id import ID

        return ID.from_pubkey(self.libp2p_keypair().public_key).to_base58()


def address_from_public_key(public_key: bytes) -> str:
    """Ethereum address of a secp256k1 public key (compressed or not)."""
    from eth_keys.datatypes import PublicKey

    if len(public_key) == 33:
        pub = PublicKey.from_compressed_bytes(public_key)
    elif len(public_key) == 65 and public_key[0] == 4:
        pub = PublicKey(public_key[1:])
    elif len(public_key) == 64:
        pub = PublicKey(public_key)
    else:
        raise IdentityError("not a secp256k1 public key")
    return pub.to_checksum_address()


def address_from_peer_id(peer_id: str | bytes) -> str:
    """Ethereum address behind a secp256k1 libp2p peer ID.

    Raises `IdentityError` for peer IDs of other key types (ed25519, RSA) or
    hashed IDs, which carry no recoverable secp256k1 key.
    """
    from libp2p.crypto.pb import crypto_pb2
    from libp2p.peer.id import ID

    try:
        pid = ID.from_base58(peer_id) if isinstance(peer_id, str) else ID(peer_id)
        raw = pid.to_bytes()
    except Exception as exc:
        raise IdentityError(f"not a valid peer ID: {exc}") from None
    # identity multihash: 0x00, varint length, then the protobuf PublicKey
    if len(raw) < 2 or raw[0] != 0x00:
        raise IdentityError("peer ID does not embed its public key")
    length, offset = raw[1], 2
    if length >= 0x80 or len(raw) != offset + length:
        raise IdentityError("peer ID does not embed its public key")
    pb = crypto_pb2.PublicKey()
    try:
        pb.ParseFromString(raw[offset:])
    except Exception:
        raise IdentityError("peer ID carries a malformed public key") from None
    if pb.key_type != crypto_pb2.KeyType.Secp256k1:
        raise IdentityError("peer ID is not a secp256k1 key")
    try:
        return address_from_public_key(bytes(pb.data))
    except Exception:
        raise IdentityError("peer ID carries an invalid secp256k1 key") from None


def _check_private_file(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write a file that only the owner may read (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:  # os.write may write less (a nearly full disk): never rename a short file
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def save_identity(keys_dir: Path, identity: NodeIdentity, passphrase: str | None = None) -> Path:
    """Store the key in ``keys_dir``; encrypted as a keystore when a passphrase is given."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    for name in (KEY_FILE, KEYSTORE_FILE):
        (keys_dir / name).unlink(missing_ok=True)
    if passphrase:
        from eth_account import Account

        keystore = Account.encrypt(identity.private_key, passphrase)
        path = keys_dir / KEYSTORE_FILE
        write_private_file(path, json.dumps(keystore).encode())
    else:
        path = keys_dir / KEY_FILE
        write_private_file(path, identity.private_key)
    return path


def keystore_is_encrypted(keys_dir: Path) -> bool:
    return (keys_dir / KEYSTORE_FILE).exists()


def load_identity(keys_dir: Path, passphrase: str | None = None) -> NodeIdentity:
    """Load the node key; a keystore needs its passphrase (or ``GFL_PASSPHRASE``)."""
    raw_path, ks_path = keys_dir / KEY_FILE, keys_dir / KEYSTORE_FILE
    if ks_path.exists():
        _check_private_file(ks_path)
        passphrase = passphrase if passphrase is not None else os.environ.get("GFL_PASSPHRASE")
        if not passphrase:
            raise IdentityError(
                "the node key is encrypted: set GFL_PASSPHRASE or pass --passphrase-file"
            )
        from eth_account import Account

        try:
            keystore = json.loads(ks_path.read_text())
            return NodeIdentity(bytes(Account.decrypt(keystore, passphrase)))
        except ValueError:
            raise IdentityError("wrong passphrase for the node keystore") from None
    if raw_path.exists():
        _check_private_file(raw_path)
        return NodeIdentity(raw_path.read_bytes())
    raise IdentityError(f"no node key in {keys_dir}; run `gfl init` first")
