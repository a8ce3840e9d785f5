"""Python clients of a node's control API: `NodeClient` (sync) and `AsyncNodeClient`.

    with NodeClient.from_home("~/.gfl") as node:
        print(node.status()["peer_id"])
        for job in node.jobs():
            print(job["name"], job["round"], job["rounds"])
        for event in node.events(since=0):
            print(event["type"], event["data"])

As in httpx, one base builds every request and checks every response; the two
clients differ only in how they send (`AsyncNodeClient` works on asyncio, the
console's loop, and on trio). Answers are typed (`gfl_console.types`); errors
are `NodeNotRunning` when nothing answers, `Unauthorized` for a wrong token and
`ApiRequestError` for a refused request. `request()` reaches any other endpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast, overload
from urllib.parse import quote

import httpx

from gfl_console.errors import ApiRequestError, NodeClientError, NodeNotRunning, Unauthorized
from gfl_console.home import DEFAULT_HOST, DEFAULT_PORT, NodeHome, Target, token_from_file
from gfl_console.types import (
    Event,
    JobBundle,
    JobDetail,
    JobReport,
    JobSummary,
    NodeStatus,
    PeerInfo,
    RoundCheck,
)

__all__ = [
    "ApiRequestError",
    "AsyncNodeClient",
    "NodeClient",
    "NodeClientError",
    "NodeNotRunning",
    "SSEParser",
    "Unauthorized",
    "token_from_file",
]

DEFAULT_TIMEOUT = 10.0
DEAD_AFTER = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call before it is sent: what to ask, and how to read the answer."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    json: Any = None
    text: bool = False  # the answer is text (a CSV report), not JSON
    raw: bool = False  # the answer is bytes (a blob)
    timeout: httpx.Timeout | None = field(default=None, compare=False)


def _job(job_id: str, tail: str = "") -> str:
    # quoted whole, so that an id with a slash or a '?' is one (refused) id, not another route
    return f"/jobs/{quote(str(job_id), safe='')}{tail}"


class SSEParser:
    """Turn server-sent-event lines into events (pure; shared by both clients)."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self.last_id: int | None = None

    def feed(self, line: str) -> Event | None:
        """One line (without its newline); returns an event when a blank line ends one."""
        if line == "":
            if not self._data:
                return None
            payload, self._data = "\n".join(self._data), []
            try:
                event = json.loads(payload)
                if event.get("seq"):
                    self.last_id = int(event["seq"])
            except (ValueError, TypeError, AttributeError):
                raise NodeClientError("the node sent a malformed event") from None
            return cast(Event, event)
        if line.startswith(":"):
            return None  # a comment: heartbeat
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def parse(self, lines: Iterable[str]) -> Iterator[Event]:
        for line in lines:
            event = self.feed(line)
            if event is not None:
                yield event


