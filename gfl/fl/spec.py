"""The job spec: what every participant trains, and the bytes whose sha256 goes on chain.

A spec is a frozen dataclass. Its canonical encoding is msgpack with sorted map keys
and floats always as float64, so the same spec gives the same bytes (and hash) in any
process on any machine. Decoding is bounded and validated: a peer's bytes are input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from gfl.errors import GflError

if TYPE_CHECKING:
    from gfl.fl.privacy import PrivacySettings
    from gfl.fl.secagg import SecAggParams

SPEC_VERSION = 3  # 3: reduced deltas rounded to the tensor dtype (protocol 6.4)
MAX_SPEC_BYTES = 64 * 1024
_MAX_NAME = 128
_MAX_DEPTH = 4

TASKS = ("classification",)
WEIGHTINGS = ("samples", "equal")
AGGREGATIONS = ("auto", "all", "sharded")  # docs/protocol.md, section 8
MAX_PARTICIPANTS = (1 << 24) - 1
MAX_TIMEOUT_S = 7 * 86400
MAX_LIFETIME_S = 365 * 86400
MAX_BOND_WEI = (1 << 96) - 1
DEAL_TIMEOUT_S = 60  # secure aggregation: how long a round's dealing stays open (several blocks)
_ADMISSION_KEYS = frozenset({"allow", "bond"})
_SECAGG_KEYS = frozenset({"threshold", "neighbours", "clip", "weight_levels", "word_bits"})
_UNITS = {"wei": 1, "gwei": 10**9, "ether": 10**18, "eth": 10**18}


class SpecError(GflError):
    """A job spec is malformed or violates a rule."""


def _check_value(value: Any, where: str, depth: int = 0) -> Any:
    """Allow only plain msgpack-able values in kwargs; return a canonical copy."""
    if depth > _MAX_DEPTH:
        raise SpecError(f"{where}: nested too deeply")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"{where}: {value} is not a finite number")
        return value
    if isinstance(value, list | tuple):
        return [_check_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SpecError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _check_value(v, f"{where}.{k}", depth + 1)
        return dict(sorted(out.items()))
    raise SpecError(f"{where}: unsupported value {value!r} (use numbers, strings, lists, tables)")


def parse_wei(value: Any, where: str = "admission.bond") -> int:
    """An amount of ether: an integer number of wei, or a string ``"<number> <unit>"`` with
    unit wei, gwei or ether (``"0.01 ether"``); exact, never through a float."""
    from decimal import Decimal, InvalidOperation

    if isinstance(value, int) and not isinstance(value, bool):
        wei = value
    elif isinstance(value, str):
        number, _, unit = value.strip().partition(" ")
        scale = _UNITS.get(unit.strip().lower() or "wei")
        try:
            amount = Decimal(number) * (scale or 0)
        except InvalidOperation:
            amount = Decimal(-1)
        if scale is None or amount != amount.to_integral_value():
            raise SpecError(f'{where}: {value!r} is not an amount like "0.01 ether" or wei')
        wei = int(amount)
    else:
        raise SpecError(f'{where}: {value!r} is not an amount like "0.01 ether" or wei')
    if not 0 <= wei <= MAX_BOND_WEI:
        raise SpecError(f"{where} must be between 0 and 2^96 - 1 wei")
    return wei


def _admission(value: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical admission table: ``allow`` as sorted lower-case addresses, ``bond`` as a
    decimal string of wei (msgpack integers stop at 2^64)."""
    unknown = sorted(set(value) - _ADMISSION_KEYS)
    if unknown:
        raise SpecError(f"admission has no setting(s) {', '.join(unknown)} (allow, bond)")
    out: dict[str, Any] = {}
    allow = value.get("allow", [])
    if not isinstance(allow, list | tuple) or not all(isinstance(a, str) for a in allow):
        raise SpecError("admission.allow must be a list of addresses")
    addresses = set()
    for a in allow:
        hx = a.lower().removeprefix("0x")
        if len(hx) != 40 or any(c not in "0123456789abcdef" for c in hx):
            raise SpecError(f"admission.allow: {a!r} is not an address (0x and 40 hex digits)")
        addresses.add("0x" + hx)
    if len(addresses) > MAX_PARTICIPANTS:
        raise SpecError("admission.allow is longer than any job may be")
    if addresses:
        out["allow"] = sorted(addresses)
    if "bond" in value:
        out["bond"] = str(parse_wei(value["bond"]))
    return out


