"""Python clients of a node's control API: `NodeClient` (sync) and `AsyncNodeClient`.

    with NodeClient.from_home("~/.gfl") as node:
        print(node.status()["peer_id"])
        for event in node.events(since=0):
            print(event["type"], event["data"])

Errors are typed: `NodeNotRunning` when nothing answers, `Unauthorized` for a
wrong token, `ApiRequestError` for a refused request. The async client works
on asyncio (the Textual console) and on trio.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from gfl.errors import GflError
from gfl.node.config import DEFAULT_API_PORT
from gfl.node.datadir import DataDir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TIMEOUT = 10.0


class NodeClientError(GflError):
    """A control API call failed."""


class NodeNotRunning(NodeClientError):
    """No node answers at the given address (or the datadir has no running node)."""


class Unauthorized(NodeClientError):
    """The node refused the API token."""


class ApiRequestError(NodeClientError):
    """The node refused a request (4xx) or failed (5xx); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _locate(home: str | os.PathLike[str] | None) -> tuple[str, int, str]:
    datadir = DataDir(home)
    datadir.require_initialised()
    token = datadir.read_token()
    info = datadir.read_api_info()
    if info is None or not datadir.is_locked():
        raise NodeNotRunning(f"no node is running with datadir {datadir.root}")
    return info.host, info.port, token


def _check(response: httpx.Response, where: str) -> Any:
    if response.status_code == 401:
        raise Unauthorized(f"the node at {where} refused the API token (see DATADIR/api.token)")
    if response.status_code >= 400:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text.strip() or response.reason_phrase
        raise ApiRequestError(f"{where}: {message}", response.status_code)
    return response.json()


def _not_running(where: str, exc: Exception) -> NodeNotRunning:
    return NodeNotRunning(f"no node answers at {where} ({type(exc).__name__})")


class SSEParser:
    """Turn server-sent-event lines into event dicts (pure; shared by both clients)."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self.last_id: int | None = None

    def feed(self, line: str) -> dict[str, Any] | None:
        """One line (without its newline); returns an event when a blank line ends one."""
        if line == "":
            if not self._data:
                return None
            payload, self._data = "\n".join(self._data), []
            try:
                event = json.loads(payload)
            except ValueError:
                raise NodeClientError("the node sent a malformed event") from None
            if event.get("seq"):
                self.last_id = int(event["seq"])
            return event
        if line.startswith(":"):
            return None  # a comment: heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        return None

    def parse(self, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
        for line in lines:
            event = self.feed(line)
            if event is not None:
                yield event


def _event_params(since: int | None) -> dict[str, str]:
    return {} if since is None else {"since": str(since)}


class NodeClient:
    """A synchronous client of one node's control API."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_API_PORT,
        token: str = "",
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.where = f"{host}:{port}"
        self.base_url = f"http://{host}:{port}"
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    @classmethod
    def from_home(cls, home: str | os.PathLike[str] | None = None, **kw: Any) -> NodeClient:
        """The client of the node running with datadir ``home`` ($GFL_HOME, ~/.gfl)."""
        host, port, token = _locate(home)
        return cls(host, port, token, **kw)

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """Call any endpoint; returns the decoded JSON."""
        try:
            response = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise _not_running(self.where, exc) from None
        return _check(response, self.where)

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/status")

    def peers(self) -> list[dict[str, Any]]:
        return self.request("GET", "/peers")

    def openapi(self) -> dict[str, Any]:
        return self.request("GET", "/openapi.json")

    def shutdown(self) -> None:
        self.request("POST", "/shutdown")

    def events(
        self, since: int | None = None, *, dead_after: float = 30.0
    ) -> Iterator[dict[str, Any]]:
        """Events as dicts ({"seq", "ts", "type", "data"}), live, until the node stops.

        ``since`` replays buffered events after that sequence number. The node
        sends a heartbeat every few seconds; silence for ``dead_after`` seconds
        raises `NodeNotRunning`.
        """
        parser = SSEParser()
        timeout = httpx.Timeout(DEFAULT_TIMEOUT, read=dead_after)
        try:
            with self._http.stream(
                "GET", "/events", params=_event_params(since), timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response, self.where)
                yield from parser.parse(response.iter_lines())
        except httpx.TransportError as exc:
            raise _not_running(self.where, exc) from None


class AsyncNodeClient:
    """The same client for async code (asyncio or trio)."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_API_PORT,
        token: str = "",
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.where = f"{host}:{port}"
        self._http = httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    @classmethod
    def from_home(cls, home: str | os.PathLike[str] | None = None, **kw: Any) -> AsyncNodeClient:
        host, port, token = _locate(home)
        return cls(host, port, token, **kw)

    async def __aenter__(self) -> AsyncNodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise _not_running(self.where, exc) from None
        return _check(response, self.where)

    async def status(self) -> dict[str, Any]:
        return await self.request("GET", "/status")

    async def peers(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/peers")

    async def shutdown(self) -> None:
        await self.request("POST", "/shutdown")

    async def events(
        self, since: int | None = None, *, dead_after: float = 30.0
    ) -> AsyncIterator[dict[str, Any]]:
        """As `NodeClient.events`."""
        parser = SSEParser()
        timeout = httpx.Timeout(DEFAULT_TIMEOUT, read=dead_after)
        try:
            async with self._http.stream(
                "GET", "/events", params=_event_params(since), timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _check(response, self.where)
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise _not_running(self.where, exc) from None


def token_from_file(path: str | os.PathLike[str]) -> str:
    """Read an API token file (``--token-file``)."""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise NodeClientError(f"cannot read the token file {path}: {exc.strerror}") from None