class BaseNodeClient:
    """What both clients share: the address, the token, building calls and reading answers."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str = "",
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not 0 < port < 65536:
            raise NodeClientError(f"the API port must be 1 to 65535, not {port}")
        self.host, self.port = host, port
        self.where = f"{host}:{port}"
        self.base_url = f"http://{host}:{port}"
        self.timeout = httpx.Timeout(timeout)
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    @staticmethod
    def _locate(home: str | os.PathLike[str] | None) -> Target:
        return NodeHome(home).locate()

    # -- the calls, built once for both clients -----------------------------------------------
    @staticmethod
    def _status() -> Call[NodeStatus]:
        return Call("GET", "/status")

    @staticmethod
    def _peers() -> Call[list[PeerInfo]]:
        return Call("GET", "/peers")

    @staticmethod
    def _jobs() -> Call[list[JobSummary]]:
        return Call("GET", "/jobs")

    @staticmethod
    def _job(job_id: str) -> Call[JobDetail]:
        return Call("GET", _job(job_id))

    @staticmethod
    def _verify(job_id: str) -> Call[list[RoundCheck]]:
        return Call("GET", _job(job_id, "/verify"))

    @staticmethod
    def _cancel(job_id: str) -> Call[JobSummary]:
        return Call("POST", _job(job_id, "/cancel"))

    @staticmethod
    def _join(job_id: str, priority: int | None) -> Call[JobSummary]:
        body = {} if priority is None else {"priority": priority}
        return Call("POST", _job(job_id, "/join"), json=body)

    @staticmethod
    def _leave(job_id: str) -> Call[JobSummary]:
        return Call("POST", _job(job_id, "/leave"))

    @staticmethod
    def _publish(
        spec_dict: Mapping[str, Any] | None,
        toml: str | None,
        participate: bool,
        priority: int | None = None,
    ) -> Call[JobSummary]:
        if (spec_dict is None) == (toml is None):
            raise ValueError("publish takes exactly one of spec_dict and toml")
        body: dict[str, Any] = (
            {"toml": toml} if toml is not None else {"spec": dict(spec_dict or {})}
        )
        body["participate"] = participate
        if priority is not None:
            body["priority"] = priority
        return Call("POST", "/jobs", json=body)

    @staticmethod
    def _report(job_id: str, format: str) -> Call[Any]:
        if format not in ("json", "csv"):
            raise ValueError('a report\'s format is "json" or "csv"')
        return Call("GET", _job(job_id, "/report"), {"format": format}, text=format == "csv")

    @staticmethod
    def _bundle(job_id: str) -> Call[JobBundle]:
        return Call("GET", _job(job_id, "/bundle"))

    @staticmethod
    def _blob(h: str) -> Call[bytes]:
        return Call("GET", f"/blobs/{quote(str(h), safe='')}", raw=True)

    @staticmethod
    def _shutdown() -> Call[Any]:
        return Call("POST", "/shutdown")

    @staticmethod
    def _openapi() -> Call[dict[str, Any]]:
        return Call("GET", "/openapi.json")

    def _events(self, since: int | None, dead_after: float) -> Call[None]:
        # the node sends a heartbeat every few seconds: silence this long means it is gone
        timeout = httpx.Timeout(self.timeout.connect, read=dead_after)
        params = {} if since is None else {"since": str(since)}
        return Call("GET", "/events", params, timeout=timeout)

    # -- requests and answers ---------------------------------------------------------------
    def _build(self, call: Call[Any]) -> httpx.Request:
        headers = dict(self._headers)
        if call.path == "/events":
            headers["Accept"] = "text/event-stream"
        return httpx.Request(
            call.method,
            self.base_url + call.path,
            params=dict(call.params) if call.params else None,
            json=call.json,
            headers=headers,
            extensions={"timeout": (call.timeout or self.timeout).as_dict()},
        )

    def _error(self, response: httpx.Response) -> NodeClientError | None:
        """The error a response stands for (its body already read), or None."""
        if response.status_code == 401:
            return Unauthorized(
                f"the node at {self.where} refused the API token (see DATADIR/api.token)"
            )
        if response.status_code >= 400:
            try:
                message = str(response.json()["error"])
            except (ValueError, KeyError, TypeError):
                message = response.text.strip()[:200] or response.reason_phrase
            return ApiRequestError(f"{self.where}: {message}", response.status_code)
        return None

    def _result(self, call: Call[T], response: httpx.Response) -> T:
        error = self._error(response)
        if error is not None:
            raise error
        if call.text:
            return cast(T, response.text)
        if call.raw:
            return cast(T, response.content)
        try:
            return cast(T, response.json())
        except ValueError:
            raise NodeClientError(
                f"{self.where} answered {call.method} {call.path} with something other than "
                "JSON: is it a GFL node?"
            ) from None

    def _not_running(self, exc: Exception) -> NodeNotRunning:
        return NodeNotRunning(f"no node answers at {self.where} ({type(exc).__name__})")


class NodeClient(BaseNodeClient):
    """A synchronous client of one node's control API."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str = "",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(host, port, token, timeout=timeout)
        self._http = httpx.Client(transport=transport)

    @classmethod
    def from_home(cls, home: str | os.PathLike[str] | None = None, **kw: Any) -> NodeClient:
        """The client of the node running with datadir ``home`` ($GFL_HOME, ~/.gfl)."""
        target = cls._locate(home)
        return cls(target.host, target.port, target.token, **kw)

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.send(self._build(call))
        except httpx.TransportError as exc:
            raise self._not_running(exc) from None
        return self._result(call, response)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        """Call any endpoint; returns the decoded JSON."""
        return self._send(Call[Any](method.upper(), path, params, json))

    def status(self) -> NodeStatus:
        return self._send(self._status())

    def peers(self) -> list[PeerInfo]:
        return self._send(self._peers())

    def jobs(self) -> list[JobSummary]:
        return self._send(self._jobs())

    def job(self, job_id: str) -> JobDetail:
        """One job with its spec, rounds and commitments (a unique id prefix is enough)."""
        return self._send(self._job(job_id))

    def verify(self, job_id: str) -> list[RoundCheck]:
        """Each round's model hash on this node against the chain's majority."""
        return self._send(self._verify(job_id))

    def cancel(self, job_id: str) -> JobSummary:
        """Cancel a job on chain (its owner only)."""
        return self._send(self._cancel(job_id))

    def join(self, job_id: str, *, priority: int | None = None) -> JobSummary:
        """Take part in a job the node knows: queued (``priority``: higher starts first)
        until a slot is free; `ApiRequestError` (409) says why the node refuses."""
        return self._send(self._join(job_id, priority))

    def leave(self, job_id: str) -> JobSummary:
        """Stop taking part in a job (out of the queue, or out of its member set on chain)."""
        return self._send(self._leave(job_id))

    def publish(
        self,
        spec_dict: Mapping[str, Any] | None = None,
        *,
        toml: str | None = None,
        participate: bool = True,
        priority: int | None = None,
    ) -> JobSummary:
        """Register a job (a spec table or a job file's text) on chain and announce it;
        taking part in it, the node queues it with ``priority`` (default 0)."""
        return self._send(self._publish(spec_dict, toml, participate, priority))

    @overload
    def report(self, job_id: str, format: Literal["json"] = "json") -> JobReport: ...
    @overload
    def report(self, job_id: str, format: Literal["csv"]) -> str: ...
    def report(self, job_id: str, format: str = "json") -> JobReport | str:
        """Per-round metrics: a `JobReport`, or the CSV text."""
        return cast(JobReport | str, self._send(self._report(job_id, format)))

    def bundle(self, job_id: str) -> JobBundle:
        """What a verifier needs of a job: its manifest, spec and the blobs to fetch."""
        return self._send(self._bundle(job_id))

    def blob(self, h: str) -> bytes:
        """A blob the node holds, by its sha256 (hex)."""
        return self._send(self._blob(h))

    def shutdown(self) -> None:
        """Ask the node to stop cleanly."""
        self._send(self._shutdown())

    def openapi(self) -> dict[str, Any]:
        return self._send(self._openapi())

    def events(
        self, since: int | None = None, *, dead_after: float = DEAD_AFTER
    ) -> Iterator[Event]:
        """Events, live, until the node stops; ``since`` replays the buffered ones after it.

        Silence (not even a heartbeat) for ``dead_after`` seconds raises `NodeNotRunning`.
        """
        call = self._events(since, dead_after)
        parser = SSEParser()
        try:
            response = self._http.send(self._build(call), stream=True)
            try:
                if response.status_code >= 400:
                    response.read()
                    self._result(call, response)
                yield from parser.parse(response.iter_lines())
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise self._not_running(exc) from None