def _privacy(table: Mapping[str, Any]) -> PrivacySettings:
    from gfl.fl.privacy import PrivacyError, PrivacySettings

    try:
        return PrivacySettings.from_table(table)
    except PrivacyError as e:
        raise SpecError(str(e)) from None


def _secure(table: Mapping[str, Any]) -> dict[str, Any]:
    """The secure_aggregation table in canonical form (docs/protocol.md 9.1), or SpecError."""
    from gfl.fl.secagg import SecAggError, SecAggParams

    rest = dict(table)
    masks = rest.pop("masks", True)
    if not isinstance(masks, bool):
        raise SpecError(f"secure_aggregation.masks must be true or false, got {masks!r}")
    deal_timeout = rest.pop("deal_timeout", DEAL_TIMEOUT_S)
    if not (isinstance(deal_timeout, int) and not isinstance(deal_timeout, bool)) or not (
        1 <= deal_timeout <= MAX_TIMEOUT_S
    ):
        raise SpecError(
            f"secure_aggregation.deal_timeout must be an integer in [1, {MAX_TIMEOUT_S}], "
            f"got {deal_timeout!r}"
        )
    try:
        p = SecAggParams.from_table(rest)
    except SecAggError as e:
        raise SpecError(str(e)) from None
    return {
        "clip": p.clip,
        "deal_timeout": deal_timeout,
        "masks": masks,
        "neighbours": p.neighbours,
        "threshold": p.threshold,
        "weight_levels": p.weight_levels,
        "word_bits": p.word_bits,
    }


