"""Local chains for devnets and tests: the embedded chain served over HTTP, anvil, funding.

`serve_embedded` answers the JSON-RPC subset that web3's HTTPProvider and the
rpc backend use (chainId, blockNumber, getBalance, getTransactionCount,
sendRawTransaction, getTransactionReceipt, call, estimateGas, getLogs, getCode,
gasPrice, feeHistory, maxPriorityFeePerGas, getBlockByNumber, ...) plus
anvil's ``evm_increaseTime`` / ``evm_mine``, by running each request through
web3's eth-tester request pipeline and hex-encoding the result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address
from web3 import HTTPProvider, Web3
from web3.types import Wei

from gfl.chain.artifact import revert_data_from
from gfl.chain.embedded import DEV_KEY, EmbeddedChain
from gfl.chain.errors import ChainError, ChainUnavailable
from gfl.chain.transactions import TxSender, is_out_of_gas, with_retry

log = logging.getLogger(__name__)

#: anvil's first well-known dev account (funded with 10 000 ETH on every anvil).
ANVIL_DEV_KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
#: eth-tester's first dev account, the funder of a served embedded chain.
EMBEDDED_DEV_KEY = DEV_KEY
_MAX_BODY = 4 * 1024 * 1024


def free_port(taken: set[int] | None = None) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a server started later; not
    one of ``taken`` (ports handed out for servers that have not bound them yet), to which
    it is added.

    Taken below the kernel's ephemeral range when possible: a port from that range
    (what binding port 0 gives) can be taken meanwhile as the source port of any
    outgoing connection, which a devnet of many nodes dialling each other does often.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(64):
        port = rng.randrange(max(1024, low - 12_000), low)
        if taken is not None and port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if taken is not None:
            taken.add(port)
        return port
    with socket.socket() as s:  # (port 0's pick is never one a server was handed out)
        s.bind(("127.0.0.1", 0))
        bound: int = s.getsockname()[1]
        return bound


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(2048, int(text.split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# ---------------------------------------------------------------- serve_embedded


def _to_json(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict) or hasattr(value, "items"):
        out = {k: _to_json(v) for k, v in value.items()}
        if out.get("to") == "":
            out["to"] = None  # contract creation
        return out
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return str(value)


class DevChainServer:
    """An embedded chain answering JSON-RPC on 127.0.0.1 from a background thread."""

    def __init__(self, chain: EmbeddedChain, host: str, port: int) -> None:
        self.chain = chain
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._request = chain.w3.provider.request_func(chain.w3, chain.w3.middleware_onion)
        self._httpd = _QuietServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        # an AF_INET server's bound (host, port)
        self.host: str
        self.port: int
        self.host, self.port = self._httpd.socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="gfl-devchain", daemon=True
        )
        self._thread.start()
        log.info(
            "embedded chain %d served on %s (registry %s)",
            chain.chain_id,
            self.url,
            chain.registry_address,
        )

    @property
    def registry_address(self) -> str:
        return self.chain.registry_address

    def dispatch(self, request: Any) -> Any:
        if isinstance(request, list):
            return [self.dispatch(r) for r in request]
        rid = request.get("id") if isinstance(request, dict) else None
        try:
            method = request["method"]
            params = request.get("params") or []
        except (KeyError, TypeError, AttributeError):
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "error": {"code": -32600, "message": "invalid request"},
            }
        try:
            result = self._call(method, params)
        except _RpcError as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": exc.error}
        except Exception as exc:
            data = revert_data_from(exc)
            if is_out_of_gas(exc):
                # a call's gas ran out: say so as geth does ("execution reverted" would make
                # web3 report a revert without a reason)
                text = str(exc).removeprefix("execution reverted: ")
                error = {"code": -32000, "message": text[:500]}
            elif data is not None or "revert" in str(exc).lower():
                error = {
                    "code": 3,
                    "message": "execution reverted",
                    "data": "0x" + (data or b"").hex(),
                }
            else:
                error = {"code": -32000, "message": str(exc)[:500]}
            return {"jsonrpc": "2.0", "id": rid, "error": error}
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    def _call(self, method: str, params: list[Any]) -> Any:
        if method == "evm_increaseTime":
            self.chain.advance_time(
                int(params[0], 16) if isinstance(params[0], str) else int(params[0])
            )
            return hex(0)
        if method == "evm_mine":
            self.chain.advance_time(0)
            return "0x0"
        if method == "web3_clientVersion":
            return "gfl-embedded/eth-tester"
        if method == "net_version":
            return str(self.chain.chain_id)
        response = self._request(method, params)
        if "error" in response:
            error = response["error"]
            if isinstance(error, str):
                error = {"code": -32601 if "not" in error.lower() else -32000, "message": error}
            raise _RpcError(dict(error))
        return _to_json(response.get("result"))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave without a 40 ms stall

            def setup(self) -> None:
                super().setup()
                with server._conn_lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._conn_lock:
                    server._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY:
                    self.send_error(413)
                    return
                try:
                    request = json.loads(self.rfile.read(length))
                except ValueError:
                    response: Any = {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": -32700, "message": "parse error"},
                    }
                else:
                    response = server.dispatch(request)
                body = json.dumps(response).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("devchain: " + format, *args)

        return Handler

    def close(self) -> None:
        """Stop serving, drop open keep-alive connections, close the chain."""
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._conn_lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self.chain.close()

    def __enter__(self) -> DevChainServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-request is routine (a node killed in a test): log it, no
    traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("dev chain: request from %s failed", client_address, exc_info=True)


class _RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error


def serve_embedded(
    host: str = "127.0.0.1", port: int = 0, *, state_dir: Path | None = None
) -> DevChainServer:
    """Start an embedded chain (registry deployed) and serve it over HTTP JSON-RPC.

    Port 0 picks a free port; read `.url`. Fund node accounts with
    `fund(server.url, EMBEDDED_DEV_KEY, ...)`. Call `.close()` to stop.
    """
    return DevChainServer(EmbeddedChain(state_dir), host, port)


# ---------------------------------------------------------------------- anvil


def find_anvil() -> str | None:
    """The anvil binary: $GFL_ANVIL, contracts/node_modules (npm), or PATH."""
    env = os.environ.get("GFL_ANVIL")
    if env:
        return env if Path(env).exists() else None
    root = Path(__file__).resolve().parents[2] / "contracts" / "node_modules"
    for candidate in sorted(root.glob("@foundry-rs/anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    wrapper = root / ".bin" / "anvil"
    if wrapper.exists():
        return str(wrapper)
    return shutil.which("anvil")


@dataclass
class AnvilProcess:
    """A running anvil; `stop()` ends it."""

    process: subprocess.Popen[bytes]
    url: str
    port: int

    def stop(self, timeout: float = 5) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def __enter__(self) -> AnvilProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_anvil(
    port: int | None = None,
    *,
    chain_id: int | None = None,
    block_time: float | None = None,
    timeout: float = 15,
) -> AnvilProcess:
    """Start anvil on 127.0.0.1:`port` (a free one when None) and wait until it answers."""
    binary = find_anvil()
    if binary is None:
        raise ChainError("anvil not found: run `npm ci` in contracts/ or put anvil on PATH")
    port = port or free_port()
    cmd = [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"]
    if chain_id is not None:
        cmd += ["--chain-id", str(chain_id)]
    if block_time is not None:
        cmd += ["--block-time", str(block_time)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    handle = AnvilProcess(proc, f"http://127.0.0.1:{port}", port)
    w3 = Web3(
        HTTPProvider(handle.url, request_kwargs={"timeout": 2}, exception_retry_configuration=None)
    )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise ChainError(f"anvil exited at start (code {proc.returncode}): {err[:300]}")
        try:
            w3.eth.chain_id  # noqa: B018
            return handle
        except Exception:
            if time.monotonic() > deadline:
                handle.stop()
                raise ChainUnavailable(
                    f"anvil did not answer on {handle.url} within {timeout}s"
                ) from None
            time.sleep(0.05)


# ----------------------------------------------------------------------- fund


def fund(
    url: str, funder_key: bytes, addresses: Iterable[str], wei: int, *, timeout: float = 30
) -> None:
    """Send `wei` from the funder account to each address (dev chains)."""
    w3 = Web3(
        HTTPProvider(
            url, request_kwargs={"timeout": min(timeout, 10)}, exception_retry_configuration=None
        )
    )
    chain_id = with_retry(
        lambda: w3.eth.chain_id, timeout=timeout, endpoint=url, what="reading the chain id"
    )
    sender = TxSender(w3, funder_key, endpoint=url, chain_id=chain_id, timeout=timeout)
    for address in addresses:
        sender.send(
            {"to": to_checksum_address(address), "value": Wei(int(wei))}, what=f"funding {address}"
        )
