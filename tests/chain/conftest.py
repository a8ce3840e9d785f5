"""Chain fixtures: the same tests run against every backend.

- ``embedded``: eth-tester + py-evm in this process;
- ``served``: the embedded chain behind HTTP JSON-RPC, reached by the rpc backend;
- ``anvil``: the anvil binary from contracts/node_modules (skipped when missing,
  except under CI, where a missing anvil fails the run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from skip_policy import in_ci

from gfl.chain import ContractRevert, JobParams, Registry, deploy_registry, open_chain
from gfl.chain.devchain import (
    ANVIL_DEV_KEY,
    EMBEDDED_DEV_KEY,
    find_anvil,
    fund,
    serve_embedded,
    start_anvil,
)
from gfl.chain.proofs import spec_hash_of
from gfl.identity import NodeIdentity

#: Small enough that a test account pays many bonds, large enough to see in a balance.
BOND = 10**15
MODEL0 = b"\x0e" * 32
BACKENDS = ["embedded", "served", pytest.param("anvil", marks=pytest.mark.anvil)]


def set_balance(url: str, address: str, wei: int) -> None:
    """anvil_setBalance: fund an account without a transaction."""
    from web3 import HTTPProvider, Web3

    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 10}))
    response = w3.provider.make_request("anvil_setBalance", [address, hex(wei)])
    assert "error" not in response, response


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
        fund(url, key, [deployer.eth_address], 10**18)
        address = deploy_registry(url, deployer, timeout=10)

        def make(identity: NodeIdentity) -> Registry:
            if backend == "anvil":  # anvil mints: no dev account drained by many tests
                set_balance(url, identity.eth_address, 10**20)
            else:
                fund(url, key, [identity.eth_address], 10**20)
            registry = open_chain(url, identity, registry_address=address, timeout=10)
            opened.append(registry)
            return registry

        env = ChainEnv(backend, make(deployer), make, url)
    yield env
    for registry in opened:
        registry.close()


def job_params(registry: Registry, **overrides: object) -> JobParams:
    """Test defaults: 2 rounds of up to 8 members, 2 updates, a day to live."""
    fields: dict[str, object] = {
        "rounds": 2,
        "min_updates": 2,
        "max_participants": 8,
        "round_timeout": 600,
        "vote_timeout": 300,
        "deadline": registry.chain_time() + 86_400,
        "bond": BOND,
    }
    fields.update(overrides)
    return JobParams(**fields)  # type: ignore[arg-type]


def new_job(owner: Registry, *, spec: bytes | None = None, **overrides: object) -> bytes:
    """Register a job of `owner` (a fresh salt and spec unless given); returns its id."""
    spec_hash = spec_hash_of(spec if spec is not None else os.urandom(16))
    job_id, _ = owner.register_job(
        os.urandom(32), spec_hash, MODEL0, job_params(owner, **overrides)
    )
    return job_id


def refused(name: str):  # a pytest.raises context
    """Expect the registry to refuse with custom error `name`."""
    return pytest.raises(ContractRevert, match=rf"\b{name}\(")


def h(n: int) -> bytes:
    """A recognisable 32-byte hash."""
    return bytes([n]) * 32
