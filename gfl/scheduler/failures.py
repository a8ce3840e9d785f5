"""Why a job failed, in one sentence for its operator.

A runner's error reaches the job service wrapped in trio's exception groups (one per
nursery it crossed), whose own message ("Exceptions from Trio nursery (1 sub-exception)")
says nothing. The job's ``error`` field, its ``job.error`` event and the node's log line
carry the underlying error instead: its own message for a `GflError` (written for the
user; chain errors name the fix), the type and message for anything else.
"""

from __future__ import annotations

import trio

from gfl.errors import GflError

MAX_REASON = 400
_NOT_FAILURES = (trio.Cancelled, KeyboardInterrupt, SystemExit, GeneratorExit)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``'s (nested) groups, in order; ``exc`` when not a group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def failure(exc: BaseException) -> BaseException | None:
    """The error that ended the job: the first leaf that is not a cancellation, a user
    error first (None when only cancellations are inside)."""
    found = [e for e in leaves(exc) if not isinstance(e, _NOT_FAILURES)]
    ours = [e for e in found if isinstance(e, GflError)]
    return (ours or found or [None])[0]


def reason(exc: BaseException) -> str:
    """One sentence saying why the job failed."""
    leaf = failure(exc) or exc
    text = " ".join(str(leaf).split())
    if isinstance(leaf, GflError) and text:
        pass
    elif isinstance(leaf, OSError) and leaf.strerror:
        where = f" ({leaf.filename})" if leaf.filename else ""
        text = f"{leaf.strerror}{where}"
    elif isinstance(leaf, MemoryError):
        text = "out of memory"
    else:
        what = f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__
        text = f"unexpected {what} (the traceback is in logs/node.log)"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"
