"""`Registry`: the one interface the node and the tests use to talk to the JobRegistry.

Synchronous on purpose: web3's async stack is asyncio-only and the node runs
on trio, so the node calls these methods through ``trio.to_thread.run_sync``.
Every method is safe to call from several threads.

Views read the latest block. On chains that mine only when a transaction
arrives (anvil, the embedded chain) a round closed by its timeout shows as
closed once a later block exists: call `settle` when your clock passes the
deadline.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from eth_utils import keccak, to_checksum_address
from web3 import Web3

from gfl.chain import artifact
from gfl.chain.errors import AnnouncementRejected, ChainError, NoRegistry
from gfl.chain.records import (
    ChainEvent,
    JobRecord,
    JobStatus,
    ModelCommitment,
    RoundRecord,
    UpdateCommitment,
)
from gfl.chain.transactions import Tx, TxSender, as_chain_error, is_transient, with_retry
from gfl.identity import NodeIdentity

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Blocks per eth_getLogs request: bounded ranges keep every request cheap.
LOG_CHUNK = 1_000
_UINT32 = 2**32 - 1
_UINT64 = 2**64 - 1


def job_id_for(owner: str, spec_hash: bytes, salt: bytes) -> bytes:
    """The conventional job id: keccak256(owner address ‖ spec hash ‖ salt)."""
    return keccak(
        bytes.fromhex(to_checksum_address(owner)[2:]) + _b32(spec_hash, "spec hash") + bytes(salt)
    )


def spec_hash_of(spec_bytes: bytes) -> bytes:
    """The hash a job registers for its canonical spec bytes (sha256)."""
    return hashlib.sha256(spec_bytes).digest()


class Registry:
    """A JobRegistry contract seen through one node account."""

    def __init__(
        self,
        w3: Web3,
        identity: NodeIdentity,
        registry_address: str,
        *,
        endpoint: str,
        chain_id: int,
        timeout: float,
        on_close: Callable[[], None] | None = None,
        embedded: Any = None,
    ) -> None:
        self._w3 = w3
        self._identity = identity
        self.endpoint = endpoint
        self.chain_id = chain_id
        self._timeout = timeout
        self._on_close = on_close
        self._embedded = embedded
        self.registry_address: str = to_checksum_address(registry_address)
        self._contract = w3.eth.contract(address=self.registry_address, abi=artifact.abi())
        self._sender = TxSender(
            w3, identity.private_key, endpoint=endpoint, chain_id=chain_id, timeout=timeout
        )
        self.account: str = self._sender.address
        self._events_by_topic = {
            bytes(keccak(text=_event_signature(e))): e["name"]
            for e in artifact.abi()
            if e["type"] == "event"
        }

    # -- plumbing -------------------------------------------------------

    def _read(self, fn: Callable[[], T], what: str) -> T:
        try:
            return with_retry(fn, timeout=self._timeout, endpoint=self.endpoint, what=what)
        except ChainError:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            raise as_chain_error(exc, what) from None

    def _write(self, fn_name: str, *args: Any, what: str) -> Tx:
        data = self._contract.encode_abi(fn_name, args=list(args))
        return self._sender.send({"to": self.registry_address, "data": data}, what=what)

    def check_registry(self) -> None:
        """Raise `NoRegistry` unless the address holds the JobRegistry's code."""
        code = self._read(lambda: self._w3.eth.get_code(self.registry_address), "reading code")
        if not code:
            raise NoRegistry(
                f"no contract at {self.registry_address} on {self.endpoint}; "
                "deploy one with `gfl chain deploy`"
            )
        expected = artifact.load_artifact()["deployedBytecode"]
        if bytes(code) != bytes.fromhex(expected[2:]):
            raise NoRegistry(
                f"the contract at {self.registry_address} on {self.endpoint} is not a JobRegistry "
                "of this version"
            )

    def for_identity(self, identity: NodeIdentity) -> Registry:
        """Another account on the same connection (funded on the embedded chain)."""
        if self._embedded is not None:
            self._embedded.fund(identity.eth_address)
        return Registry(
            self._w3,
            identity,
            self.registry_address,
            endpoint=self.endpoint,
            chain_id=self.chain_id,
            timeout=self._timeout,
            embedded=self._embedded,
        )

    def close(self) -> None:
        """Release the connection (and the embedded chain, if this registry owns it)."""
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- chain ----------------------------------------------------------

    def block_number(self) -> int:
        return self._read(lambda: self._w3.eth.block_number, "reading the block number")

    def balance(self, address: str | None = None) -> int:
        addr = to_checksum_address(address or self.account)
        return self._read(lambda: self._w3.eth.get_balance(addr), "reading a balance")

    def advance_time(self, seconds: int) -> None:
        """Dev chains only: move block time forward and mine a block."""
        if self._embedded is not None:
            self._embedded.advance_time(seconds)
            return
        provider = self._w3.provider
        for method, params in (("evm_increaseTime", [int(seconds)]), ("evm_mine", [])):
            response = self._read(
                lambda m=method, p=params: provider.make_request(m, p), "advancing time"
            )
            if isinstance(response, dict) and response.get("error"):
                raise ChainError(f"{self.endpoint} does not support time travel ({method})")

    # -- writes ---------------------------------------------------------

    def make_job_id(self, spec_hash: bytes, salt: bytes) -> bytes:
        """A job id bound to this account (see `job_id_for`)."""
        return job_id_for(self.account, spec_hash, salt)

    def register_job(
        self, job_id: bytes, spec_hash: bytes, rounds: int, min_updates: int, round_timeout: int
    ) -> Tx:
        """Register a job owned by this account; round 0 opens in the mined block."""
        _uint(rounds, _UINT32, "rounds")
        _uint(min_updates, _UINT32, "min_updates")
        _uint(round_timeout, _UINT64, "round_timeout")
        return self._write(
            "register",
            _b32(job_id, "job id"),
            _b32(spec_hash, "spec hash"),
            rounds,
            min_updates,
            round_timeout,
            what="registering a job",
        )

    def join_job(self, job_id: bytes) -> Tx:
        return self._write("join", _b32(job_id, "job id"), what="joining a job")

    def commit_update(self, job_id: bytes, round: int, update_hash: bytes, samples: int) -> Tx:
        _uint(round, _UINT32, "round")
        _uint(samples, _UINT64, "samples")
        return self._write(
            "commitUpdate",
            _b32(job_id, "job id"),
            round,
            _b32(update_hash, "update hash"),
            samples,
            what="committing an update",
        )

    def commit_model(self, job_id: bytes, round: int, model_hash: bytes) -> Tx:
        _uint(round, _UINT32, "round")
        return self._write(
            "commitModel",
            _b32(job_id, "job id"),
            round,
            _b32(model_hash, "model hash"),
            what="committing a model",
        )

    def cancel_job(self, job_id: bytes) -> Tx:
        return self._write("cancel", _b32(job_id, "job id"), what="cancelling a job")

    def settle(self, job_id: bytes) -> Tx:
        """Record a round closed by its timeout now (anyone may; harmless if nothing is due)."""
        return self._write("settle", _b32(job_id, "job id"), what="settling a job")

    # -- views ----------------------------------------------------------

    def get_job(self, job_id: bytes) -> JobRecord | None:
        """The job as of the latest block, or None when the chain does not hold it."""
        jid = _b32(job_id, "job id")
        r = self._read(lambda: self._contract.functions.getJob(jid).call(), "reading a job")
        status = JobStatus(r[2])
        if status is JobStatus.NONE:
            return None
        return JobRecord(jid, r[0], bytes(r[1]), status, r[3], r[4], r[5], r[6], r[7])

    def get_round(self, job_id: bytes, round: int) -> RoundRecord:
        """Round `round`: its updates and model commitments in chain order, one block's view."""
        jid = _b32(job_id, "job id")
        _uint(round, _UINT32, "round")
        fns = self._contract.functions

        def read() -> RoundRecord:
            block = self._w3.eth.block_number
            info = fns.getRound(jid, round).call(block_identifier=block)
            parts, hashes, samples = fns.getUpdates(jid, round).call(block_identifier=block)
            mparts, mhashes = fns.getModels(jid, round).call(block_identifier=block)
            return RoundRecord(
                job_id=jid,
                round=round,
                opens_at=info[0],
                closed_at=info[1] if info[2] else None,
                closed=info[2],
                updates=tuple(
                    UpdateCommitment(p, bytes(h), s)
                    for p, h, s in zip(parts, hashes, samples, strict=True)
                ),
                models=tuple(
                    ModelCommitment(p, bytes(h)) for p, h in zip(mparts, mhashes, strict=True)
                ),
            )

        return self._read(read, "reading a round")

    def participants(self, job_id: bytes) -> list[str]:
        jid = _b32(job_id, "job id")
        return self._read(
            lambda: self._contract.functions.getParticipants(jid).call(), "reading participants"
        )

    def is_participant(self, job_id: bytes, address: str) -> bool:
        jid, addr = _b32(job_id, "job id"), to_checksum_address(address)
        return self._read(
            lambda: self._contract.functions.isParticipant(jid, addr).call(),
            "reading a participant",
        )

    def has_committed(self, job_id: bytes, round: int, address: str) -> tuple[bool, bool]:
        """(committed an update, committed a model) for `address` in `round`."""
        jid, addr = _b32(job_id, "job id"), to_checksum_address(address)
        r = self._read(
            lambda: self._contract.functions.hasCommitted(jid, round, addr).call(),
            "reading a commitment",
        )
        return bool(r[0]), bool(r[1])

    def verify_announcement(
        self, job_id: bytes, spec_bytes: bytes, signer_address: str
    ) -> JobRecord:
        """The chain's record of a gossiped job, or `AnnouncementRejected` saying why not."""
        try:
            jid = _b32(job_id, "job id")
        except ChainError:
            raise AnnouncementRejected("the job id is not 32 bytes") from None
        job = self.get_job(jid)
        if job is None:
            raise AnnouncementRejected(f"the chain holds no job 0x{jid.hex()}")
        if job.status is JobStatus.CANCELLED:
            raise AnnouncementRejected(f"job 0x{jid.hex()} was cancelled by its owner")
        if job.spec_hash != spec_hash_of(spec_bytes):
            raise AnnouncementRejected(
                f"the spec does not match the hash registered for job 0x{jid.hex()}"
            )
        try:
            signer = to_checksum_address(signer_address)
        except ValueError:
            raise AnnouncementRejected("the signer is not an Ethereum address") from None
        if signer != job.owner:
            raise AnnouncementRejected(
                f"announced by {signer}, but job 0x{jid.hex()} belongs to {job.owner}"
            )
        return job

    # -- events ---------------------------------------------------------

    def poll_events(
        self, from_block: int, to_block: int | None = None
    ) -> tuple[list[ChainEvent], int]:
        """Registry events in blocks [from_block, to_block or latest], and the next cursor.

        Reads bounded block ranges, never the whole history: call it again with
        the returned cursor.
        """
        latest = self.block_number() if to_block is None else to_block
        events: list[ChainEvent] = []
        start = max(0, from_block)
        while start <= latest:
            end = min(latest, start + LOG_CHUNK - 1)
            params = {"address": self.registry_address, "fromBlock": start, "toBlock": end}
            logs = self._read(lambda p=params: self._w3.eth.get_logs(p), "reading events")
            events.extend(self._decode(log_) for log_ in logs)
            start = end + 1
        return [e for e in events if e is not None], max(from_block, latest + 1)

    def _decode(self, raw: Any) -> ChainEvent | None:
        name = self._events_by_topic.get(bytes(raw["topics"][0])) if raw["topics"] else None
        if name is None:
            return None
        decoded = self._contract.events[name]().process_log(raw)
        args = {
            k: bytes(v) if isinstance(v, (bytes, bytearray)) else v
            for k, v in decoded["args"].items()
        }
        return ChainEvent(
            name=name,
            job_id=args["jobId"],
            args=args,
            block_number=raw["blockNumber"],
            log_index=raw["logIndex"],
            tx_hash=bytes(raw["transactionHash"]),
        )


def _event_signature(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"


def _b32(value: bytes, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise ChainError(f"the {what} must be 32 bytes")
    return bytes(value)


def _uint(value: int, limit: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ChainError(f"{what} must be an integer in [0, {limit}]")
