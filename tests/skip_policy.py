"""Under CI a skipped test is a failed test, unless it is on the short list below.

A skip says "this was not checked". Locally that is often fine (no root, no anvil, no
MNIST copy); in CI it hides the very failure the test exists for, so every skip there
fails the run with its reason, and the set-up is fixed instead. CI is any of
``CI=1/true/yes`` (case-insensitive), so ``CI=1 make test`` and ``CI=true make test``
behave the same; ``.ci/run`` sets ``CI=true`` itself.

Loaded by tests/conftest.py (its hooks are imported there) or with ``-p skip_policy``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest

# (test id pattern, skip reason pattern): skips that CI may keep, each for a reason that
# no set-up of a CI machine can remove. CI here runs as root, so tests that need root
# (a tmpfs, network namespaces) are not on it: they must run there.
ALLOWED: tuple[tuple[str, str], ...] = (
    # a GPU is hardware: CI machines have none, and the CPU path is tested everywhere
    (r"(^|/)test_trainer\.py::", r"needs a CUDA GPU"),
    # measures glibc's allocator; on another libc there is nothing to measure
    (r"(^|/)test_node_process\.py::", r"glibc's malloc only"),
)


def in_ci() -> bool:
    """True when the CI variable is set to 1, true or yes (any case)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def allowed(nodeid: str, reason: str) -> bool:
    """True when a skip of test `nodeid` for `reason` may stand under CI."""
    return any(re.search(t, nodeid) and re.search(r, reason) for t, r in ALLOWED)


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _reason(report.longrepr)
    if not allowed(report.nodeid, reason):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI: {reason}\n(a skip hides whatever this test checks: fix the "
            "set-up, or add the test to ALLOWED in tests/skip_policy.py with a reason)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        _fail(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():  # a module skipped as a whole (allow_module_level)
        _fail(report)