class AsyncNodeClient(BaseNodeClient):
    """The same client for async code (asyncio or trio)."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str = "",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(host, port, token, timeout=timeout)
        self._http = httpx.AsyncClient(transport=transport)

    @classmethod
    def from_home(cls, home: str | os.PathLike[str] | None = None, **kw: Any) -> AsyncNodeClient:
        """As `NodeClient.from_home`."""
        target = cls._locate(home)
        return cls(target.host, target.port, target.token, **kw)

    async def __aenter__(self) -> AsyncNodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.send(self._build(call))
        except httpx.TransportError as exc:
            raise self._not_running(exc) from None
        return self._result(call, response)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        """As `NodeClient.request`."""
        return await self._send(Call[Any](method.upper(), path, params, json))

    async def status(self) -> NodeStatus:
        return await self._send(self._status())

    async def peers(self) -> list[PeerInfo]:
        return await self._send(self._peers())

    async def jobs(self) -> list[JobSummary]:
        return await self._send(self._jobs())

    async def job(self, job_id: str) -> JobDetail:
        return await self._send(self._job(job_id))

    async def verify(self, job_id: str) -> list[RoundCheck]:
        return await self._send(self._verify(job_id))

    async def cancel(self, job_id: str) -> JobSummary:
        return await self._send(self._cancel(job_id))

    async def join(self, job_id: str, *, priority: int | None = None) -> JobSummary:
        return await self._send(self._join(job_id, priority))

    async def leave(self, job_id: str) -> JobSummary:
        return await self._send(self._leave(job_id))

    async def publish(
        self,
        spec_dict: Mapping[str, Any] | None = None,
        *,
        toml: str | None = None,
        participate: bool = True,
        priority: int | None = None,
    ) -> JobSummary:
        return await self._send(self._publish(spec_dict, toml, participate, priority))

    @overload
    async def report(self, job_id: str, format: Literal["json"] = "json") -> JobReport: ...
    @overload
    async def report(self, job_id: str, format: Literal["csv"]) -> str: ...
    async def report(self, job_id: str, format: str = "json") -> JobReport | str:
        return cast(JobReport | str, await self._send(self._report(job_id, format)))

    async def bundle(self, job_id: str) -> JobBundle:
        return await self._send(self._bundle(job_id))

    async def blob(self, h: str) -> bytes:
        return await self._send(self._blob(h))

    async def shutdown(self) -> None:
        await self._send(self._shutdown())

    async def openapi(self) -> dict[str, Any]:
        return await self._send(self._openapi())

    async def events(
        self, since: int | None = None, *, dead_after: float = DEAD_AFTER
    ) -> AsyncIterator[Event]:
        """As `NodeClient.events`."""
        call = self._events(since, dead_after)
        parser = SSEParser()
        try:
            response = await self._http.send(self._build(call), stream=True)
            try:
                if response.status_code >= 400:
                    await response.aread()
                    self._result(call, response)
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise self._not_running(exc) from None
