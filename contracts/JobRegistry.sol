// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title GFL job registry, version 2
/// @notice Records federated-learning jobs: who may take part, which updates each round
/// counts (S_r, in chain order), and which model the round's contributors voted for.
/// Nothing here grows without bound: rounds live in events, the contract keeps per job a
/// few packed slots and per member one slot. docs/contract.md explains every rule.
/// @dev Round rules: the collecting round c closes when updates >= minUpdates AND
/// (updates >= eligible OR now >= opensAt + roundTimeout) AND the vote on c - 1 is decided.
/// Transitions are applied eagerly by the write that completes them and lazily (with the
/// time they became due, so the record does not depend on who settles) by every later write.
contract JobRegistry {
    enum Status {
        None,
        Active,
        Finished,
        Cancelled,
        Expired
    }

    enum MemberStatus {
        None,
        Active,
        Left,
        Ejected,
        Slashed
    }

    enum LeaveReason {
        Left,
        MissedRounds,
        Withheld,
        Slashed
    }

    enum SlashReason {
        Equivocation,
        Dissent,
        ShardLie
    }

    struct Params {
        uint32 rounds; // 1..1_000_000
        uint32 minUpdates; // 1..maxParticipants
        uint32 maxParticipants; // 1..2^24-1
        uint32 roundTimeout; // seconds, 1..7 days
        uint32 voteTimeout; // seconds, 1..7 days
        uint32 joinUntil; // joins accepted while the collecting round <= joinUntil
        uint64 maxSamples; // >= 1
        uint64 deadline; // unix time, now < deadline <= now + 365 days
        uint8 maxMissed; // >= 1
        uint96 bond; // wei per member
        bytes32 allowRoot; // 0 = open (then bond > 0)
    }

    /// A job as it stands now, pending transitions applied (`logSeq`/`logHash` as stored).
    struct JobView {
        address owner;
        uint96 bond;
        bytes32 specHash;
        bytes32 model0Hash;
        Params params;
        Status status;
        uint32 round; // the collecting round c (== rounds once the last round closed)
        uint32 updates; // |S_c| so far
        uint32 opensAt; // c's clock (0 while c - 1 is being voted on)
        uint32 eligible; // members eligible for c
        uint32 closedAt; // when c - 1 closed (0 before round 0 closed)
        uint32 closedUpdates; // |S_{c-1}|
        uint32 topVotes;
        uint32 secondVotes;
        uint32 topExcluded;
        bool voting; // the vote on c - 1 is undecided
        bool dissent; // someone voted for another candidate than the top
        bytes10 topPrefix; // the top candidate's key prefix (0 before the first vote)
        bytes32 topKey; // its full key where the contract keeps it (a non-empty mask), else 0
        uint32 pending; // members eligible from c + 1
        uint32 active; // members not left, ejected or slashed
        uint32 joined; // members ever joined (the length of `members`)
        uint32 withdrawableAt; // 0 while the job runs
        uint64 logSeq;
        uint192 logHash;
    }

    /// Rounds are NO_ROUND when absent.
    struct MemberView {
        address account;
        MemberStatus status;
        bool withdrawn;
        uint32 joinRound;
        uint32 lastRound;
        uint32 lastPosition;
        uint32 prevRound;
        uint32 prevPosition;
        uint32 voteRound;
        bytes10 voteKey; // the key prefix of the member's last vote
    }

    /// Consecutive slots: one keccak locates them all.
    struct Job {
        uint256 hot; // read and written by every round transaction
        uint256 config; // written once
        uint256 roll; // membership counters, touched by join/leave/close/end
        uint256 log; // seq << 192 | running hash
        bytes32 topKey; // the top candidate's full key, kept only when its mask is non-empty
        uint256 aux; // the vote on c - 1, rare paths: topExcluded << 44 | secondVotes << 20 | c
        uint256 ownerBond; // bond << 160 | owner
        bytes32 specHash;
        bytes32 model0Hash;
        bytes32 allowRoot;
    }

    /// A job's packed slots unpacked into memory for one transaction.
    struct Ctx {
        bytes32 id;
        Status status;
        uint256 round;
        uint256 updates;
        uint256 opensAt;
        uint256 eligible;
        uint256 closedAt;
        uint256 closedUpdates;
        uint256 topVotes;
        uint256 topPrefix;
        bool voting;
        bool dissent;
        bool topMasked;
        bool rollDirty; // pending or drop is non-zero: the close must read the roll
        bool keepKey; // the deciding vote names shards: keep the key as evidence
        uint256 rounds;
        uint256 minUpdates;
        uint256 maxParticipants;
        uint256 roundTimeout;
        uint256 voteTimeout;
        uint256 joinUntil;
        uint256 maxSamples;
        uint256 deadline;
        uint256 maxMissed;
        uint256 seq;
        uint256 logHash;
        bool rollLoaded;
        uint256 pending;
        uint256 drop; // members removed during c after committing to c
        uint256 active;
        uint256 joined;
        uint256 withdrawableAt;
    }

    /// A member's slot unpacked; rounds are stored + 1 so that 0 means none.
    struct Mem {
        address account;
        MemberStatus status;
        uint256 joinRound;
        uint256 lastRound;
        uint256 lastPos;
        uint256 prevRound;
        uint256 prevPos;
        uint256 voteRound;
        uint256 voteKey;
        bool withdrawn;
    }

    uint32 public constant NO_ROUND = type(uint32).max;
    uint256 public constant MAX_PAGE = 1000;
    uint256 private constant _MAX_ROUNDS = 1_000_000;
    uint256 private constant _MAX_COUNT = 2 ** 24 - 1;
    uint256 private constant _MAX_TIMEOUT = 7 days;
    uint256 private constant _MAX_LIFETIME = 365 days;
    uint256 private constant _M24 = 0xffffff;
    uint256 private constant _M32 = 0xffffffff;
    uint256 private constant _M64 = 0xffffffffffffffff;
    uint256 private constant _M20 = 0xfffff;
    uint256 private constant _M80 = 0xffffffffffffffffffff;
    /// Candidates are compared by the first 80 bits of their key: finding another key with
    /// the same prefix is a 2^80 second-preimage search.
    uint256 private constant _PREFIX_SHIFT = 176;
    uint256 private constant _M192 = 2 ** 192 - 1;
    /// secp256k1n / 2: signatures with a higher s are the malleated twin of a low one.
    uint256 private constant _HALF_N =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    uint256 private constant _STEP_NONE = 0;
    uint256 private constant _STEP_DECIDED = 1;
    uint256 private constant _STEP_CLOSED = 2;
    uint256 private constant _STEP_EXPIRED = 3;

    mapping(bytes32 => Job) private _jobs;
    mapping(bytes32 => mapping(address => uint256)) private _members;
    mapping(bytes32 => mapping(uint256 => address)) private _memberAt;
    /// keccak256(jobId, round, key prefix) => votes, for candidates that are not (or no
    /// longer) the top.
    mapping(bytes32 => uint256) private _tally;
    /// keccak256(jobId, round) => finalized key prefix, kept only where evidence needs it.
    mapping(bytes32 => bytes10) private _finalKeys;

    // Every event starts with the indexed jobId and carries the job's event number `seq`.
    event JobRegistered(
        bytes32 indexed jobId,
        address indexed owner,
        uint64 seq,
        bytes32 salt,
        bytes32 specHash,
        bytes32 model0Hash,
        Params params
    );
    /// `maskKey`: the member's X25519 masking key for secure aggregation (0 when unused).
    event Joined(
        bytes32 indexed jobId,
        address indexed member,
        uint64 seq,
        uint32 joinRound,
        uint32 index,
        bytes32 maskKey
    );
    event Left(bytes32 indexed jobId, address indexed member, uint64 seq, LeaveReason reason);
    event UpdateCommitted(
        bytes32 indexed jobId,
        uint32 indexed round,
        address indexed author,
        uint64 seq,
        bytes32 updateHash,
        uint64 samples,
        uint32 position
    );
    /// `seed` draws the round's shard aggregators (docs/protocol.md, section 8).
    event RoundClosed(
        bytes32 indexed jobId,
        uint32 indexed round,
        uint64 seq,
        uint32 updates,
        uint32 closedAt,
        bytes32 seed
    );
    /// `shardsHash`: keccak256 of the round's reduced shard hashes in shard order, for a
    /// sharded round (docs/protocol.md, section 8); 0 for an all-to-all round.
    event Voted(
        bytes32 indexed jobId,
        uint32 indexed round,
        address indexed voter,
        uint64 seq,
        bytes32 modelHash,
        bytes mask,
        bytes32 shardsHash
    );
    event RoundFinalized(
        bytes32 indexed jobId, uint32 indexed round, uint64 seq, bytes32 key, uint32 votes, uint32 at
    );
    event RoundVoid(bytes32 indexed jobId, uint32 indexed round, uint64 seq, uint32 at);
    /// A member's shares blob for a round of secure aggregation (docs/protocol.md, 9.6).
    event Dealt(
        bytes32 indexed jobId,
        uint32 indexed round,
        address indexed dealer,
        uint64 seq,
        uint32 at,
        bytes blob
    );
    event Slashed(
        bytes32 indexed jobId,
        address indexed member,
        uint64 seq,
        SlashReason reason,
        uint32 round,
        address reporter,
        uint96 amount
    );
    event JobFinished(bytes32 indexed jobId, uint64 seq, uint32 at);
    event JobCancelled(bytes32 indexed jobId, uint64 seq, uint32 at);
    event JobExpired(bytes32 indexed jobId, uint64 seq, uint32 at);
    event Withdrawn(bytes32 indexed jobId, address indexed member, uint64 seq, uint96 amount);

    /// `field` is the parameter's name, as text left-aligned in 32 bytes.
    error InvalidParameter(bytes32 field, uint256 value, uint256 min, uint256 max);
    error JobExists(bytes32 jobId);
    error UnknownJob(bytes32 jobId);
    error JobNotActive(bytes32 jobId, Status status);
    error NotOwner(bytes32 jobId, address caller);
    error JoinClosed(bytes32 jobId, uint32 round, uint32 joinUntil);
    error WrongBond(bytes32 jobId, uint256 value, uint256 bond);
    error NotAllowed(bytes32 jobId, address account);
    error AlreadyJoined(bytes32 jobId, address account);
    error JobFull(bytes32 jobId, uint32 maxParticipants);
    error NotMember(bytes32 jobId, address account);
    error WrongRound(bytes32 jobId, uint32 round, uint32 collecting);
    error RoundOutOfRange(bytes32 jobId, uint32 round, uint32 rounds);
    error AlreadyCommitted(bytes32 jobId, uint32 round, address account);
    error InvalidSamples(bytes32 jobId, uint64 samples, uint64 maxSamples);
    error ZeroHash(bytes32 jobId);
    error VoteNotOpen(bytes32 jobId, uint32 round);
    error VoteClosed(bytes32 jobId, uint32 round, uint32 deadline);
    error NotContributor(bytes32 jobId, uint32 round, address account);
    error AlreadyVoted(bytes32 jobId, uint32 round, address account);
    error InvalidMask(bytes32 jobId, uint32 round, string reason);
    error NotEjectable(bytes32 jobId, address account);
    error BadEvidence(bytes32 jobId, string reason);
    error NothingToSlash(bytes32 jobId, address account);
    error DeadlineNotReached(bytes32 jobId, uint64 deadline);
    error NotWithdrawable(bytes32 jobId, Status status, uint32 withdrawableAt);
    error NothingToWithdraw(bytes32 jobId, address account);
    error PaymentFailed(address to, uint256 amount);

    // ------------------------------------------------------------------ jobs

    /// @notice The id `register` gives a job of `owner` with this salt and spec hash.
    function jobIdFor(address owner, bytes32 salt, bytes32 specHash)
        public
        view
        returns (bytes32)
    {
        return keccak256(abi.encode(block.chainid, address(this), owner, salt, specHash));
    }

    /// @notice Register a job owned by the sender; round 0 starts collecting now.
    function register(bytes32 salt, bytes32 specHash, bytes32 model0Hash, Params calldata p)
        external
        returns (bytes32 jobId)
    {
        _checkParams(specHash, model0Hash, p);
        jobId = jobIdFor(msg.sender, salt, specHash);
        Job storage j = _jobs[jobId];
        if (j.hot != 0) revert JobExists(jobId);
        j.config = uint256(p.rounds) | uint256(p.minUpdates) << 24
            | uint256(p.maxParticipants) << 48 | uint256(p.roundTimeout) << 72
            | uint256(p.voteTimeout) << 96 | uint256(p.joinUntil) << 120
            | uint256(p.maxSamples) << 152 | uint256(p.deadline) << 216 | uint256(p.maxMissed) << 248;
        j.ownerBond = uint256(uint160(msg.sender)) | uint256(p.bond) << 160;
        j.specHash = specHash;
        j.model0Hash = model0Hash;
        if (p.allowRoot != 0) j.allowRoot = p.allowRoot;
        Ctx memory x;
        x.id = jobId;
        x.status = Status.Active;
        (x.closedAt, x.opensAt) = (block.timestamp, block.timestamp); // c = 0 opens now
        uint64 seq = _chain(
            x,
            keccak256(
                abi.encode(
                    JobRegistered.selector, jobId, msg.sender, 1, salt, specHash, model0Hash, p
                )
            )
        );
        emit JobRegistered(jobId, msg.sender, seq, salt, specHash, model0Hash, p);
        _save(x);
    }

    /// @notice The owner stops an active job. Votes on the round closed last are still
    /// accepted until their deadline.
    function cancel(bytes32 jobId) external {
        Ctx memory x = _open(jobId);
        if (x.status != Status.Active) revert JobNotActive(jobId, x.status);
        if (msg.sender != address(uint160(_jobs[jobId].ownerBond))) {
            revert NotOwner(jobId, msg.sender);
        }
        _loadRoll(x);
        x.status = Status.Cancelled;
        uint256 votesEnd = x.round == 0 ? 0 : x.closedAt + x.voteTimeout;
        x.withdrawableAt = _max(block.timestamp, votesEnd) + x.voteTimeout;
        _logEnd(x, JobCancelled.selector, block.timestamp);
        _save(x);
    }

    /// @notice Record the expiry of an active job whose deadline has passed (anyone).
    function expire(bytes32 jobId) external {
        Ctx memory x = _load(jobId);
        if (x.status != Status.Active) revert JobNotActive(jobId, x.status);
        if (block.timestamp < x.deadline) revert DeadlineNotReached(jobId, uint64(x.deadline));
        _settle(x);
        _save(x);
    }

    /// @notice Apply the transitions that are due (round timeouts, vote deadlines, expiry).
    /// Anyone may call; nothing happens when nothing is due.
    function settle(bytes32 jobId) external {
        Ctx memory x = _open(jobId);
        _save(x);
    }

    // ------------------------------------------------------------ membership

    /// @notice Join with the job's bond; `proof` shows the sender on the allow-list (if any);
    /// `maskKey` is published for secure aggregation (0 for a job without it).
    function join(bytes32 jobId, bytes32[] calldata proof, bytes32 maskKey) external payable {
        Ctx memory x = _open(jobId);
        if (x.status != Status.Active) revert JobNotActive(jobId, x.status);
        if (x.round > x.joinUntil || x.round >= x.rounds) {
            revert JoinClosed(jobId, uint32(x.round), uint32(x.joinUntil));
        }
        Job storage j = _jobs[jobId];
        uint256 bond = j.ownerBond >> 160;
        if (msg.value != bond) revert WrongBond(jobId, msg.value, bond);
        bytes32 root = j.allowRoot;
        if (root != 0 && !_onAllowList(proof, root, keccak256(abi.encode(msg.sender)))) {
            revert NotAllowed(jobId, msg.sender);
        }
        if (_members[jobId][msg.sender] != 0) revert AlreadyJoined(jobId, msg.sender);
        _loadRoll(x);
        if (x.active >= x.maxParticipants) revert JobFull(jobId, uint32(x.maxParticipants));
        // Eligible for c unless c already has updates: a mid-round joiner counts from c + 1.
        uint256 joinRound = x.round;
        if (x.updates == 0) {
            x.eligible += 1;
        } else {
            joinRound += 1;
            x.pending += 1;
            x.rollDirty = true;
        }
        x.active += 1;
        uint256 index = x.joined;
        x.joined = index + 1;
        _memberAt[jobId][index] = msg.sender;
        _members[jobId][msg.sender] = uint256(MemberStatus.Active) | joinRound << 8;
        uint64 seq = _chain(
            x,
            keccak256(
                abi.encode(Joined.selector, jobId, msg.sender, x.seq + 1, joinRound, index, maskKey)
            )
        );
        emit Joined(jobId, msg.sender, seq, uint32(joinRound), uint32(index), maskKey);
        _save(x);
    }

    /// @notice Leave an active job (not after committing to the collecting round).
    function leave(bytes32 jobId) external {
        Ctx memory x = _open(jobId);
        if (x.status != Status.Active) revert JobNotActive(jobId, x.status);
        Mem memory m = _loadMember(jobId, msg.sender);
        if (m.status != MemberStatus.Active) revert NotMember(jobId, msg.sender);
        if (m.lastRound == x.round + 1) revert AlreadyCommitted(jobId, uint32(x.round), msg.sender);
        _remove(x, m, LeaveReason.Left, MemberStatus.Left);
        _storeMember(jobId, m);
        _tryClose(x);
        _save(x);
    }

    /// @notice Eject a member that sent no update in the last maxMissed rounds it was
    /// eligible for nor in the collecting round (anyone); the round stops waiting for it.
    function eject(bytes32 jobId, address account) external {
        Ctx memory x = _open(jobId);
        if (x.status != Status.Active) revert JobNotActive(jobId, x.status);
        Mem memory m = _loadMember(jobId, account);
        if (m.status != MemberStatus.Active) revert NotMember(jobId, account);
        if (m.joinRound + x.maxMissed > x.round || m.lastRound + x.maxMissed > x.round) {
            revert NotEjectable(jobId, account);
        }
        _remove(x, m, LeaveReason.MissedRounds, MemberStatus.Ejected);
        _storeMember(jobId, m);
        _tryClose(x);
        _save(x);
    }

    /// @notice The sender's bond back, once the job ended and its evidence window passed.
    function withdraw(bytes32 jobId) external {
        Ctx memory x = _open(jobId);
        _loadRoll(x);
        if (x.status == Status.Active || block.timestamp < x.withdrawableAt) {
            revert NotWithdrawable(jobId, x.status, uint32(x.withdrawableAt));
        }
        Mem memory m = _loadMember(jobId, msg.sender);
        if (m.status == MemberStatus.None || m.status == MemberStatus.Slashed || m.withdrawn) {
            revert NothingToWithdraw(jobId, msg.sender);
        }
        m.withdrawn = true;
        _storeMember(jobId, m);
        uint256 amount = _jobs[jobId].ownerBond >> 160;
        uint64 seq = _chain(
            x, keccak256(abi.encode(Withdrawn.selector, jobId, msg.sender, x.seq + 1, amount))
        );
        emit Withdrawn(jobId, msg.sender, seq, uint96(amount));
        _save(x);
        _pay(msg.sender, amount);
    }

    // ---------------------------------------------------------------- rounds

    /// @notice Commit the sender's update to the collecting round.
    function commitUpdate(bytes32 jobId, uint32 round, bytes32 updateHash, uint64 samples)
        external
    {
        Ctx memory x = _open(jobId);
        Mem memory m = _loadMember(jobId, msg.sender);
        _update(x, m, round, updateHash, samples);
        _storeMember(jobId, m);
        _save(x);
    }

    /// @notice Vote for the model of round c - 1 computed without the updates at the
    /// positions set in `mask` (empty: none excluded), by way of the reduced shards that
    /// `shardsHash` names (0: an all-to-all round).
    function vote(
        bytes32 jobId,
        uint32 round,
        bytes32 modelHash,
        bytes calldata mask,
        bytes32 shardsHash
    ) external {
        Ctx memory x = _open(jobId);
        Mem memory m = _loadMember(jobId, msg.sender);
        _vote(x, m, round, modelHash, mask, shardsHash);
        _storeMember(jobId, m);
        _save(x);
    }

    /// @notice The vote on round - 1, then the update for `round`, in one transaction.
    function commitAndVote(
        bytes32 jobId,
        uint32 round,
        bytes32 updateHash,
        uint64 samples,
        bytes32 modelHash,
        bytes calldata mask,
        bytes32 shardsHash
    ) external {
        Ctx memory x = _open(jobId);
        if (round == 0) revert VoteNotOpen(jobId, round);
        Mem memory m = _loadMember(jobId, msg.sender);
        _vote(x, m, round - 1, modelHash, mask, shardsHash);
        _update(x, m, round, updateHash, samples);
        _storeMember(jobId, m);
        _save(x);
    }

    /// @notice Publish the sender's shares blob for the collecting round (secure
    /// aggregation): the event makes its availability, and its time, a chain fact. The
    /// contract only logs it; which blob counts is the protocol's rule (docs/protocol.md 9.10).
    function deal(bytes32 jobId, uint32 round, bytes calldata blob) external {
        Ctx memory x = _open(jobId);
        if (x.status != Status.Active) revert JobNotActive(jobId, x.status);
        if (round != x.round) revert WrongRound(jobId, round, uint32(x.round));
        Mem memory m = _loadMember(jobId, msg.sender);
        if (m.status != MemberStatus.Active) revert NotMember(jobId, msg.sender);
        if (blob.length == 0 || blob.length > 65535) revert InvalidParameter("blob", blob.length, 1, 65535);
        uint64 seq = _chain(
            x,
            keccak256(
                abi.encode(Dealt.selector, jobId, round, msg.sender, x.seq + 1, block.timestamp, blob)
            )
        );
        emit Dealt(jobId, round, msg.sender, seq, uint32(block.timestamp), blob);
        _save(x);
    }

    // -------------------------------------------------------------- evidence

    /// @notice Two different update hashes for one round, both signed by the same member:
    /// the member's bond goes to the sender and the member is ejected.
    function reportEquivocation(
        bytes32 jobId,
        uint32 round,
        bytes32 hashA,
        bytes calldata sigA,
        bytes32 hashB,
        bytes calldata sigB
    ) external {
        if (hashA == hashB) revert BadEvidence(jobId, "the hashes are equal");
        address signer = _recover(updateStatement(jobId, round, hashA), sigA);
        if (signer == address(0) || signer != _recover(updateStatement(jobId, round, hashB), sigB))
        {
            revert BadEvidence(jobId, "the signatures are not the same member's");
        }
        Ctx memory x = _open(jobId);
        if (round >= x.rounds) revert RoundOutOfRange(jobId, round, uint32(x.rounds));
        _slash(x, _loadMember(jobId, signer), SlashReason.Equivocation, round);
    }

    /// @notice `account` voted (modelHash, mask, shardsHash) on `round`, which finalized
    /// (finalModelHash, mask, finalShardsHash): the same updates, another model or other
    /// reduced shards (the arithmetic is deterministic, so one of them is a lie).
    function slashDissenter(
        bytes32 jobId,
        uint32 round,
        address account,
        bytes32 modelHash,
        bytes calldata mask,
        bytes32 shardsHash,
        bytes32 finalModelHash,
        bytes32 finalShardsHash
    ) external {
        if (modelHash == finalModelHash && shardsHash == finalShardsHash) {
            revert BadEvidence(jobId, "the vote matches the model");
        }
        bytes32 maskHash = keccak256(mask);
        _checkFinal(jobId, round, finalModelHash, maskHash, finalShardsHash);
        Mem memory m = _loadMember(jobId, account);
        if (
            m.voteRound != uint256(round) + 1
                || m.voteKey != _prefix(modelHash, maskHash, shardsHash)
        ) {
            revert BadEvidence(jobId, "the member's last vote is not this one");
        }
        _slash(_open(jobId), m, SlashReason.Dissent, round);
    }

    /// @notice A signed shard statement (see `shardStatement`) for `round`'s shard `shard`
    /// over the finalized mask, with another hash than the finalized candidate's: the
    /// signer's bond goes to the sender and it is removed. `shardHashes` are the finalized
    /// reduced shards in shard order (their keccak256 is the candidate's shardsHash).
    function slashShardLie(
        bytes32 jobId,
        uint32 round,
        uint32 shard,
        bytes32 hash,
        bytes calldata sig,
        bytes32 finalModelHash,
        bytes calldata mask,
        bytes32[] calldata shardHashes
    ) external {
        if (shard >= shardHashes.length) revert BadEvidence(jobId, "no such shard");
        if (shardHashes[shard] == hash) revert BadEvidence(jobId, "the statement matches the shard");
        bytes32 maskHash = keccak256(mask);
        _checkFinal(jobId, round, finalModelHash, maskHash, keccak256(abi.encodePacked(shardHashes)));
        address signer = _recover(shardStatement(jobId, round, shard, hash, maskHash), sig);
        if (signer == address(0)) revert BadEvidence(jobId, "invalid signature");
        _slash(_open(jobId), _loadMember(jobId, signer), SlashReason.ShardLie, round);
    }

    /// @notice The finalized mask of `round` excludes `account`'s update: it is ejected
    /// from later rounds (its bond stays).
    function ejectWithholder(
        bytes32 jobId,
        uint32 round,
        address account,
        bytes32 finalModelHash,
        bytes calldata mask,
        bytes32 finalShardsHash
    ) external {
        _checkFinal(jobId, round, finalModelHash, keccak256(mask), finalShardsHash);
        Ctx memory x = _open(jobId);
        if (x.status != Status.Active) revert JobNotActive(jobId, x.status);
        Mem memory m = _loadMember(jobId, account);
        if (m.status != MemberStatus.Active) revert NotMember(jobId, account);
        uint256 pos;
        if (m.lastRound == uint256(round) + 1) pos = m.lastPos;
        else if (m.prevRound == uint256(round) + 1) pos = m.prevPos;
        else revert BadEvidence(jobId, "no update of the member's in that round on record");
        if (mask.length <= pos >> 3 || (uint8(mask[pos >> 3]) >> (pos & 7)) & 1 == 0) {
            revert BadEvidence(jobId, "the mask does not exclude the member");
        }
        _remove(x, m, LeaveReason.Withheld, MemberStatus.Ejected);
        _storeMember(jobId, m);
        _tryClose(x);
        _save(x);
    }

    // ----------------------------------------------------------------- views

    /// @notice The job with pending transitions applied; status None when unknown.
    function getJob(bytes32 jobId) external view returns (JobView memory v) {
        Job storage j = _jobs[jobId];
        if (j.hot == 0) return v;
        Ctx memory x = _load(jobId);
        for (uint256 i = 0; i < 4; ++i) {
            (uint256 kind,,,) = _advance(x);
            if (kind == _STEP_NONE) break;
        }
        _loadRoll(x);
        uint256 c = j.config;
        v.owner = address(uint160(j.ownerBond));
        v.bond = uint96(j.ownerBond >> 160);
        v.specHash = j.specHash;
        v.model0Hash = j.model0Hash;
        v.params = Params(
            uint32(c & _M24),
            uint32(c >> 24 & _M24),
            uint32(c >> 48 & _M24),
            uint32(c >> 72 & _M24),
            uint32(c >> 96 & _M24),
            uint32(c >> 120),
            uint64(c >> 152),
            uint64(c >> 216 & _M32),
            uint8(c >> 248),
            v.bond,
            j.allowRoot
        );
        v.status = x.status;
        v.round = uint32(x.round);
        v.updates = uint32(x.updates);
        v.opensAt = uint32(x.opensAt);
        v.eligible = uint32(x.eligible);
        v.closedAt = x.round == 0 ? 0 : uint32(x.closedAt);
        v.closedUpdates = uint32(x.closedUpdates);
        v.topVotes = uint32(x.topVotes);
        (uint256 second, uint256 excluded) = _aux(x);
        v.secondVotes = uint32(second);
        v.topExcluded = uint32(excluded);
        v.voting = x.voting;
        v.dissent = x.dissent;
        v.topPrefix = bytes10(uint80(x.topPrefix));
        v.topKey = x.topMasked ? j.topKey : bytes32(0);
        v.pending = uint32(x.pending);
        v.active = uint32(x.active);
        v.joined = uint32(x.joined);
        v.withdrawableAt = uint32(x.withdrawableAt);
        v.logSeq = uint64(x.seq);
        v.logHash = uint192(x.logHash);
    }

    function member(bytes32 jobId, address account) external view returns (MemberView memory) {
        return _view(account, _members[jobId][account]);
    }

    /// @notice Members in join order, `limit` (at most MAX_PAGE) from `offset`; and how
    /// many have ever joined.
    function members(bytes32 jobId, uint256 offset, uint256 limit)
        external
        view
        returns (MemberView[] memory page, uint256 total)
    {
        total = _jobs[jobId].roll >> 72 & _M32;
        if (limit > MAX_PAGE) limit = MAX_PAGE;
        if (offset >= total) return (new MemberView[](0), total);
        uint256 end = offset + limit > total ? total : offset + limit;
        page = new MemberView[](end - offset);
        mapping(uint256 => address) storage at = _memberAt[jobId];
        mapping(address => uint256) storage slots = _members[jobId];
        for (uint256 i = offset; i < end; ++i) {
            address account = at[i];
            page[i - offset] = _view(account, slots[account]);
        }
    }

    /// @notice The finalized key prefix of `round` where evidence needs it (dissent or a
    /// non-empty mask), else 0; RoundFinalized carries every finalized key in full.
    function finalKey(bytes32 jobId, uint32 round) external view returns (bytes10) {
        return _finalKeys[_roundKey(jobId, round)];
    }

    /// @notice Votes for `key` in `round` until the round's vote is decided (later votes
    /// for the winner count, later dissent does not).
    function tally(bytes32 jobId, uint32 round, bytes32 key) external view returns (uint256) {
        uint256 h = _jobs[jobId].hot;
        uint256 c = h >> 8 & _M20;
        uint256 prefix = uint256(key) >> _PREFIX_SHIFT;
        if (c != 0 && round == c - 1 && prefix == h >> 176 && (h >> 100 & _M24) != 0) {
            return h >> 100 & _M24;
        }
        return _tally[_tallyKey(jobId, round, prefix)];
    }

    /// @notice The number of the job's events and the running hash over them.
    function logHead(bytes32 jobId) external view returns (uint64 seq, uint192 hash) {
        uint256 l = _jobs[jobId].log;
        return (uint64(l >> 192), uint192(l));
    }

    /// @notice What a member signs (EIP-191) for each update it announces.
    function updateStatement(bytes32 jobId, uint32 round, bytes32 updateHash)
        public
        view
        returns (bytes32)
    {
        return keccak256(
            abi.encode("GFL update", block.chainid, address(this), jobId, round, updateHash)
        );
    }

    /// @notice What an aggregator signs (EIP-191) for a reduced shard it publishes:
    /// `maskHash` is keccak256 of the mask of the update positions it left out.
    function shardStatement(
        bytes32 jobId,
        uint32 round,
        uint32 shard,
        bytes32 reducedHash,
        bytes32 maskHash
    ) public view returns (bytes32) {
        return keccak256(
            abi.encode(
                "GFL shard", block.chainid, address(this), jobId, round, shard, reducedHash, maskHash
            )
        );
    }

    // ------------------------------------------------------ round internals

    function _update(Ctx memory x, Mem memory m, uint256 round, bytes32 hash, uint64 samples)
        private
    {
        if (x.status != Status.Active) revert JobNotActive(x.id, x.status);
        if (round >= x.rounds) revert RoundOutOfRange(x.id, uint32(round), uint32(x.rounds));
        if (round != x.round) revert WrongRound(x.id, uint32(round), uint32(x.round));
        if (hash == 0) revert ZeroHash(x.id);
        if (samples == 0 || samples > x.maxSamples) {
            revert InvalidSamples(x.id, samples, uint64(x.maxSamples));
        }
        // Any active member may contribute; a mid-round joiner only does not count among
        // the members the round waits for (it counts from the next round on).
        if (m.status != MemberStatus.Active) revert NotMember(x.id, m.account);
        if (m.lastRound == round + 1) revert AlreadyCommitted(x.id, uint32(round), m.account);
        uint256 pos = x.updates;
        x.updates = pos + 1;
        (m.prevRound, m.prevPos, m.lastRound, m.lastPos) = (m.lastRound, m.lastPos, round + 1, pos);
        uint64 seq = _chain(
            x,
            keccak256(
                abi.encode(
                    UpdateCommitted.selector, x.id, round, m.account, x.seq + 1, hash, samples, pos
                )
            )
        );
        emit UpdateCommitted(x.id, uint32(round), m.account, seq, hash, samples, uint32(pos));
        _tryClose(x);
    }

    function _vote(
        Ctx memory x,
        Mem memory m,
        uint256 round,
        bytes32 modelHash,
        bytes calldata mask,
        bytes32 shardsHash
    ) private {
        if (x.status == Status.Expired) revert JobNotActive(x.id, x.status);
        if (x.round == 0 || round != x.round - 1) revert VoteNotOpen(x.id, uint32(round));
        uint256 deadline = x.closedAt + x.voteTimeout;
        if (block.timestamp >= deadline) revert VoteClosed(x.id, uint32(round), uint32(deadline));
        if (m.status != MemberStatus.Active) revert NotMember(x.id, m.account);
        uint256 pos;
        if (m.lastRound == round + 1) pos = m.lastPos;
        else if (m.prevRound == round + 1) pos = m.prevPos;
        else revert NotContributor(x.id, uint32(round), m.account);
        if (m.voteRound == round + 1) revert AlreadyVoted(x.id, uint32(round), m.account);
        uint256 excluded = _checkMask(x, round, mask, pos);
        bytes32 key = keccak256(abi.encode(modelHash, keccak256(mask), shardsHash));
        m.voteRound = round + 1;
        m.voteKey = uint256(key) >> _PREFIX_SHIFT;
        _logVoted(x, round, m.account, modelHash, mask, shardsHash);
        x.keepKey = shardsHash != 0;
        _count(x, round, key, excluded);
    }

    function _logVoted(
        Ctx memory x,
        uint256 round,
        address voter,
        bytes32 modelHash,
        bytes calldata mask,
        bytes32 shardsHash
    ) private {
        uint64 seq = _chain(
            x,
            keccak256(
                abi.encode(
                    Voted.selector, x.id, round, voter, x.seq + 1, modelHash, mask, shardsHash
                )
            )
        );
        emit Voted(x.id, uint32(round), voter, seq, modelHash, mask, shardsHash);
    }

    /// Votes for the top candidate only touch the hot slot; others keep a tally slot each.
    function _count(Ctx memory x, uint256 round, bytes32 key, uint256 excluded) private {
        uint256 prefix = uint256(key) >> _PREFIX_SHIFT;
        if (x.topVotes == 0) {
            x.topVotes = 1;
            _setTop(x, key, prefix, excluded, 0);
        } else if (prefix == x.topPrefix) {
            x.topVotes += 1;
        } else if (!x.voting) {
            // Dissent after an eager decision: keep the finalized prefix as evidence.
            if (!x.dissent && !x.topMasked) {
                _finalKeys[_roundKey(x.id, round)] = bytes10(uint80(x.topPrefix));
            }
            x.dissent = true;
        } else {
            x.dissent = true;
            (uint256 second, uint256 topExcluded) = _aux(x);
            bytes32 slot = _tallyKey(x.id, round, prefix);
            uint256 t = _tally[slot] + 1;
            if (t > x.topVotes) {
                _tally[_tallyKey(x.id, round, x.topPrefix)] = x.topVotes;
                (second, x.topVotes) = (x.topVotes, t);
                _setTop(x, key, prefix, excluded, second);
            } else {
                _tally[slot] = t;
                if (t > second) second = t;
                _setAux(x, second, topExcluded);
            }
        }
        // Only a vote for the top can give it a majority, so `key` is the winner's.
        if (x.voting && x.topVotes * 2 > x.closedUpdates) {
            _decide(x, block.timestamp);
            _logDecision(x, round, block.timestamp, key);
            _tryClose(x);
        }
    }

    /// Make `key` the top candidate. Its full key and excluded count are stored only for a
    /// non-empty mask: an unmasked top can only win by a majority, which is decided eagerly.
    function _setTop(Ctx memory x, bytes32 key, uint256 prefix, uint256 excluded, uint256 second)
        private
    {
        x.topPrefix = prefix;
        x.topMasked = excluded != 0;
        if (x.topMasked) _jobs[x.id].topKey = key;
        if (x.topMasked || second != 0) _setAux(x, second, excluded);
    }

    /// (secondVotes, topExcluded) of the vote on c - 1; the slot is tagged with c.
    function _aux(Ctx memory x) private view returns (uint256 second, uint256 excluded) {
        uint256 a = _jobs[x.id].aux;
        if (x.round == 0 || a & _M20 != x.round) return (0, 0);
        return (a >> 20 & _M24, a >> 44 & _M24);
    }

    function _setAux(Ctx memory x, uint256 second, uint256 excluded) private {
        _jobs[x.id].aux = x.round | second << 20 | excluded << 44;
    }

    /// An empty mask excludes nothing; otherwise exactly ceil(|S|/8) bytes, bit i of byte
    /// i/8 (LSB first) for position i, at least one bit, none at or past |S|, not the
    /// voter's own. Returns the number of excluded positions.
    function _checkMask(Ctx memory x, uint256 round, bytes calldata mask, uint256 own)
        private
        pure
        returns (uint256 excluded)
    {
        uint256 len = mask.length;
        if (len == 0) return 0;
        uint256 n = x.closedUpdates;
        if (len != (n + 7) >> 3) revert InvalidMask(x.id, uint32(round), "length");
        if (n & 7 != 0 && uint8(mask[len - 1]) >> (n & 7) != 0) {
            revert InvalidMask(x.id, uint32(round), "bit past the last update");
        }
        if ((uint8(mask[own >> 3]) >> (own & 7)) & 1 != 0) {
            revert InvalidMask(x.id, uint32(round), "the voter's own update excluded");
        }
        for (uint256 i = 0; i < len; i += 32) {
            uint256 end = i + 32 < len ? i + 32 : len;
            excluded += _popcount(uint256(bytes32(mask[i:end])));
        }
        if (excluded == 0) revert InvalidMask(x.id, uint32(round), "no bit set: send empty bytes");
    }

    function _tryClose(Ctx memory x) private {
        if (
            _collecting(x)
                && (x.updates >= x.eligible || block.timestamp >= x.opensAt + x.roundTimeout)
        ) {
            uint256 round = x.round;
            _close(x, block.timestamp);
            _logClosed(x, round, block.timestamp);
        }
    }

    /// Whether round c may close once its count or clock says so.
    function _collecting(Ctx memory x) private pure returns (bool) {
        return x.status == Status.Active && !x.voting && x.round < x.rounds
            && x.updates >= x.minUpdates;
    }

    /// One due transition, applied to memory; the caller logs it (or, in views, drops it).
    function _advance(Ctx memory x)
        private
        view
        returns (uint256 kind, uint256 round, uint256 at, bool finalized)
    {
        uint256 now_ = block.timestamp;
        // An active job's transitions stop at its deadline; a cancelled one's last vote runs on.
        if (x.status == Status.Active && now_ >= x.deadline) now_ = x.deadline - 1;
        if (x.voting && now_ >= x.closedAt + x.voteTimeout) {
            at = x.closedAt + x.voteTimeout;
            round = x.round - 1;
            // An unmasked top with a majority was decided when it got it: only a masked
            // top can still win, by plurality among the updates it did not exclude.
            if (x.topMasked) {
                (uint256 second, uint256 excluded) = _aux(x);
                finalized = x.topVotes > second && x.topVotes * 2 > x.closedUpdates - excluded;
            }
            _decide(x, at);
            return (_STEP_DECIDED, round, at, finalized);
        }
        if (
            _collecting(x) && (x.updates >= x.eligible || now_ >= x.opensAt + x.roundTimeout)
        ) {
            // Lazily, a full round became closable when it opened (its updates came before).
            at = x.updates >= x.eligible ? x.opensAt : x.opensAt + x.roundTimeout;
            round = x.round;
            _close(x, at);
            return (_STEP_CLOSED, round, at, false);
        }
        if (x.status == Status.Active && block.timestamp >= x.deadline) {
            _loadRoll(x);
            x.status = Status.Expired;
            x.withdrawableAt = x.deadline + x.voteTimeout;
            return (_STEP_EXPIRED, 0, x.deadline, false);
        }
    }

    function _decide(Ctx memory x, uint256 at) private view {
        x.voting = false;
        if (x.status != Status.Active) return;
        if (x.round == x.rounds) {
            _loadRoll(x);
            x.status = Status.Finished;
            x.withdrawableAt = x.closedAt + 2 * x.voteTimeout;
        } else {
            x.opensAt = at;
        }
    }

    function _close(Ctx memory x, uint256 at) private view {
        x.closedAt = at;
        x.closedUpdates = x.updates;
        x.round += 1;
        x.updates = 0;
        x.opensAt = 0;
        x.voting = true;
        x.topVotes = 0;
        x.topPrefix = 0;
        x.topMasked = false;
        x.dissent = false;
        if (x.rollDirty) {
            _loadRoll(x);
            x.eligible = x.eligible + x.pending - x.drop;
            x.pending = 0;
            x.drop = 0;
            x.rollDirty = false;
        }
    }

    /// Apply and log every due transition (at most: a vote decided, a round closed, that
    /// round's vote decided, expiry).
    function _settle(Ctx memory x) private {
        // The usual case, cheaply: a vote or a round running within its time, before the end.
        uint256 now_ = block.timestamp;
        if (
            now_ < x.deadline
                && (
                    x.voting
                        ? now_ < x.closedAt + x.voteTimeout
                        : x.updates < x.eligible && now_ < x.opensAt + x.roundTimeout
                )
        ) return;
        for (uint256 i = 0; i < 4; ++i) {
            (uint256 kind, uint256 round, uint256 at, bool finalized) = _advance(x);
            if (kind == _STEP_NONE) return;
            if (kind == _STEP_DECIDED) {
                _logDecision(x, round, at, finalized ? _jobs[x.id].topKey : bytes32(0));
            }
            else if (kind == _STEP_CLOSED) _logClosed(x, round, at);
            else _logEnd(x, JobExpired.selector, at);
        }
    }

    // ---------------------------------------------------- member internals

    /// Take an active member out of the counts (the collecting round stops waiting for it).
    function _remove(Ctx memory x, Mem memory m, LeaveReason reason, MemberStatus status)
        private
    {
        bool wasActive = m.status == MemberStatus.Active;
        m.status = status;
        if (!wasActive) return;
        if (x.status == Status.Active) {
            _loadRoll(x);
            if (m.joinRound > x.round) x.pending -= 1;
            else if (m.lastRound == x.round + 1) (x.drop, x.rollDirty) = (x.drop + 1, true);
            else x.eligible -= 1;
            x.active -= 1;
        }
        uint64 seq = _chain(
            x, keccak256(abi.encode(Left.selector, x.id, m.account, x.seq + 1, reason))
        );
        emit Left(x.id, m.account, seq, reason);
    }

    function _slash(Ctx memory x, Mem memory m, SlashReason reason, uint256 round) private {
        if (m.status == MemberStatus.None || m.status == MemberStatus.Slashed || m.withdrawn) {
            revert NothingToSlash(x.id, m.account);
        }
        uint256 amount = _jobs[x.id].ownerBond >> 160;
        uint64 seq = _chain(
            x,
            keccak256(
                abi.encode(
                    Slashed.selector, x.id, m.account, x.seq + 1, reason, round, msg.sender, amount
                )
            )
        );
        emit Slashed(x.id, m.account, seq, reason, uint32(round), msg.sender, uint96(amount));
        _remove(x, m, LeaveReason.Slashed, MemberStatus.Slashed);
        _storeMember(x.id, m);
        _tryClose(x);
        _save(x);
        _pay(msg.sender, amount);
    }

    function _checkFinal(
        bytes32 jobId,
        uint256 round,
        bytes32 modelHash,
        bytes32 maskHash,
        bytes32 shardsHash
    ) private view {
        uint256 stored = uint80(_finalKeys[_roundKey(jobId, round)]);
        if (stored == 0 || stored != _prefix(modelHash, maskHash, shardsHash)) {
            revert BadEvidence(jobId, "not the round's finalized model and mask on record");
        }
    }

    // -------------------------------------------------------------- logging

    /// Count an event and fold it into the running hash; returns its seq.
    function _chain(Ctx memory x, bytes32 eventHash) private pure returns (uint64) {
        uint256 seq = x.seq + 1;
        uint256 h = x.logHash;
        // keccak256(abi.encodePacked(uint192 h, eventHash)) in scratch space
        assembly ("memory-safe") {
            mstore(0x00, shl(64, h))
            mstore(0x18, eventHash)
            h := and(keccak256(0x00, 0x38), 0xffffffffffffffffffffffffffffffffffffffffffffffff)
        }
        (x.seq, x.logHash) = (seq, h);
        return uint64(seq);
    }

    /// The seed is unknown while authors commit: the closing block's randomness over the
    /// running hash, which covers every update of the round.
    function _logClosed(Ctx memory x, uint256 round, uint256 at) private {
        bytes32 seed = keccak256(abi.encode(block.prevrandao, x.logHash));
        uint64 seq = _chain(
            x,
            keccak256(
                abi.encode(
                    RoundClosed.selector, x.id, round, x.seq + 1, x.closedUpdates, at, seed
                )
            )
        );
        emit RoundClosed(x.id, uint32(round), seq, uint32(x.closedUpdates), uint32(at), seed);
    }

    /// RoundFinalized with `key`, or RoundVoid when `key` is 0.
    function _logDecision(Ctx memory x, uint256 round, uint256 at, bytes32 key) private {
        uint64 seq;
        if (key != 0) {
            if (x.dissent || x.topMasked || x.keepKey) {
                _finalKeys[_roundKey(x.id, round)] = bytes10(uint80(x.topPrefix));
            }
            seq = _chain(
                x,
                keccak256(
                    abi.encode(
                        RoundFinalized.selector, x.id, round, x.seq + 1, key, x.topVotes, at
                    )
                )
            );
            emit RoundFinalized(x.id, uint32(round), seq, key, uint32(x.topVotes), uint32(at));
        } else {
            seq = _chain(x, keccak256(abi.encode(RoundVoid.selector, x.id, round, x.seq + 1, at)));
            emit RoundVoid(x.id, uint32(round), seq, uint32(at));
        }
        if (x.status == Status.Finished && round + 1 == x.rounds) {
            _logEnd(x, JobFinished.selector, at);
        }
    }

    /// JobFinished, JobCancelled and JobExpired share one shape.
    function _logEnd(Ctx memory x, bytes32 topic, uint256 at) private {
        uint64 seq = _chain(x, keccak256(abi.encode(topic, x.id, x.seq + 1, at)));
        if (topic == JobFinished.selector) emit JobFinished(x.id, seq, uint32(at));
        else if (topic == JobCancelled.selector) emit JobCancelled(x.id, seq, uint32(at));
        else emit JobExpired(x.id, seq, uint32(at));
    }

    // -------------------------------------------------------------- storage

    /// Load and settle a known job.
    function _open(bytes32 jobId) private returns (Ctx memory x) {
        x = _load(jobId);
        _settle(x);
    }

    function _load(bytes32 jobId) private view returns (Ctx memory x) {
        Job storage j = _jobs[jobId];
        uint256 h = j.hot;
        if (h == 0) revert UnknownJob(jobId);
        x.id = jobId;
        x.status = Status(h & 7);
        x.voting = h & 8 != 0;
        x.dissent = h & 16 != 0;
        x.topMasked = h & 32 != 0;
        x.rollDirty = h & 64 != 0;
        x.round = h >> 8 & _M20;
        x.updates = h >> 28 & _M24;
        x.eligible = h >> 52 & _M24;
        x.closedUpdates = h >> 76 & _M24;
        x.topVotes = h >> 100 & _M24;
        x.closedAt = h >> 124 & _M32;
        // c's clock runs from its vote's decision, within voteTimeout of closedAt.
        x.opensAt = x.voting ? 0 : x.closedAt + (h >> 156 & _M20);
        x.topPrefix = h >> 176;
        uint256 c = j.config;
        x.rounds = c & _M24;
        x.minUpdates = c >> 24 & _M24;
        x.maxParticipants = c >> 48 & _M24;
        x.roundTimeout = c >> 72 & _M24;
        x.voteTimeout = c >> 96 & _M24;
        x.joinUntil = c >> 120 & _M32;
        x.maxSamples = c >> 152 & _M64;
        x.deadline = c >> 216 & _M32;
        x.maxMissed = c >> 248;
        uint256 l = j.log;
        x.seq = l >> 192;
        x.logHash = l & _M192;
    }

    function _loadRoll(Ctx memory x) private view {
        if (x.rollLoaded) return;
        uint256 r = _jobs[x.id].roll;
        x.rollLoaded = true;
        x.pending = r & _M24;
        x.drop = r >> 24 & _M24;
        x.active = r >> 48 & _M24;
        x.joined = r >> 72 & _M32;
        x.withdrawableAt = r >> 104 & _M32;
    }

    function _save(Ctx memory x) private {
        Job storage j = _jobs[x.id];
        uint256 flags = uint256(x.status) | (x.voting ? 8 : 0) | (x.dissent ? 16 : 0)
            | (x.topMasked ? 32 : 0) | (x.rollDirty ? 64 : 0);
        uint256 openDelta = x.voting || x.opensAt == 0 ? 0 : x.opensAt - x.closedAt;
        j.hot = flags | x.round << 8 | x.updates << 28 | x.eligible << 52 | x.closedUpdates << 76
            | x.topVotes << 100 | x.closedAt << 124 | openDelta << 156 | x.topPrefix << 176;
        j.log = x.seq << 192 | x.logHash;
        if (x.rollLoaded) {
            j.roll = x.pending | x.drop << 24 | x.active << 48 | x.joined << 72
                | x.withdrawableAt << 104;
        }
    }

    function _loadMember(bytes32 jobId, address account) private view returns (Mem memory m) {
        uint256 s = _members[jobId][account];
        m.account = account;
        m.status = MemberStatus(uint8(s));
        m.joinRound = s >> 8 & _M24;
        m.lastRound = s >> 32 & _M24;
        m.lastPos = s >> 56 & _M24;
        m.prevRound = s >> 80 & _M24;
        m.prevPos = s >> 104 & _M24;
        m.voteRound = s >> 128 & _M24;
        m.voteKey = s >> 152 & _M80;
        m.withdrawn = s >> 248 != 0;
    }

    function _storeMember(bytes32 jobId, Mem memory m) private {
        _members[jobId][m.account] = uint256(m.status) | m.joinRound << 8 | m.lastRound << 32
            | m.lastPos << 56 | m.prevRound << 80 | m.prevPos << 104 | m.voteRound << 128
            | m.voteKey << 152 | (m.withdrawn ? 1 << 248 : 0);
    }

    /// A member's slot as its view, decoded straight from storage (pages stay cheap).
    function _view(address account, uint256 s) private pure returns (MemberView memory v) {
        uint256 last = s >> 32 & _M24;
        uint256 prev = s >> 80 & _M24;
        uint256 voted = s >> 128 & _M24;
        v.account = account;
        v.status = MemberStatus(uint8(s));
        v.withdrawn = s >> 248 != 0;
        v.joinRound = uint32(s >> 8 & _M24);
        v.lastRound = last == 0 ? NO_ROUND : uint32(last - 1);
        v.lastPosition = uint32(s >> 56 & _M24);
        v.prevRound = prev == 0 ? NO_ROUND : uint32(prev - 1);
        v.prevPosition = uint32(s >> 104 & _M24);
        v.voteRound = voted == 0 ? NO_ROUND : uint32(voted - 1);
        v.voteKey = bytes10(uint80(s >> 152));
    }

    // ---------------------------------------------------------------- pure

    function _checkParams(bytes32 specHash, bytes32 model0Hash, Params calldata p) private view {
        uint256 max256 = type(uint256).max;
        _bound("specHash", uint256(specHash), 1, max256);
        _bound("model0Hash", uint256(model0Hash), 1, max256);
        _bound("rounds", p.rounds, 1, _MAX_ROUNDS);
        _bound("maxParticipants", p.maxParticipants, 1, _MAX_COUNT);
        _bound("minUpdates", p.minUpdates, 1, p.maxParticipants);
        _bound("roundTimeout", p.roundTimeout, 1, _MAX_TIMEOUT);
        _bound("voteTimeout", p.voteTimeout, 1, _MAX_TIMEOUT);
        _bound("maxSamples", p.maxSamples, 1, type(uint64).max);
        _bound("deadline", p.deadline, block.timestamp + 1, block.timestamp + _MAX_LIFETIME);
        _bound("maxMissed", p.maxMissed, 1, type(uint8).max);
        if (p.allowRoot == 0) _bound("bond", p.bond, 1, type(uint96).max);
    }

    function _bound(bytes32 field, uint256 value, uint256 min, uint256 max) private pure {
        if (value < min || value > max) revert InvalidParameter(field, value, min, max);
    }

    /// OpenZeppelin-style Merkle proof with sorted pairs. The leaf is computed here from the
    /// sender (a 32-byte preimage), so an inner node (64 bytes) cannot pose as a leaf.
    function _onAllowList(bytes32[] calldata proof, bytes32 root, bytes32 leaf)
        private
        pure
        returns (bool)
    {
        bytes32 h = leaf;
        for (uint256 i = 0; i < proof.length; ++i) {
            bytes32 p = proof[i];
            h = h < p ? keccak256(abi.encodePacked(h, p)) : keccak256(abi.encodePacked(p, h));
        }
        return h == root;
    }

    /// The EIP-191 (personal_sign) signer of a 32-byte statement, or 0 when invalid.
    function _recover(bytes32 statement, bytes calldata sig) private pure returns (address) {
        if (sig.length != 65) return address(0);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v < 27) v += 27;
        if (uint256(s) > _HALF_N || (v != 27 && v != 28)) return address(0);
        bytes32 digest = keccak256(abi.encodePacked("\x19Ethereum Signed Message:\n32", statement));
        return ecrecover(digest, v, r, s);
    }

    /// Set bits of a word (SWAR; the last steps add in wide lanes so 256 set bits fit).
    function _popcount(uint256 w) private pure returns (uint256) {
        unchecked {
            w -= (w >> 1) & 0x5555555555555555555555555555555555555555555555555555555555555555;
            w = (w & 0x3333333333333333333333333333333333333333333333333333333333333333)
                + ((w >> 2) & 0x3333333333333333333333333333333333333333333333333333333333333333);
            w = (w + (w >> 4)) & 0x0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f;
            w = (w & 0x00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff)
                + ((w >> 8) & 0x00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff);
            w = (w & 0x0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff)
                + ((w >> 16) & 0x0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff);
            w = (w & 0x00000000ffffffff00000000ffffffff00000000ffffffff00000000ffffffff)
                + ((w >> 32) & 0x00000000ffffffff00000000ffffffff00000000ffffffff00000000ffffffff);
            w = (w & 0x0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff)
                + ((w >> 64) & 0x0000000000000000ffffffffffffffff0000000000000000ffffffffffffffff);
            return (w & _M64) + (w >> 128);
        }
    }

    function _roundKey(bytes32 jobId, uint256 round) private pure returns (bytes32) {
        return keccak256(abi.encode(jobId, round));
    }

    function _tallyKey(bytes32 jobId, uint256 round, uint256 prefix)
        private
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(jobId, round, prefix));
    }

    /// The first 80 bits of a candidate's key
    /// keccak256(abi.encode(modelHash, maskHash, shardsHash)).
    function _prefix(bytes32 modelHash, bytes32 maskHash, bytes32 shardsHash)
        private
        pure
        returns (uint256)
    {
        return uint256(keccak256(abi.encode(modelHash, maskHash, shardsHash))) >> _PREFIX_SHIFT;
    }

    function _max(uint256 a, uint256 b) private pure returns (uint256) {
        return a > b ? a : b;
    }

    function _pay(address to, uint256 amount) private {
        if (amount == 0) return;
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert PaymentFailed(to, amount);
    }
}
