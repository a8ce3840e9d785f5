"""Questions to one peer (`gfl.net.asks`): a member that did not hear a shard's statements
asks the aggregator for them (docs/protocol.md 8.4), over real libp2p hosts. What an
answering peer may not do: answer with what was not asked, with messages that break their
schema, or with more bytes than an answer may take; nor may an asker's question."""

import os
import struct
from typing import Any

import msgpack
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from net_helpers import connected_pair, strangers

from gfl.net import asks
from gfl.net.errors import NetError
from gfl.scheduler import messages
from gfl.scheduler.exchange import NetExchange, PeerBook, answer_statements

ADDRESS = "0x" + "ab" * 20  # the aggregator's eth address, as a statement's signer would be


def _statement(job_id: bytes, r: int, k: int) -> dict[str, Any]:
    return messages.shard_statement(job_id, r, k, os.urandom(32), 100, b"", os.urandom(65))


async def _silent(topic: str, body: dict[str, Any]) -> None:
    """Gossip that delivers nothing (the case asking is for)."""


@pytest.mark.trio
async def test_a_member_asks_an_aggregator_for_the_statements_it_missed(tmp_path):
    job = os.urandom(32)
    async with connected_pair(tmp_path) as (a, b), trio.open_nursery() as nursery:
        aggregator = NetExchange(a, PeerBook(a), job, _silent, nursery)
        a.answer(messages.STATEMENTS, answer_statements({job: aggregator}.get))
        for k in (0, 3):
            await aggregator.post(_statement(job, 5, k))
        await aggregator.post(_statement(job, 4, 0))
        book = PeerBook(b)
        book.saw(ADDRESS, a.peer_id)
        member = NetExchange(b, book, job, _silent, nursery)
        assert member.heard("shard", 5) == []
        assert await member.ask(ADDRESS, 5, [3, 7]) == 1
        assert [m["shard"] for m in member.heard("shard", 5)] == [3]
        assert await member.ask(ADDRESS, 5, [0, 3]) == 2
        assert sorted(m["shard"] for m in member.heard("shard", 5)) == [0, 3]
        # an unknown node, and a node that answers nothing: 0, no exception
        assert await member.ask("0x" + "cd" * 20, 5, [0]) == 0
        other = NetExchange(b, book, os.urandom(32), _silent, nursery)
        assert await other.ask(ADDRESS, 5, [0]) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_an_aggregator_known_only_by_its_gossip_is_found_in_the_dht(tmp_path):
    """A member knows an aggregator by the peer id that signed its statements, forwarded
    by others, and may hold no address for it: the question still gets there (at 16 nodes,
    three members asked 24 times, got nothing, and waited out the round's deadline)."""
    job = os.urandom(32)
    async with strangers(tmp_path) as (_hub, a, b), trio.open_nursery() as nursery:
        aggregator = NetExchange(a, PeerBook(a), job, _silent, nursery)
        a.answer(messages.STATEMENTS, answer_statements({job: aggregator}.get))
        await aggregator.post(_statement(job, 5, 3))
        book = PeerBook(b)
        book.saw(ADDRESS, a.peer_id)
        member = NetExchange(b, book, job, _silent, nursery)
        assert await member.ask(ADDRESS, 5, [3]) == 1
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_an_answer_with_what_was_not_asked_or_malformed_is_not_heard(tmp_path):
    """The aggregator's node lies: statements of another round, shard or job, then a body
    that breaks the shard schema, then a frame over the answer limit."""
    job = os.urandom(32)
    answers: list[bytes] = []

    async def hostile(stream: Any) -> None:
        (n,) = struct.unpack(">I", await stream.read(4))
        await stream.read(n)
        data = answers.pop(0)
        await stream.write(data)
        await stream.close()

    def frame(items: list[dict[str, Any]]) -> bytes:
        body = msgpack.packb({"v": 1, "type": "answer", "messages": items}, use_bin_type=True)
        return struct.pack(">I", len(body)) + body

    bad = _statement(job, 5, 0) | {"mask": 7}
    answers += [
        frame([_statement(job, 4, 0), _statement(job, 5, 1), _statement(os.urandom(32), 5, 0)]),
        frame([bad]),
        struct.pack(">I", asks.MAX_ANSWER + 1),
    ]
    async with connected_pair(tmp_path) as (a, b), trio.open_nursery() as nursery:
        a._host.set_stream_handler(TProtocol(asks.PROTOCOL), hostile)
        book = PeerBook(b)
        book.saw(ADDRESS, a.peer_id)
        member = NetExchange(b, book, job, _silent, nursery)
        for _ in range(3):
            assert await member.ask(ADDRESS, 5, [0]) == 0
        assert member.heard("shard", 5) == [] and member.heard("shard", 4) == []
        assert answers == []
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_question_over_the_limit_is_refused_and_the_next_one_answered(tmp_path):
    async with connected_pair(tmp_path) as (a, b):
        a.answer("ping?", lambda q: [{"v": 1, "type": "pong", "n": q["n"]}])
        stream = await b._host.new_stream(ID.from_base58(a.peer_id), [TProtocol(asks.PROTOCOL)])
        await stream.write(struct.pack(">I", 1 << 31))  # 2 GiB announced: nothing allocated
        with trio.fail_after(10):
            try:
                got = await stream.read(4)
            except Exception as exc:  # reset (the library's stream errors)
                got = type(exc).__name__.encode()
        assert b"\x00" not in got, "unanswered: the stream is closed or reset"
        assert await b.ask(a.peer_id, {"v": 1, "type": "ping?", "n": 7}, 10) == [
            {"v": 1, "type": "pong", "n": 7}
        ]
        assert await b.ask(a.peer_id, {"v": 1, "type": "nobody answers this"}, 10) == []
        with pytest.raises(NetError):  # (refused here: over the limit before it is sent)
            await b.ask(a.peer_id, {"v": 1, "type": "ping?", "pad": b"x" * asks.MAX_QUESTION}, 10)