def _sorted(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [_sorted(v) for v in obj]
    return obj


@dataclass(frozen=True)
class JobSpec:
    """Everything a participant needs to take part in a job, and nothing node-specific."""

    name: str
    model: str
    dataset: str
    rounds: int
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    task: str = "classification"
    local_epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "fedavg"
    strategy_kwargs: Mapping[str, Any] = field(default_factory=dict)
    min_updates: int = 1
    round_timeout: int = 300
    compression: str = "none"
    seed: int = 0
    trainer: str = "default"
    weighting: str = "samples"
    max_samples: int = 0  # cap on the samples one update may claim; required with "samples"
    vote_timeout: int = 60
    availability_timeout: int = 20
    max_participants: int = 64
    join_until: int = 1_000_000  # joins accepted while the collecting round is at most this
    max_missed: int = 2
    lifetime: int = 0  # seconds from registration to the job's deadline; 0: from the timeouts
    admission: Mapping[str, Any] = field(default_factory=dict)
    privacy: Mapping[str, Any] = field(default_factory=dict)  # DP-SGD; {}: none (not encoded)
    aggregation: str = "auto"  # "all", "sharded", or "auto": sharded when the round is large
    replicas: int = 3  # aggregators per shard in a sharded round
    shards: int = 0  # shards per update; 0: one per 2^18 parameters of the model (1..256)
    # {threshold, neighbours, clip, weight_levels, masks, deal_timeout}; {}: none (not encoded)
    secure_aggregation: Mapping[str, Any] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        tables = ("model_kwargs", "optimizer_kwargs", "strategy_kwargs", "admission", "privacy")
        for name in (*tables, "secure_aggregation"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise SpecError(f"{name} must be a table of settings, got {value!r}")
            set_(self, name, _check_value(value, name))
        set_(self, "admission", _admission(self.admission))
        if self.privacy:
            set_(self, "privacy", _privacy(self.privacy).to_table())
        if self.secure_aggregation:
            set_(self, "secure_aggregation", _secure(self.secure_aggregation))
        if isinstance(self.lr, int) and not isinstance(self.lr, bool):
            set_(self, "lr", float(self.lr))
        self._validate()

    def _validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise SpecError(msg)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for f in (
            "name",
            "model",
            "dataset",
            "task",
            "optimizer",
            "strategy",
            "compression",
            "trainer",
            "weighting",
        ):
            v = getattr(self, f)
            need(
                isinstance(v, str) and 0 < len(v) <= _MAX_NAME,
                f"{f} must be a non-empty string of at most {_MAX_NAME} characters",
            )
        need(
            self.version == SPEC_VERSION,
            f"spec version {self.version!r} is not supported (this node reads {SPEC_VERSION})",
        )
        for f, lo, hi in (
            ("rounds", 1, 1_000_000),
            ("local_epochs", 1, 10_000),
            ("batch_size", 1, 1 << 20),
            ("max_participants", 1, MAX_PARTICIPANTS),
            ("min_updates", 1, MAX_PARTICIPANTS),
            ("round_timeout", 1, MAX_TIMEOUT_S),
            ("vote_timeout", 1, MAX_TIMEOUT_S),
            ("availability_timeout", 1, MAX_TIMEOUT_S),
            ("max_samples", 0, 2**63 - 1),
            ("join_until", 0, 1_000_000),
            ("max_missed", 1, 255),
            ("lifetime", 0, MAX_LIFETIME_S),
            ("seed", 0, 2**63 - 1),
        ):
            v = getattr(self, f)
            need(is_int(v) and lo <= v <= hi, f"{f} must be an integer in [{lo}, {hi}], got {v!r}")
        need(
            self.min_updates <= self.max_participants,
            f"min_updates ({self.min_updates}) exceeds max_participants ({self.max_participants})",
        )
        need(
            self.availability_timeout < self.vote_timeout,
            "availability_timeout must be shorter than vote_timeout (the votes come after it)",
        )
        need(
            self.weighting in WEIGHTINGS,
            f"weighting {self.weighting!r} is unknown; known: {', '.join(WEIGHTINGS)}",
        )
        need(
            self.weighting != "equal" or self.max_samples in (0, 1),
            'with weighting = "equal" every update counts once: leave max_samples out',
        )
        need(
            "max_samples" not in self.strategy_kwargs,
            "max_samples is a job setting (the chain enforces it), not a strategy setting",
        )
        need(
            isinstance(self.lr, float) and math.isfinite(self.lr) and self.lr > 0,
            f"lr must be a positive number, got {self.lr!r}",
        )
        # Late imports: codec, optimizer options, strategies: numpy at most (spec stays cheap).
        from gfl.fl.codec import CodecError, parse_compression
        from gfl.fl.optim import OptimizerOptionError, check_options
        from gfl.fl.strategies import StrategyError, make_strategy

        if self.trainer == "default":
            need(self.task in TASKS, f"task {self.task!r} is unknown; known: {', '.join(TASKS)}")
            try:
                check_options(self.optimizer, self.optimizer_kwargs)
            except OptimizerOptionError as e:
                raise SpecError(str(e)) from None
        try:
            parse_compression(self.compression)
        except CodecError as e:
            raise SpecError(str(e)) from None
        try:
            strategy = make_strategy(self.strategy, self.strategy_kwargs)  # checks its settings
        except StrategyError as e:
            raise SpecError(str(e)) from None
        self._validate_aggregation(strategy.coordinatewise)
        if self.secure_aggregation:
            self._validate_secure()
        mu = self.strategy_kwargs.get("mu", 0.0)
        need(
            isinstance(mu, int | float) and not isinstance(mu, bool) and mu >= 0,
            f"strategy_kwargs.mu must be a number >= 0, got {mu!r}",
        )
        if self.privacy and self.privacy["mode"] == "distributed":
            need(
                bool(self.secure_aggregation) and self.secure_aggregation["masks"],
                '[privacy] mode = "distributed" needs secure_aggregation with masks: the noise '
                "is shared among the participants and only their masked sum is ever seen",
            )
            need(
                self.weighting == "equal",
                '[privacy] mode = "distributed" needs weighting = "equal": with sample weights '
                "one participant could move the sum by more than the clip",
            )
        elif self.privacy:
            need(
                self.trainer == "default",
                "[privacy] needs the default trainer (its accounting is what nodes check)",
            )
            need(
                not mu,
                "[privacy] with FedProx (strategy_kwargs.mu > 0) is not supported: the "
                "proximal term's gradient is not clipped per sample",
            )

    def _validate_aggregation(self, coordinatewise: bool) -> None:
        from gfl.fl.shards import MAX_REPLICAS, MAX_SHARDS

        if self.aggregation not in AGGREGATIONS:
            raise SpecError(
                f"aggregation {self.aggregation!r} is unknown; known: {', '.join(AGGREGATIONS)}"
            )
        for f, lo, hi in (("replicas", 1, MAX_REPLICAS), ("shards", 0, MAX_SHARDS)):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise SpecError(f"{f} must be an integer in [{lo}, {hi}], got {v!r}")
        if self.aggregation == "sharded" and not coordinatewise:
            raise SpecError(
                f'aggregation = "sharded" needs a per-coordinate strategy; {self.strategy} '
                'compares whole updates (use "all" or "auto")'
            )

    def _validate_secure(self) -> None:
        from gfl.fl.secagg import SecAggError, SecAggParams, strategy_problem

        problem = strategy_problem(self.strategy)
        if problem:
            raise SpecError(problem)
        if self.compression != "none":
            raise SpecError(
                "secure_aggregation encodes updates in its own fixed point: leave compression out"
            )
        if self.privacy and self.privacy["mode"] != "distributed":
            raise SpecError(
                '[privacy] with secure_aggregation takes mode = "distributed": local DP-SGD '
                "noise is cut by the fixed point's range"
            )
        table = {k: v for k, v in self.secure_aggregation.items() if k in _SECAGG_KEYS}
        try:
            SecAggParams.from_table(table).fixed_point(self.max_participants, self.sample_cap or 1)
        except SecAggError as e:
            raise SpecError(str(e)) from None

    @property
    def secure(self) -> SecAggParams | None:
        """The job's `SecAggParams`, or None for a job without secure aggregation."""
        if not self.secure_aggregation:
            return None
        from gfl.fl.secagg import SecAggParams

        table = {k: v for k, v in self.secure_aggregation.items() if k in _SECAGG_KEYS}
        return SecAggParams.from_table(table)

    # -- canonical encoding ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (kwargs as plain dicts); ``privacy`` and
        ``secure_aggregation`` only when set, so a job without them keeps its bytes and hash."""
        return {
            f.name: _sorted(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("privacy", "secure_aggregation") or getattr(self, f.name)
        }

    def to_bytes(self) -> bytes:
        """The canonical bytes: msgpack, sorted keys, floats as float64."""
        out: bytes = msgpack.packb(
            _sorted(self.to_dict()), use_bin_type=True, use_single_float=False
        )
        return out

    @property
    def spec_hash(self) -> bytes:
        """sha256 of the canonical bytes: the hash registered on chain."""
        return hashlib.sha256(self.to_bytes()).digest()

    def __hash__(self) -> int:
        return int.from_bytes(self.spec_hash[:8], "big")

    @property
    def sample_cap(self) -> int:
        """The most samples one update may claim on chain (1 with equal weighting)."""
        return 1 if self.weighting == "equal" else self.max_samples

    @property
    def bond_wei(self) -> int:
        return int(self.admission.get("bond", "0"))

    @property
    def allow_list(self) -> tuple[str, ...]:
        return tuple(self.admission.get("allow", ()))

    @property
    def privacy_settings(self) -> PrivacySettings | None:
        """The job's DP-SGD settings, or None for a job trained without differential privacy."""
        return _privacy(self.privacy) if self.privacy else None

    def publish_problems(self) -> list[str]:
        """What a job must state before it can be registered (empty when nothing is missing)."""
        out = []
        if self.weighting == "samples" and not self.max_samples:
            out.append(
                "max_samples is required (the most samples one update may claim), "
                'or set weighting = "equal"'
            )
        if not self.allow_list and not self.bond_wei:
            out.append(
                "the job needs an admission rule: [admission] allow = [addresses] and/or "
                'bond = "0.01 ether" (an open job without a bond admits anyone for free)'
            )
        if self.allow_list and len(self.allow_list) < self.min_updates:
            out.append(
                f"min_updates ({self.min_updates}) exceeds the {len(self.allow_list)} "
                "addresses admission.allow admits"
            )
        if self.privacy and self.privacy["mode"] == "local":  # builds the model: torch here
            from gfl.fl.privacy import model_problem

            problem = model_problem(self.model, self.model_kwargs)
            if problem:
                out.append(problem)
        return out

    def deadline_after(self, registered_at: int) -> int:
        """The job's deadline for a registration at ``registered_at`` (unix seconds)."""
        lifetime = self.lifetime or min(
            MAX_LIFETIME_S, 2 * self.rounds * (self.round_timeout + self.vote_timeout) + 3600
        )
        return registered_at + lifetime

    @property
    def proximal_mu(self) -> float:
        """FedProx's mu (0 unless the strategy sets one): the trainer adds mu/2*||w-w_g||^2."""
        return float(self.strategy_kwargs.get("mu", 0.0))

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Build from a plain mapping, refusing unknown keys."""
        if not isinstance(data, Mapping):
            raise SpecError("a job spec must be a table of settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown job setting(s): {', '.join(map(str, unknown))}")
        missing = [k for k in ("name", "model", "dataset", "rounds") if k not in data]
        if missing:
            raise SpecError(f"missing job setting(s): {', '.join(missing)}")
        try:
            return cls(**dict(data))
        except TypeError as e:  # wrong types for dataclass machinery
            raise SpecError(f"invalid job spec: {e}") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> JobSpec:
        """Decode canonical bytes from a peer; bounded, validated, and re-encoded identically."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SpecError("job spec bytes expected")
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(f"job spec is {len(data)} bytes; the limit is {MAX_SPEC_BYTES}")
        try:
            obj = msgpack.unpackb(
                bytes(data),
                raw=False,
                strict_map_key=True,
                max_str_len=MAX_SPEC_BYTES,
                max_bin_len=0,
                max_array_len=4096,
                max_map_len=256,
                max_ext_len=0,
            )
        except Exception as e:  # msgpack raises many types for garbage
            raise SpecError(f"job spec bytes are not valid msgpack: {e}") from None
        spec = cls.from_dict(obj)
        if spec.to_bytes() != bytes(data):
            raise SpecError("job spec bytes are not in canonical form")
        return spec

    @classmethod
    def from_toml(cls, text: str) -> JobSpec:
        """Parse a TOML job file (top-level keys, or a [job] table; kwargs as sub-tables)."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"job file is not valid TOML: {e}") from None
        if set(doc) == {"job"}:
            doc = doc["job"]
        return cls.from_dict(doc)

    def to_toml(self) -> str:
        """The spec as a TOML job file (round-trips through from_toml)."""
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    @staticmethod
    def builder(name: str) -> JobBuilder:
        """Start a fluent builder: JobSpec.builder("x").model("mlp").data("digits").build()."""
        return JobBuilder(name)


def load_job_file(path: str | Path) -> JobSpec:
    """Read a TOML job file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read job file {p}: {e.strerror}") from None
    return JobSpec.from_toml(text)


class JobBuilder:
    """Fluent construction of a JobSpec for scripted job publishing (the seed's Job Generator)."""

    def __init__(self, name: str) -> None:
        self._d: dict[str, Any] = {"name": name}

    def model(self, name: str, **kwargs: Any) -> JobBuilder:
        self._d.update(model=name, model_kwargs=kwargs)
        return self

    def data(self, dataset: str, task: str = "classification") -> JobBuilder:
        self._d.update(dataset=dataset, task=task)
        return self

    def train(
        self,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        optimizer: str | None = None,
        lr: float | None = None,
        **optimizer_kwargs: Any,
    ) -> JobBuilder:
        for k, v in (
            ("local_epochs", epochs),
            ("batch_size", batch_size),
            ("optimizer", optimizer),
            ("lr", lr),
        ):
            if v is not None:
                self._d[k] = v
        if optimizer_kwargs:
            self._d["optimizer_kwargs"] = optimizer_kwargs
        return self

    def strategy(self, name: str, **kwargs: Any) -> JobBuilder:
        self._d.update(strategy=name, strategy_kwargs=kwargs)
        return self

    def rounds(
        self, n: int, *, min_updates: int | None = None, timeout: int | None = None
    ) -> JobBuilder:
        self._d["rounds"] = n
        if min_updates is not None:
            self._d["min_updates"] = min_updates
        if timeout is not None:
            self._d["round_timeout"] = timeout
        return self

    def compression(self, scheme: str) -> JobBuilder:
        self._d["compression"] = scheme
        return self

    def seed(self, seed: int) -> JobBuilder:
        self._d["seed"] = seed
        return self

    def trainer(self, name: str) -> JobBuilder:
        self._d["trainer"] = name
        return self

    def build(self) -> JobSpec:
        return JobSpec.from_dict(self._d)
