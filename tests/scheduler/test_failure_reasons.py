"""A failed job's reason: the error under trio's exception groups, in one sentence."""

from __future__ import annotations

import pytest
import trio

from gfl.chain.errors import InsufficientFunds
from gfl.scheduler.checkpoints import CheckpointError
from gfl.scheduler.failures import failure, reason


async def _nursery_error(exc: BaseException) -> BaseException:
    """What a job's task raises when ``exc`` ends it two nurseries deep."""

    async def fail() -> None:
        await trio.sleep(0)
        raise exc

    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(trio.sleep_forever)
            async with trio.open_nursery() as inner:
                inner.start_soon(fail)
    except BaseException as got:
        return got
    raise AssertionError("no error")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (CheckpointError("cannot write the checkpoint x: Not a directory"), "cannot write"),
        (InsufficientFunds("account 0xab has 0 ETH; fund it with gfl chain fund"), "fund it"),
        (FileNotFoundError(2, "No such file or directory", "/x/y"), "No such file or directory"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied\n(8x64 and 10x16)"), "mat1"),
    ],
)
def test_the_reason_is_the_error_under_the_groups(error, expected):
    got = trio.run(_nursery_error, error)
    assert isinstance(got, BaseExceptionGroup)
    assert "Exceptions from Trio nursery" in str(got)  # what the job showed before
    why = reason(got)
    assert expected in why and "Trio nursery" not in why and "\n" not in why
    assert failure(got) is error


def test_an_unexpected_error_names_its_type_and_where_the_traceback_is():
    why = reason(ExceptionGroup("x", [KeyError("weights")]))
    assert why == "unexpected KeyError: 'weights' (the traceback is in logs/node.log)"


def test_a_user_error_wins_over_a_cancellation_beside_it():
    group = BaseExceptionGroup("x", [trio.Cancelled._create(), CheckpointError("disk full")])
    assert reason(group) == "disk full"
    assert failure(BaseExceptionGroup("y", [trio.Cancelled._create()])) is None
