// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title GFL job registry
/// @notice Records federated-learning jobs and, round by round, which updates
/// count and which global model they produced. The contract is the arbiter of
/// round closure, so every node sees the same set of accepted updates.
/// @dev Round rules (see notes/chainrules.md): round r of a job is closed iff
/// count >= minUpdates AND (count >= joinedCount OR now >= opensAt + roundTimeout).
/// Closing is lazy: every write first settles the job, and views apply the
/// same rule without writing. A round closed because every participant
/// committed is settled in the same transaction; one closed by the timeout
/// records closedAt = opensAt + roundTimeout, so the recorded times do not
/// depend on who settles it or when.
contract JobRegistry {
    enum Status {
        None,
        Active,
        Finished,
        Cancelled
    }

    /// Three storage slots.
    struct Job {
        address owner; // slot 0: 20 bytes
        Status status; //         1 byte
        uint32 rounds; //         4 bytes
        uint32 currentRound; //   4 bytes
        bytes32 specHash; // slot 1
        uint32 minUpdates; // slot 2
        uint32 joinedCount;
        uint64 roundTimeout;
    }

    /// One slot per round.
    struct Round {
        uint64 opensAt;
        uint64 closedAt; // 0 while open (block timestamps are never 0)
        uint32 updateCount;
        uint32 modelCount;
    }

    /// Two slots per update: participant and samples share the first one.
    struct Update {
        address participant;
        uint64 samples;
        bytes32 updateHash;
    }

    struct ModelCommit {
        address participant;
        bytes32 modelHash;
    }

    uint8 private constant _UPDATE_BIT = 1;
    uint8 private constant _MODEL_BIT = 2;

    mapping(bytes32 => Job) private _jobs;
    mapping(bytes32 => mapping(uint256 => Round)) private _rounds;
    /// Indexed by position (Round.updateCount / modelCount, Job.joinedCount hold the
    /// lengths): cheaper than dynamic arrays, which store their length a second time.
    mapping(bytes32 => mapping(uint256 => mapping(uint256 => Update))) private _updates;
    mapping(bytes32 => mapping(uint256 => mapping(uint256 => ModelCommit))) private _models;
    mapping(bytes32 => mapping(uint256 => address)) private _participants;
    mapping(bytes32 => mapping(address => bool)) private _joined;
    /// job => round => participant => bit set of _UPDATE_BIT / _MODEL_BIT
    mapping(bytes32 => mapping(uint256 => mapping(address => uint8))) private _committed;

    event JobRegistered(
        bytes32 indexed jobId,
        address indexed owner,
        bytes32 specHash,
        uint32 rounds,
        uint32 minUpdates,
        uint64 roundTimeout
    );
    event Joined(bytes32 indexed jobId, address indexed participant, uint32 joinedCount);
    event UpdateCommitted(
        bytes32 indexed jobId,
        uint32 indexed round,
        address indexed participant,
        bytes32 updateHash,
        uint64 samples,
        uint32 index
    );
    event RoundClosed(bytes32 indexed jobId, uint32 indexed round, uint32 updates, uint64 closedAt);
    event ModelCommitted(
        bytes32 indexed jobId, uint32 indexed round, address indexed participant, bytes32 modelHash
    );
    event JobFinished(bytes32 indexed jobId);
    event JobCancelled(bytes32 indexed jobId);

    /// A zero job id or spec hash, or rounds / minUpdates / roundTimeout of 0.
    error InvalidJob(
        bytes32 jobId, bytes32 specHash, uint32 rounds, uint32 minUpdates, uint64 roundTimeout
    );
    error JobExists(bytes32 jobId);
    error UnknownJob(bytes32 jobId);
    error JobNotActive(bytes32 jobId, Status status);
    error NotOwner(bytes32 jobId, address caller);
    error AlreadyJoined(bytes32 jobId, address participant);
    error NotParticipant(bytes32 jobId, address caller);
    error WrongRound(bytes32 jobId, uint32 round, uint32 currentRound);
    error RoundNotClosed(bytes32 jobId, uint32 round);
    error RoundOutOfRange(bytes32 jobId, uint32 round, uint32 rounds);
    error AlreadyCommitted(bytes32 jobId, uint32 round, address participant);

    // ----------------------------------------------------------------- writes

    /// @notice Register a job owned by the sender; round 0 opens now.
    function register(
        bytes32 jobId,
        bytes32 specHash,
        uint32 rounds,
        uint32 minUpdates,
        uint64 roundTimeout
    ) external {
        if (
            jobId == bytes32(0) || specHash == bytes32(0) || rounds == 0 || minUpdates == 0
                || roundTimeout == 0
        ) revert InvalidJob(jobId, specHash, rounds, minUpdates, roundTimeout);
        Job storage j = _jobs[jobId];
        if (j.status != Status.None) revert JobExists(jobId);
        j.owner = msg.sender;
        j.status = Status.Active;
        j.rounds = rounds;
        j.specHash = specHash;
        j.minUpdates = minUpdates;
        j.roundTimeout = roundTimeout;
        _rounds[jobId][0].opensAt = uint64(block.timestamp);
        emit JobRegistered(jobId, msg.sender, specHash, rounds, minUpdates, roundTimeout);
    }

    /// @notice Become a participant of an active job.
    function join(bytes32 jobId) external {
        Job storage j = _activeJob(jobId);
        if (_joined[jobId][msg.sender]) revert AlreadyJoined(jobId, msg.sender);
        _joined[jobId][msg.sender] = true;
        uint32 n = j.joinedCount;
        _participants[jobId][n] = msg.sender;
        n += 1;
        j.joinedCount = n;
        emit Joined(jobId, msg.sender, n);
    }

    /// @notice Commit the sender's update for the current round.
    function commitUpdate(bytes32 jobId, uint32 round, bytes32 updateHash, uint64 samples)
        external
    {
        Job storage j = _activeJob(jobId);
        uint32 current = j.currentRound;
        if (round != current) revert WrongRound(jobId, round, current);
        if (!_joined[jobId][msg.sender]) revert NotParticipant(jobId, msg.sender);
        uint8 flags = _committed[jobId][round][msg.sender];
        if (flags & _UPDATE_BIT != 0) revert AlreadyCommitted(jobId, round, msg.sender);
        _committed[jobId][round][msg.sender] = flags | _UPDATE_BIT;

        Round storage rd = _rounds[jobId][round];
        uint32 index = rd.updateCount;
        rd.updateCount = index + 1;
        _updates[jobId][round][index] = Update(msg.sender, samples, updateHash);
        emit UpdateCommitted(jobId, round, msg.sender, updateHash, samples, index);
        // Close eagerly when this update completes the round.
        if (_isClosed(j, rd, block.timestamp)) _closeRound(jobId, j, rd, uint64(block.timestamp));
    }

    /// @notice Commit the global model the sender computed from a closed round.
    function commitModel(bytes32 jobId, uint32 round, bytes32 modelHash) external {
        Job storage j = _knownJob(jobId);
        if (j.status == Status.Cancelled) revert JobNotActive(jobId, Status.Cancelled);
        _settle(jobId, j);
        if (round >= j.rounds) revert RoundOutOfRange(jobId, round, j.rounds);
        if (_rounds[jobId][round].closedAt == 0) revert RoundNotClosed(jobId, round);
        if (!_joined[jobId][msg.sender]) revert NotParticipant(jobId, msg.sender);
        uint8 flags = _committed[jobId][round][msg.sender];
        if (flags & _MODEL_BIT != 0) revert AlreadyCommitted(jobId, round, msg.sender);
        _committed[jobId][round][msg.sender] = flags | _MODEL_BIT;
        Round storage rd = _rounds[jobId][round];
        uint32 index = rd.modelCount;
        rd.modelCount = index + 1;
        _models[jobId][round][index] = ModelCommit(msg.sender, modelHash);
        emit ModelCommitted(jobId, round, msg.sender, modelHash);
    }

    /// @notice The owner stops an active job; no further commitments are accepted.
    function cancel(bytes32 jobId) external {
        Job storage j = _activeJob(jobId);
        if (msg.sender != j.owner) revert NotOwner(jobId, msg.sender);
        j.status = Status.Cancelled;
        emit JobCancelled(jobId);
    }

    /// @notice Apply a pending timeout closure now (anyone may call; idempotent).
    function settle(bytes32 jobId) external {
        _settle(jobId, _knownJob(jobId));
    }

    // ------------------------------------------------------------------ views

    /// @notice A job as it stands now, pending closures applied.
    function getJob(bytes32 jobId)
        external
        view
        returns (
            address owner,
            bytes32 specHash,
            Status status,
            uint32 rounds,
            uint32 minUpdates,
            uint64 roundTimeout,
            uint32 currentRound,
            uint32 joinedCount
        )
    {
        Job storage j = _jobs[jobId];
        (status, currentRound,) = _effective(jobId, j);
        return (
            j.owner,
            j.specHash,
            status,
            j.rounds,
            j.minUpdates,
            j.roundTimeout,
            currentRound,
            j.joinedCount
        );
    }

    /// @notice True iff the chain holds an active or finished job with this spec hash and owner.
    function verifyJob(bytes32 jobId, bytes32 specHash, address owner)
        external
        view
        returns (bool)
    {
        Job storage j = _jobs[jobId];
        (Status status,,) = _effective(jobId, j);
        return (status == Status.Active || status == Status.Finished) && j.specHash == specHash
            && j.owner == owner;
    }

    /// @notice Round timing and counts, pending closure applied (all zero for a future round).
    function getRound(bytes32 jobId, uint32 round)
        external
        view
        returns (uint64 opensAt, uint64 closedAt, bool closed, uint32 updateCount, uint32 modelCount)
    {
        Job storage j = _knownJob(jobId);
        if (round >= j.rounds) revert RoundOutOfRange(jobId, round, j.rounds);
        Round storage rd = _rounds[jobId][round];
        opensAt = rd.opensAt;
        closedAt = rd.closedAt;
        uint32 stored = j.currentRound;
        if (j.status == Status.Active && closedAt == 0) {
            Round storage cur = _rounds[jobId][stored];
            if (_isClosed(j, cur, block.timestamp)) {
                // closed by the timeout, not yet settled
                uint64 pendingClose = cur.opensAt + j.roundTimeout;
                if (round == stored) closedAt = pendingClose;
                else if (round == stored + 1) opensAt = pendingClose;
            }
        }
        return (opensAt, closedAt, closedAt != 0, rd.updateCount, rd.modelCount);
    }

    /// @notice A round's update commitments in chain order.
    function getUpdates(bytes32 jobId, uint32 round)
        external
        view
        returns (address[] memory participants, bytes32[] memory hashes, uint64[] memory samples)
    {
        mapping(uint256 => Update) storage us = _updates[jobId][round];
        uint256 n = _rounds[jobId][round].updateCount;
        participants = new address[](n);
        hashes = new bytes32[](n);
        samples = new uint64[](n);
        for (uint256 i = 0; i < n; ++i) {
            Update storage u = us[i];
            participants[i] = u.participant;
            hashes[i] = u.updateHash;
            samples[i] = u.samples;
        }
    }

    /// @notice A round's model commitments in chain order.
    function getModels(bytes32 jobId, uint32 round)
        external
        view
        returns (address[] memory participants, bytes32[] memory hashes)
    {
        mapping(uint256 => ModelCommit) storage ms = _models[jobId][round];
        uint256 n = _rounds[jobId][round].modelCount;
        participants = new address[](n);
        hashes = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            participants[i] = ms[i].participant;
            hashes[i] = ms[i].modelHash;
        }
    }

    /// @notice The participants in join order.
    function getParticipants(bytes32 jobId) external view returns (address[] memory list) {
        uint256 n = _jobs[jobId].joinedCount;
        list = new address[](n);
        for (uint256 i = 0; i < n; ++i) {
            list[i] = _participants[jobId][i];
        }
    }

    function isParticipant(bytes32 jobId, address who) external view returns (bool) {
        return _joined[jobId][who];
    }

    /// @notice Whether `who` committed an update / a model for `round`.
    function hasCommitted(bytes32 jobId, uint32 round, address who)
        external
        view
        returns (bool update, bool model)
    {
        uint8 flags = _committed[jobId][round][who];
        return (flags & _UPDATE_BIT != 0, flags & _MODEL_BIT != 0);
    }

    // -------------------------------------------------------------- internals

    function _knownJob(bytes32 jobId) private view returns (Job storage j) {
        j = _jobs[jobId];
        if (j.status == Status.None) revert UnknownJob(jobId);
    }

    /// Settle, then require the job to be Active.
    function _activeJob(bytes32 jobId) private returns (Job storage j) {
        j = _knownJob(jobId);
        _settle(jobId, j);
        if (j.status != Status.Active) revert JobNotActive(jobId, j.status);
    }

    function _isClosed(Job storage j, Round storage rd, uint256 now_) private view returns (bool) {
        uint32 count = rd.updateCount;
        if (count < j.minUpdates) return false;
        return count >= j.joinedCount || now_ >= uint256(rd.opensAt) + j.roundTimeout;
    }

    /// Apply a pending timeout closure. A new round holds no updates and
    /// minUpdates >= 1, so at most one round can be pending.
    function _settle(bytes32 jobId, Job storage j) private {
        if (j.status != Status.Active) return;
        Round storage rd = _rounds[jobId][j.currentRound];
        if (_isClosed(j, rd, block.timestamp)) {
            _closeRound(jobId, j, rd, rd.opensAt + j.roundTimeout);
        }
    }

    function _closeRound(bytes32 jobId, Job storage j, Round storage rd, uint64 closedAt) private {
        uint32 r = j.currentRound;
        rd.closedAt = closedAt;
        emit RoundClosed(jobId, r, rd.updateCount, closedAt);
        if (r + 1 == j.rounds) {
            j.status = Status.Finished;
            emit JobFinished(jobId);
        } else {
            j.currentRound = r + 1;
            _rounds[jobId][r + 1].opensAt = closedAt;
        }
    }

    /// Status, current round and its opening time with any pending closure applied.
    function _effective(bytes32 jobId, Job storage j)
        private
        view
        returns (Status status, uint32 current, uint64 opensAt)
    {
        status = j.status;
        current = j.currentRound;
        Round storage rd = _rounds[jobId][current];
        opensAt = rd.opensAt;
        if (status == Status.Active && _isClosed(j, rd, block.timestamp)) {
            uint64 closedAt = rd.opensAt + j.roundTimeout;
            if (current + 1 == j.rounds) {
                status = Status.Finished;
            } else {
                current += 1;
                opensAt = closedAt;
            }
        }
    }
}
