"""A library method that reads some of its module's global names from us instead.

py-libp2p calls several of its helpers by their module-level name from inside long
methods (``YamuxStream(...)`` in ``Yamux.handle_incoming``, ``signature_validator``
in ``Pubsub.push_msg``, ...). Rebinding those names in the library's modules would
change every host in the process; copying the methods would copy hundreds of lines.
`with_globals` makes a copy of one function object (same code, same defaults and
closure, so zero-argument ``super()`` still works) whose global namespace is a
snapshot of its module's with the given names replaced; a subclass puts the copy
in its class body. The library and every other user of it are left untouched.

The snapshot is taken when the subclass is defined: a module global the library
rebinds later is not seen by the copy (py-libp2p 0.8.1 rebinds none of them).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def with_globals(func: F, **names: object) -> F:
    """A copy of ``func`` whose global ``names`` are ours (each must be one it uses)."""
    if not isinstance(func, types.FunctionType):
        raise TypeError(f"{func!r} is not a plain function")
    used = _global_names(func.__code__)
    unused = sorted(set(names) - used)
    if unused:  # a name the code does not use: a library change or a typo
        raise ValueError(f"{func.__qualname__} does not use {', '.join(unused)}")
    namespace = {**func.__globals__, **names}
    copy = types.FunctionType(
        func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__
    )
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__qualname__ = func.__qualname__
    copy.__doc__ = func.__doc__
    copy.__annotations__ = dict(func.__annotations__)
    copy.__module__ = func.__module__
    copy.__wrapped__ = func  # type: ignore[attr-defined]
    return copy  # type: ignore[return-value]


def _global_names(code: types.CodeType) -> set[str]:
    """The names ``code`` and the functions nested in it may look up as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names
