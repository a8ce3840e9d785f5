"""Chain fixtures: the same tests run against every backend.

- ``embedded``: eth-tester + py-evm in this process;
- ``served``: the embedded chain behind HTTP JSON-RPC, reached by the rpc backend;
- ``anvil``: the anvil binary from contracts/node_modules (skipped when missing,
  except under CI, where a missing anvil fails the run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from skip_policy import in_ci

from gfl.chain import Registry, deploy_registry, open_chain
from gfl.chain.devchain import (
    ANVIL_DEV_KEY,
    EMBEDDED_DEV_KEY,
    find_anvil,
    fund,
    serve_embedded,
    start_anvil,
)
from gfl.identity import NodeIdentity

BACKENDS = ["embedded", "served", pytest.param("anvil", marks=pytest.mark.anvil)]


def require_anvil() -> str:
    binary = find_anvil()
    if binary is None:
        if in_ci():
            pytest.fail("anvil is missing: CI must run `npm ci` in contracts/")
        pytest.skip("anvil not installed (run `npm ci` in contracts/)")
    return binary


@pytest.fixture(scope="session")
def anvil() -> Iterator[object]:
    require_anvil()
    proc = start_anvil()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def served() -> Iterator[object]:
    server = serve_embedded()
    yield server
    server.close()


@dataclass
class ChainEnv:
    """A fresh registry on one backend; `node()` gives another funded account on it."""

    backend: str
    first: Registry
    _make: Callable[[NodeIdentity], Registry]
    url: str

    def node(self) -> Registry:
        return self._make(NodeIdentity.generate())


@pytest.fixture(params=BACKENDS)
def chain(request: pytest.FixtureRequest) -> Iterator[ChainEnv]:
    backend = request.param
    opened: list[Registry] = []
    if backend == "embedded":
        first = open_chain("embedded", NodeIdentity.generate(), timeout=10)
        opened.append(first)

        def make(identity: NodeIdentity) -> Registry:
            return first.for_identity(identity)

        env = ChainEnv(backend, first, make, "embedded")
    else:
        if backend == "anvil":
            server = request.getfixturevalue("anvil")
            key = ANVIL_DEV_KEY
        else:
            server = request.getfixturevalue("served")
            key = EMBEDDED_DEV_KEY
        url = server.url
        deployer = NodeIdentity.generate()
        fund(url, key, [deployer.eth_address], 10**20)
        address = deploy_registry(url, deployer, timeout=10)

        def make(identity: NodeIdentity) -> Registry:
            fund(url, key, [identity.eth_address], 10**20)
            registry = open_chain(url, identity, registry_address=address, timeout=10)
            opened.append(registry)
            return registry

        env = ChainEnv(backend, make(deployer), make, url)
    yield env
    for registry in opened:
        registry.close()
