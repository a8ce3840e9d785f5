"""Questions to one peer over ``/gfl/ask/1.0.0``: what gossip may have lost, asked for.

A question is one message in the gossip envelope (`gfl.net.messages`: a bounded msgpack
map with a version and a type, checked against its type's schema), at most `MAX_QUESTION`
bytes; the answer is a list of such messages, each checked the same way, at most
`MAX_ANSWER` bytes in all. Each side writes a 4-byte big-endian length, then the msgpack.
The layers above say what they answer, by question type (`Asks.answer`); a question of a
type nobody answers gets an empty list. Use: a node that did not hear a shard's
statements asks the shard's aggregators for them (docs/protocol.md 8.4).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from gfl.net.blob_protocol import abort, read_exact
from gfl.net.errors import MessageError, NetError
from gfl.net.messages import MAX_MESSAGE_BYTES, check_message, decode_message, encode_message
from gfl.net.peers import Peers

logger = logging.getLogger(__name__)

PROTOCOL = "/gfl/ask/1.0.0"
VERSION = 1
MAX_QUESTION = 4096
MAX_ANSWER = MAX_MESSAGE_BYTES
MAX_CONCURRENT = 8  # questions answered at once; more are refused (the asker retries)
READ_TIMEOUT = 5.0  # for a question that is slow to arrive
_LENGTH = struct.Struct(">I")

Answer = Callable[[dict[str, Any]], list[dict[str, Any]]]


async def _read_frame(stream: Any, limit: int) -> bytes:
    (n,) = _LENGTH.unpack(await read_exact(stream, _LENGTH.size))
    if n > limit:
        raise MessageError(f"a {n}-byte frame, over the {limit}-byte limit")
    return await read_exact(stream, n)


class Asks:
    """This node's side of the protocol: the questions it answers, and asking others."""

    def __init__(self, host: Any, peers: Peers) -> None:
        self._host = host
        self._peers = peers
        self._answers: dict[str, Answer] = {}
        self._slots = trio.Semaphore(MAX_CONCURRENT)

    def answer(self, type_: str, fn: Answer) -> None:
        """Answer questions of ``type_`` with ``fn`` (quick and non-blocking: it runs on
        the event loop; the question was checked against its schema)."""
        self._answers[type_] = fn

    async def serve(self, stream: Any) -> None:
        """The stream handler: one question, one answer."""
        try:
            if self._slots.value == 0:
                raise NetError("too many questions at once")
            async with self._slots:
                with trio.fail_after(READ_TIMEOUT):
                    question = decode_message(await _read_frame(stream, MAX_QUESTION))
                fn = self._answers.get(question["type"])
                answers = fn(question) if fn is not None else []
                data = _answer_bytes(answers)
                with trio.fail_after(READ_TIMEOUT):
                    await stream.write(_LENGTH.pack(len(data)) + data)
                    await stream.close()
        except Exception as exc:  # a bad question, a peer gone: this stream only
            logger.debug("answering a question failed: %s", exc)
            await abort(stream)

    async def ask(
        self, peer_id: str, question: dict[str, Any], timeout: float
    ) -> list[dict[str, Any]]:
        """``peer_id``'s answer to ``question`` (messages, each checked against its schema);
        `NetError` when it gives none within ``timeout`` seconds."""
        data = encode_message(question, max_bytes=MAX_QUESTION)
        stream = None
        try:
            with trio.fail_after(timeout):
                peer = ID.from_base58(peer_id)
                await self._peers.reach(peer)  # (one we know only by its gossip: the DHT)
                stream = await self._host.new_stream(peer, [TProtocol(PROTOCOL)])
                await stream.write(_LENGTH.pack(len(data)) + data)
                raw = await _read_frame(stream, MAX_ANSWER)
            answer = decode_message(raw, max_bytes=MAX_ANSWER)
            items = answer.get("messages")
            if answer["type"] != "answer" or not isinstance(items, list):
                raise MessageError("not an answer")
            for item in items:
                check_message(item)
            await stream.close()
            return items
        except (NetError, trio.Cancelled):
            if stream is not None:
                await abort(stream)
            raise
        except Exception as exc:  # the library raises many stream/muxer errors
            if stream is not None:
                await abort(stream)
            raise NetError(f"{peer_id[-8:]} did not answer: {type(exc).__name__}") from exc


def _answer_bytes(answers: list[dict[str, Any]]) -> bytes:
    """The answer's frame: as many of ``answers`` as fit `MAX_ANSWER`."""
    kept = list(answers)
    while True:
        try:
            return encode_message(
                {"v": VERSION, "type": "answer", "messages": kept}, max_bytes=MAX_ANSWER
            )
        except MessageError:
            if not kept:
                raise
            kept = kept[: len(kept) // 2]
