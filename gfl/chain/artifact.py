"""The compiled JobRegistry shipped inside the package, and decoding of its reverts.

The artifact is built from ``contracts/JobRegistry.sol`` by ``contracts/build.js``
(``npm run build``); nodes need no compiler.
"""

from __future__ import annotations

import ast
import json
from functools import cache
from importlib import resources
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_typing import HexStr
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

ARTIFACT_NAME = "JobRegistry.json"


@cache
def load_artifact() -> dict[str, Any]:
    """The artifact JSON: abi, bytecode, deployedBytecode, compiler, settings."""
    text = resources.files("gfl.chain").joinpath("artifacts", ARTIFACT_NAME).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def abi() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = load_artifact()["abi"]
    return entries


def bytecode() -> HexStr:
    return HexStr(load_artifact()["bytecode"])


@cache
def _error_table() -> dict[bytes, tuple[str, list[str], list[str]]]:
    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    errors = [e for e in abi() if e["type"] == "error"]
    errors.append({"name": "Error", "inputs": [{"name": "message", "type": "string"}]})
    errors.append({"name": "Panic", "inputs": [{"name": "code", "type": "uint256"}]})
    for e in errors:
        types = [i["type"] if i["type"] != "enum" else "uint8" for i in e["inputs"]]
        sig = f"{e['name']}({','.join(types)})"
        table[keccak(text=sig)[:4]] = (e["name"], [i["name"] for i in e["inputs"]], types)
    return table


def decode_revert(data: bytes) -> tuple[str, dict[str, Any]] | None:
    """(error name, args) for revert data of a registry custom error, Error or Panic."""
    if len(data) < 4:
        return None
    entry = _error_table().get(bytes(data[:4]))
    if entry is None:
        return None
    name, names, types = entry
    try:
        values = abi_decode(types, bytes(data[4:]))
    except Exception:
        return None
    shown = [
        to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)
    ]
    return name, dict(zip(names, shown, strict=True))


def revert_data_from(exc: BaseException) -> bytes | None:
    """The raw revert data carried by a web3 or eth-tester exception, if any.

    eth-tester raises ``TransactionFailed("execution reverted: b'...'")`` with the
    data as a bytes repr; web3 over JSON-RPC raises ``ContractCustomError`` /
    ``ContractLogicError`` with ``.data`` as hex, or a ``Web3RPCError`` whose
    response holds it.
    """
    data = getattr(exc, "data", None)
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict):
        err = response.get("error") or {}
        d = err.get("data") if isinstance(err, dict) else None
        if isinstance(d, dict):
            d = d.get("data")
        if isinstance(d, str) and d.startswith("0x"):
            try:
                return bytes.fromhex(d[2:])
            except ValueError:
                return None
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, (bytes, bytearray)):
            return bytes(arg)
        if isinstance(arg, str) and "execution reverted: b" in arg:
            literal = arg.split("execution reverted: ", 1)[1]
            try:
                value = ast.literal_eval(literal)
            except (ValueError, SyntaxError):
                return None
            if isinstance(value, bytes):
                return value
    return None
