"""An aggregator's shard statements, posted close together, leave in one ``statements``
gossip message (docs/protocol.md 8.3): at 32 nodes and one shard each, 32 messages a round
instead of 96, each checked by every node and copied to it ~6 times. A receiver reads each
statement in it as if gossiped alone; a message with one bad statement is refused whole."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from gfl.net.messages import MAX_MESSAGE_BYTES, encode_message
from gfl.scheduler import messages
from gfl.scheduler.exchange import GATHER_MAX_S, NetExchange, PeerBook, statement_batches

JOB = os.urandom(32)


def statement(r: int, k: int, mask: bytes = b"") -> dict[str, Any]:
    return messages.shard_statement(JOB, r, k, os.urandom(32), 1000 + k, mask, b"\x02" * 65)


async def posted(*groups: list[dict[str, Any]], pause: float = 0.0) -> list[dict[str, Any]]:
    """What gossip carried when each group was posted at once, ``pause`` s apart."""
    sent: list[dict[str, Any]] = []

    async def gossip(topic: str, body: dict[str, Any]) -> None:
        assert topic == messages.round_topic(JOB)
        sent.append(body)

    async with trio.open_nursery() as nursery:
        exchange = NetExchange(None, PeerBook(None), JOB, gossip, nursery)  # type: ignore[arg-type]
        for group in groups:
            for body in group:
                await exchange.post(body)
            await trio.sleep(pause)
        await trio.sleep(GATHER_MAX_S + 0.2)
        # what a member asking for them gets: each statement alone, as before
        stated = [b for g in groups for b in g]
        assert exchange.stated(stated[0]["round"], range(256)) == [
            b for b in stated if b["round"] == stated[0]["round"]
        ]
        nursery.cancel_scope.cancel()
    return sent


@pytest.mark.trio
async def test_statements_posted_together_leave_in_one_message() -> None:
    three = [statement(4, k) for k in (3, 11, 19)]
    [msg] = await posted(three)
    assert msg["type"] == "statements" and messages.check_statements(msg)
    assert messages.batched_statements(msg) == three


@pytest.mark.trio
async def test_a_lone_statement_and_statements_far_apart_go_alone() -> None:
    first, later = statement(4, 3), statement(4, 11)
    sent = await posted([first], [later], pause=GATHER_MAX_S + 0.2)
    assert sent == [first, later] and all(messages.check_shard(m) for m in sent)


@pytest.mark.trio
async def test_one_message_per_round_and_within_the_envelope() -> None:
    many = [statement(4, k, mask=b"\x01" * 40_000) for k in range(5)] + [statement(5, 0)]
    sent = await posted(many)
    assert [len(messages.batched_statements(m)) for m in sent[:2]] == [3, 2]
    assert sent[2] == many[5]  # (another round; alone)
    for m in sent[:2]:
        assert messages.check_statements(m) and len(encode_message(m)) < MAX_MESSAGE_BYTES


def test_batches_never_exceed_the_limit() -> None:
    bodies = [statement(1, k % 256) for k in range(messages.MAX_BATCHED * 2 + 1)]
    assert [len(b) for b in statement_batches(bodies)] == [64, 64, 1]


def test_a_statements_message_is_checked_statement_by_statement() -> None:
    good = messages.statements_message([statement(2, 0), statement(2, 1)])
    assert messages.check_statements(good)
    bad_entries = [
        {**good["statements"][1], "shard": 256},  # no such shard
        {**good["statements"][1], "sig": b"\x02" * 64},
        {**good["statements"][1], "extra": 1},
        {k: v for k, v in good["statements"][1].items() if k != "mask"},
        "not a statement",
    ]
    for entry in bad_entries:
        assert not messages.check_statements({**good, "statements": [good["statements"][0], entry]})
    assert not messages.check_statements({**good, "statements": []})
    too_many = [good["statements"][0]] * (messages.MAX_BATCHED + 1)
    assert not messages.check_statements({**good, "statements": too_many})
    assert not messages.check_statements({**good, "round": -1})
