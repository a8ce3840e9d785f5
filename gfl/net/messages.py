"""The gossip envelope: a bounded, strictly decoded msgpack map with a version and a type.

Every gossip message is a msgpack map carrying ``"v"`` (int) and ``"type"`` (str).
Bodies are defined by the layers above; they register a per-type check with
`register_schema`. Decoding refuses anything a remote peer could use to make us
allocate or recurse without bound: the total size is capped before unpacking,
msgpack's own length limits are set, ext types are refused, map keys must be
strings, and nesting depth is bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from gfl.net.errors import MessageError

logger = logging.getLogger(__name__)

# libp2p's gossipsub silently drops anything >= 1 MiB and protobuf framing adds
# a few hundred bytes; announcements are small, so stay far below.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_DEPTH = 8
MAX_CONTAINER_LEN = 4096
MAX_TYPE_LEN = 64

SchemaCheck = Callable[[dict[str, Any]], bool | None]
_schemas: dict[str, SchemaCheck] = {}


def register_schema(type_: str, check: SchemaCheck) -> None:
    """Register the body check for messages of ``type_``.

    ``check`` receives the decoded map; it rejects by returning ``False`` or by
    raising `MessageError` (any other exception is also treated as a reject).
    """
    if not isinstance(type_, str) or not 0 < len(type_) <= MAX_TYPE_LEN:
        raise ValueError("a message type is a non-empty string of at most 64 chars")
    _schemas[type_] = check


def unregister_schema(type_: str) -> None:
    _schemas.pop(type_, None)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise MessageError("msgpack ext types are not allowed in messages")


def _check_tree(obj: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise MessageError(f"message nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise MessageError("message map keys must be strings")
            _check_tree(v, depth + 1)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _check_tree(v, depth + 1)
    elif obj is None or isinstance(obj, bool | int | float | str | bytes):
        if isinstance(obj, int) and not -(2**63) <= obj < 2**64:
            raise MessageError("integer out of the 64-bit range")
    else:
        raise MessageError(f"value of type {type(obj).__name__} cannot be sent")


def _check_envelope(msg: Mapping[str, Any]) -> None:
    v = msg.get("v")
    t = msg.get("type")
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**16:
        raise MessageError('message needs an integer "v" (version)')
    if not isinstance(t, str) or not 0 < len(t) <= MAX_TYPE_LEN:
        raise MessageError('message needs a string "type" of at most 64 chars')
    check = _schemas.get(t)
    if check is None:
        return
    try:
        ok = check(dict(msg))
    except MessageError:
        raise
    except Exception as exc:
        raise MessageError(f"{t} message does not match its schema: {exc}") from None
    if ok is False:
        raise MessageError(f"{t} message does not match its schema")


def check_message(msg: Any) -> None:
    """Raise `MessageError` unless ``msg`` (already decoded: a message inside another)
    fits the envelope and its type's schema."""
    if not isinstance(msg, dict):
        raise MessageError("a message is a map")
    _check_tree(msg)
    _check_envelope(msg)


def encode_message(msg: Mapping[str, Any], *, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Check and pack a message; raises `MessageError` if it would be refused remotely."""
    if not isinstance(msg, Mapping):
        raise MessageError("a message is a map")
    _check_tree(dict(msg))
    _check_envelope(msg)
    data: bytes = msgpack.packb(dict(msg), use_bin_type=True)
    if len(data) > max_bytes:
        raise MessageError(
            f"message is {len(data)} bytes, over the {max_bytes}-byte limit: "
            "gossip only small announcements and send data as blobs"
        )
    return data


def decode_message(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Strictly unpack and check a message; raises `MessageError` on anything off."""
    if len(data) > max_bytes:
        raise MessageError(f"message is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        msg = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except MessageError:
        raise
    except Exception as exc:
        raise MessageError(f"malformed message: {type(exc).__name__}") from None
    if not isinstance(msg, dict):
        raise MessageError("a message is a msgpack map")
    _check_tree(msg)
    _check_envelope(msg)
    return msg
