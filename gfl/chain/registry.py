"""`Registry`: the one interface the node and the tests use to talk to the JobRegistry.

Synchronous on purpose: web3's async stack is asyncio-only and the node runs
on trio, so the node calls these methods through ``trio.to_thread.run_sync``.
Every method is safe to call from several threads.

Views read the latest block and apply due transitions without writing them. On
chains that mine only when a transaction arrives (anvil, the embedded chain) a
round closed by its timeout shows as closed once a later block exists: call
`settle` when your clock passes the deadline. Rounds themselves live in events:
`poll_events` reads them, `verify_log` checks them against the contract's
running hash (docs/contract.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from eth_typing import ChecksumAddress, HexStr
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.types import BlockIdentifier, FilterParams, RPCEndpoint, TopicFilter, Wei

from gfl.chain import artifact, proofs
from gfl.chain.errors import AnnouncementRejected, ChainError, NoRegistry
from gfl.chain.logchain import HASH_BYTES, decode_log, verify_log_chain
from gfl.chain.records import ChainEvent, JobParams, JobRecord, JobStatus, MemberRecord
from gfl.chain.transactions import Tx, TxSender, as_chain_error, is_transient, with_retry
from gfl.fl.rounds import NO_SHARDS, Vote
from gfl.identity import NodeIdentity

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Blocks per eth_getLogs request: bounded ranges keep every request cheap.
LOG_CHUNK = 1_000
#: The most members one `members` call returns (the contract's MAX_PAGE).
MAX_PAGE = 1_000
_UINT32 = 2**32 - 1
_UINT64 = 2**64 - 1
_JOB_FIELDS = [
    c["name"]
    for e in artifact.abi()
    if e.get("name") == "getJob"
    for c in e["outputs"][0]["components"]
]


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
        self.registry_address: ChecksumAddress = to_checksum_address(registry_address)
        self._contract = w3.eth.contract(address=self.registry_address, abi=artifact.abi())
        self._sender = TxSender(
            w3, identity.private_key, endpoint=endpoint, chain_id=chain_id, timeout=timeout
        )
        self.account: str = self._sender.address

    # -- plumbing -------------------------------------------------------

    def _read(self, fn: Callable[[], T], what: str) -> T:
        try:
            return with_retry(
                fn, timeout=self._timeout, endpoint=self.endpoint, what=what, reading=True
            )
        except ChainError:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            raise as_chain_error(exc, what) from None

    def _call(self, fn_name: str, *args: Any, what: str) -> Any:
        fn = getattr(self._contract.functions, fn_name)
        return self._read(lambda: fn(*args).call(), what)

    def _write(self, fn_name: str, *args: Any, what: str, value: int = 0) -> Tx:
        data = self._contract.encode_abi(fn_name, args=list(args))
        return self._sender.send(
            {"to": self.registry_address, "data": data, "value": Wei(value)}, what=what
        )

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

    def chain_time(self) -> int:
        """The latest block's timestamp."""
        block = self._read(lambda: self._w3.eth.get_block("latest"), "reading the latest block")
        return int(block["timestamp"])

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
                partial(provider.make_request, RPCEndpoint(method), params), "advancing time"
            )
            if isinstance(response, dict) and response.get("error"):
                raise ChainError(f"{self.endpoint} does not support time travel ({method})")

    # -- jobs -------------------------------------------------------------

    def job_id_for(self, owner: str, salt: bytes, spec_hash: bytes) -> bytes:
        """The id `register` gives `owner`'s job with this salt and spec hash."""
        return proofs.job_id_for(self.chain_id, self.registry_address, owner, salt, spec_hash)

    def register_job(
        self, salt: bytes, spec_hash: bytes, model0_hash: bytes, params: JobParams
    ) -> tuple[bytes, Tx]:
        """Register a job owned by this account; round 0 starts collecting in the mined block."""
        job_id = self.job_id_for(self.account, salt, spec_hash)
        tx = self._write(
            "register",
            _b32(salt, "salt"),
            _b32(spec_hash, "spec hash"),
            _b32(model0_hash, "model0 hash"),
            params.as_tuple(),
            what="registering a job",
        )
        return job_id, tx

    def cancel_job(self, job_id: bytes) -> Tx:
        return self._write("cancel", _b32(job_id, "job id"), what="cancelling a job")

    def expire_job(self, job_id: bytes) -> Tx:
        return self._write("expire", _b32(job_id, "job id"), what="expiring a job")

    def settle(self, job_id: bytes) -> Tx:
        """Record due transitions now (anyone may; harmless if nothing is due)."""
        return self._write("settle", _b32(job_id, "job id"), what="settling a job")

    # -- membership -------------------------------------------------------

    def join_job(
        self,
        job_id: bytes,
        proof: Sequence[bytes] = (),
        value: int | None = None,
        mask_key: bytes = bytes(32),
    ) -> Tx:
        """Join with the job's bond (`value` defaults to it); `proof` for an allow-list;
        `mask_key` the member's secure-aggregation public key (zeros when unused)."""
        jid = _b32(job_id, "job id")
        if value is None:
            job = self.get_job(jid)
            value = job.bond if job is not None else 0
        return self._write(
            "join",
            jid,
            [_b32(p, "proof node") for p in proof],
            _b32(mask_key, "masking key"),
            value=value,
            what="joining a job",
        )

    def deal(self, job_id: bytes, round: int, blob: bytes) -> Tx:
        """Publish this member's shares blob for the collecting round (secure aggregation)."""
        if not isinstance(blob, bytes) or not 1 <= len(blob) <= 65535:
            raise ChainError("a shares blob is 1..65535 bytes")
        return self._write(
            "deal",
            _b32(job_id, "job id"),
            _uint(round, 2**32 - 1, "round"),
            blob,
            what="publishing shares",
        )

    def leave_job(self, job_id: bytes) -> Tx:
        return self._write("leave", _b32(job_id, "job id"), what="leaving a job")

    def eject(self, job_id: bytes, member: str) -> Tx:
        """Eject a member that missed the job's maxMissed rounds in a row."""
        return self._write(
            "eject", _b32(job_id, "job id"), _address(member), what="ejecting a member"
        )

    def withdraw(self, job_id: bytes) -> Tx:
        return self._write("withdraw", _b32(job_id, "job id"), what="withdrawing a bond")

    # -- rounds -----------------------------------------------------------

    def commit_update(self, job_id: bytes, round: int, update_hash: bytes, samples: int) -> Tx:
        return self._write(
            "commitUpdate",
            _b32(job_id, "job id"),
            _uint(round, _UINT32, "round"),
            _b32(update_hash, "update hash"),
            _uint(samples, _UINT64, "samples"),
            what="committing an update",
        )

    def vote(
        self,
        job_id: bytes,
        round: int,
        model_hash: bytes,
        mask: bytes = b"",
        shards_hash: bytes = NO_SHARDS,
    ) -> Tx:
        """Vote for round `round`'s model computed without the updates `mask` excludes
        (from the reduced shards `shards_hash` names, in a sharded round)."""
        return self._write(
            "vote",
            _b32(job_id, "job id"),
            _uint(round, _UINT32, "round"),
            _b32(model_hash, "model hash"),
            bytes(mask),
            _b32(shards_hash, "shards hash"),
            what="voting",
        )

    def commit_and_vote(
        self,
        job_id: bytes,
        round: int,
        update_hash: bytes,
        samples: int,
        model_hash: bytes,
        mask: bytes = b"",
        shards_hash: bytes = NO_SHARDS,
    ) -> Tx:
        """The vote on round - 1 and the update for `round` in one transaction."""
        return self._write(
            "commitAndVote",
            _b32(job_id, "job id"),
            _uint(round, _UINT32, "round"),
            _b32(update_hash, "update hash"),
            _uint(samples, _UINT64, "samples"),
            _b32(model_hash, "model hash"),
            bytes(mask),
            _b32(shards_hash, "shards hash"),
            what="committing an update and voting",
        )

    # -- evidence ---------------------------------------------------------

    def sign_update(self, job_id: bytes, round: int, update_hash: bytes) -> bytes:
        """This account's signed statement for an update it announces."""
        return proofs.sign_update_statement(
            self._identity.private_key,
            self.chain_id,
            self.registry_address,
            job_id,
            round,
            update_hash,
        )

    def sign_shard(
        self, job_id: bytes, round: int, shard: int, reduced_hash: bytes, mask: bytes
    ) -> bytes:
        """This account's signed statement for a reduced shard it publishes as aggregator."""
        return proofs.sign_shard_statement(
            self._identity.private_key,
            self.chain_id,
            self.registry_address,
            job_id,
            round,
            shard,
            reduced_hash,
            mask,
        )

    def report_equivocation(
        self,
        job_id: bytes,
        round: int,
        hash_a: bytes,
        sig_a: bytes,
        hash_b: bytes,
        sig_b: bytes,
    ) -> Tx:
        """Two signed statements of one member for different updates of one round."""
        return self._write(
            "reportEquivocation",
            _b32(job_id, "job id"),
            _uint(round, _UINT32, "round"),
            _b32(hash_a, "update hash"),
            bytes(sig_a),
            _b32(hash_b, "update hash"),
            bytes(sig_b),
            what="reporting an equivocation",
        )

    def slash_dissenter(
        self,
        job_id: bytes,
        round: int,
        member: str,
        theirs: Vote,
        final: Vote,
    ) -> Tx:
        """`member` voted ``theirs`` on a round that finalized ``final`` (same mask)."""
        return self._write(
            "slashDissenter",
            _b32(job_id, "job id"),
            _uint(round, _UINT32, "round"),
            _address(member),
            _b32(theirs.model_hash, "model hash"),
            bytes(theirs.mask),
            _b32(theirs.shards_hash, "shards hash"),
            _b32(final.model_hash, "model hash"),
            _b32(final.shards_hash, "shards hash"),
            what="slashing a dissenter",
        )

    def slash_shard_lie(
        self,
        job_id: bytes,
        round: int,
        shard: int,
        reduced_hash: bytes,
        sig: bytes,
        final: Vote,
        shard_hashes: Sequence[bytes],
    ) -> Tx:
        """A signed statement for shard `shard` over the finalized mask whose hash is not
        the finalized candidate's (``shard_hashes``: the finalized reduced shards)."""
        return self._write(
            "slashShardLie",
            _b32(job_id, "job id"),
            _uint(round, _UINT32, "round"),
            _uint(shard, _UINT32, "shard"),
            _b32(reduced_hash, "shard hash"),
            bytes(sig),
            _b32(final.model_hash, "model hash"),
            bytes(final.mask),
            [_b32(h, "shard hash") for h in shard_hashes],
            what="slashing a lying aggregator",
        )

    def eject_withholder(self, job_id: bytes, round: int, member: str, final: Vote) -> Tx:
        """The finalized candidate ``final`` of `round` excludes `member`'s update."""
        return self._write(
            "ejectWithholder",
            _b32(job_id, "job id"),
            _uint(round, _UINT32, "round"),
            _address(member),
            _b32(final.model_hash, "model hash"),
            bytes(final.mask),
            _b32(final.shards_hash, "shards hash"),
            what="ejecting a withholder",
        )

    # -- views ----------------------------------------------------------

    def get_job(self, job_id: bytes) -> JobRecord | None:
        """The job as of the latest block, or None when the chain does not hold it."""
        jid = _b32(job_id, "job id")
        v = dict(zip(_JOB_FIELDS, self._call("getJob", jid, what="reading a job"), strict=True))
        return None if v["status"] == JobStatus.NONE else JobRecord.from_view(jid, v)

    def member(self, job_id: bytes, address: str) -> MemberRecord:
        jid, addr = _b32(job_id, "job id"), _address(address)
        return MemberRecord.from_view(self._call("member", jid, addr, what="reading a member"))

    def members(
        self, job_id: bytes, offset: int = 0, limit: int = 500
    ) -> tuple[list[MemberRecord], int]:
        """Up to `limit` (at most MAX_PAGE) members in join order from `offset`, and how many
        ever joined. The default page costs ~4M gas to read, far below endpoints' call caps."""
        jid = _b32(job_id, "job id")
        page, total = self._call(
            "members",
            jid,
            _uint(offset, 2**256 - 1, "offset"),
            _uint(limit, 2**256 - 1, "limit"),
            what="reading members",
        )
        return [MemberRecord.from_view(v) for v in page], total

    def final_key(self, job_id: bytes, round: int) -> bytes | None:
        """The finalized key prefix (10 bytes) of `round` where the contract keeps it as
        evidence, else None."""
        key = self._call(
            "finalKey",
            _b32(job_id, "job id"),
            _uint(round, _UINT32, "round"),
            what="reading a key",
        )
        return bytes(key) if any(key) else None

    def tally(self, job_id: bytes, round: int, key: bytes) -> int:
        count: int = self._call(
            "tally",
            _b32(job_id, "job id"),
            _uint(round, _UINT32, "round"),
            _b32(key, "key"),
            what="reading a tally",
        )
        return count

    def log_head(self, job_id: bytes, block: BlockIdentifier = "latest") -> tuple[int, bytes]:
        """(number of the job's events, running hash over them)."""
        jid = _b32(job_id, "job id")
        seq, h = self._read(
            lambda: self._contract.functions.logHead(jid).call(block_identifier=block),
            "reading a log head",
        )
        return seq, h.to_bytes(HASH_BYTES, "big")

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
        if job.status in (JobStatus.CANCELLED, JobStatus.EXPIRED):
            raise AnnouncementRejected(f"job 0x{jid.hex()} is {job.status.name.lower()}")
        if job.spec_hash != proofs.spec_hash_of(spec_bytes):
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
        self, from_block: int, to_block: int | None = None, *, job_id: bytes | None = None
    ) -> tuple[list[ChainEvent], int]:
        """Registry events (of one job, if given) in blocks [from_block, to_block or latest],
        and the next cursor.

        Reads bounded block ranges, never the whole history: call it again with
        the returned cursor.
        """
        latest = self.block_number() if to_block is None else to_block
        topics: list[TopicFilter] | None = None
        if job_id is not None:
            topics = [None, HexStr("0x" + _b32(job_id, "job id").hex())]
        events: list[ChainEvent] = []
        start = max(0, from_block)
        while start <= latest:
            end = min(latest, start + LOG_CHUNK - 1)
            params: FilterParams = {
                "address": self.registry_address,
                "fromBlock": start,
                "toBlock": end,
            }
            if topics:
                params["topics"] = topics
            logs = self._read(partial(self._w3.eth.get_logs, params), "reading events")
            events.extend(e for e in map(decode_log, logs) if e is not None)
            start = end + 1
        return events, max(from_block, latest + 1)

    def verify_log(self, job_id: bytes, from_block: int = 0) -> list[ChainEvent]:
        """All of a job's events, checked against its running hash (`LogChainBroken` if not)."""
        block = self.block_number()
        events, _ = self.poll_events(from_block, block, job_id=job_id)
        seq, head = self.log_head(job_id, block)
        verify_log_chain(events, seq, head)
        return events


def _b32(value: bytes | None, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise ChainError(f"the {what} must be 32 bytes")
    return bytes(value)


def _uint(value: int, limit: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ChainError(f"{what} must be an integer in [0, {limit}]")
    return value


def _address(value: str) -> str:
    try:
        return to_checksum_address(value)
    except (ValueError, TypeError):
        raise ChainError(f"{value!r} is not an Ethereum address") from None
