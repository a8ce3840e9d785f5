"""What the control API returns, as TypedDicts (the node's JSON, key for key).

They describe the answers of today's node (``gfl/node/api``, the job service's
read models); a key marked `NotRequired` is one an older or job-less node may
leave out. They are type hints only: the client does not check answers at run time.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

__all__ = [
    "ApiAddress",
    "BundleBlob",
    "ChainInfo",
    "Commitment",
    "Event",
    "JobBundle",
    "JobDetail",
    "JobReport",
    "JobServiceStatus",
    "JobSummary",
    "NodeStatus",
    "PeerInfo",
    "RoundCheck",
    "RoundMetrics",
    "RoundRecord",
]


class PeerInfo(TypedDict):
    """A connected libp2p peer (``GET /peers``, ``status["peers"]``)."""

    peer_id: str
    eth_address: str | None
    addrs: list[str]
    connected_since: float
    direction: str
    msgs_in: int


class ChainInfo(TypedDict):
    """The node's chain backend."""

    endpoint: str
    chain_id: int | None
    block: int | None
    registry: str | None
    account: str | None
    balance_wei: NotRequired[int | None]


class ApiAddress(TypedDict):
    host: str
    port: int


class JobServiceStatus(TypedDict):
    """``status["jobs"]``: counts by status, and counters whose names keep their prefix
    (``"rejected.bad_signature"``, ``"alarms.divergence"``)."""

    jobs: dict[str, int]
    rejected: dict[str, int]
    alarms: dict[str, int]
    ready: NotRequired[bool]
    running: NotRequired[int]


class NodeStatus(TypedDict):
    """``GET /status``."""

    version: str
    name: str
    address: str
    peer_id: str
    listen_addrs: list[str]
    peers: list[PeerInfo]
    uptime_s: float
    chain: ChainInfo | None
    api: ApiAddress
    home: str
    pid: int
    net: NotRequired[dict[str, Any] | None]
    jobs: NotRequired[JobServiceStatus | None]


class JobSummary(TypedDict):
    """One job as ``GET /jobs`` lists it (also the answer to publish, join, leave, cancel)."""

    job_id: str
    name: str
    owner: str
    status: str  # queued, active, finished, cancelled, expired, error
    role: str  # participant, observer, owner
    rounds: int
    round: int
    model_hash: str | None
    spec_hash: str
    error: str | None
    created_at: float
    updated_at: float
    running: bool
    accuracy: float | None
    loss: float | None
    participants: int
    divergent_rounds: list[int]
    bytes_received: int
    bytes_sent: int
    priority: NotRequired[int]  # its place in the queue: higher starts first
    queue_position: NotRequired[int | None]  # 1 starts next; None unless queued
    epsilon: NotRequired[float | None]  # DP budget this node spent (a job with [privacy])


class RoundMetrics(TypedDict, total=False):
    """Figures of one round on the node; a key is there once its phase ran."""

    accuracy: float
    loss: float
    epsilon: float  # DP budget this node spent so far (a job with [privacy])
    train_loss: float
    train_accuracy: float
    updates: int
    samples: int
    bytes_sent_update: int
    bytes_received: int
    t_train_s: float
    t_encode_s: float
    t_commit_s: float
    t_fetch_s: float
    t_aggregate_s: float
    t_model_commit_s: float
    t_eval_s: float
    mode: str  # "all" (every update fetched whole) or "sharded"
    role: str  # sharded: "author" (its update is in the round) or "member"
    shards: int
    aggregated: list[int]  # sharded: the shards this node reduced as aggregator
    recomputed: list[int]  # sharded: the shards it recomputed itself
    bytes_manifests: int
    bytes_shards: int
    bytes_settled: int
    bytes_recomputed: int


class RoundRecord(TypedDict):
    """One round of a job on the node."""

    job_id: str
    round: int
    phase: str
    update_hash: str | None
    model_hash: str | None
    majority_hash: str | None
    divergent: bool
    metrics: RoundMetrics
    started_at: float
    finished_at: float | None


class Commitment(TypedDict):
    """An update or model hash committed on chain; ``verified`` once the node checked it."""

    job_id: str
    round: int
    kind: str
    seq: int
    participant: str
    hash: str
    samples: int
    verified: bool | None


class JobDetail(JobSummary):
    """``GET /jobs/{id}``: the summary with the spec, every round and every commitment."""

    spec: dict[str, Any]
    rounds_detail: list[RoundRecord]
    commitments: list[Commitment]


class RoundCheck(TypedDict):
    """``GET /jobs/{id}/verify``: one round's local model hash against what the chain decided."""

    round: int
    closed: bool
    updates: int
    votes: int
    decision: str | None  # "finalized" | "void" | None while undecided
    chain_model: str | None
    local_model: str | None
    dissenters: list[str]
    verified: bool


class BundleBlob(TypedDict):
    hash: str
    held: bool


class JobBundle(TypedDict):
    """``GET /jobs/{id}/bundle``: what `gfl job export` writes (docs/protocol.md, 7)."""

    manifest: dict[str, Any]
    spec: str
    blobs: list[BundleBlob]


class JobReport(TypedDict):
    """``GET /jobs/{id}/report?format=json``: one flat row of metrics per round."""

    job_id: str
    name: str
    status: str
    rounds: list[dict[str, Any]]


class Event(TypedDict):
    """One event of ``GET /events``; ``seq`` is 0 for a synthetic ``gap`` event."""

    seq: int
    ts: float
    type: str
    data: dict[str, Any]
