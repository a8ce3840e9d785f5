"""Secure aggregation (SecAgg+ over the chain's update set): pure protocol library.

A participant quantises its update to words mod 2^w, w = 16, 24 or 32 (`fixedpoint`),
deals Shamir shares of its round secrets to its neighbours in the round's graph (`graph`,
`shares`), and publishes only the masked vector (`masking`). Once the chain fixed the
round's update set S, holders reveal one kind of share per dealer (`reveal`), and anyone
rebuilds the secrets and takes the masks off the sum of S, on any coordinate range
(`unmask`). docs/protocol.md section 9 fixes the formats and the arithmetic. No I/O here:
callers move the bytes.
"""

from gfl.fl.secagg.context import RoundContext, address, addresses
from gfl.fl.secagg.errors import SecAggError
from gfl.fl.secagg.fixedpoint import (
    FixedPoint,
    encode,
    flatten,
    integer_weight,
    pack,
    unflatten,
    unpack,
    wrapping_sum,
)
from gfl.fl.secagg.graph import NeighbourGraph
from gfl.fl.secagg.keys import PAIR, SELF, MaskingKey
from gfl.fl.secagg.masking import mask, mask_update, mask_words
from gfl.fl.secagg.params import FEDAVG_FAMILY, SecAggParams, strategy_problem
from gfl.fl.secagg.reveal import RevealGuard, RevealSet, reveal, survivor_problem
from gfl.fl.secagg.shares import MaskSecrets, SharesBlob, deal, recover_secrets
from gfl.fl.secagg.unmask import Incomplete, Missing, Recovery, recover

__all__ = [
    "FEDAVG_FAMILY",
    "PAIR",
    "SELF",
    "FixedPoint",
    "Incomplete",
    "MaskSecrets",
    "MaskingKey",
    "Missing",
    "NeighbourGraph",
    "Recovery",
    "RevealGuard",
    "RevealSet",
    "RoundContext",
    "SecAggError",
    "SecAggParams",
    "SharesBlob",
    "address",
    "addresses",
    "deal",
    "encode",
    "flatten",
    "integer_weight",
    "mask",
    "mask_update",
    "mask_words",
    "pack",
    "recover",
    "recover_secrets",
    "reveal",
    "strategy_problem",
    "survivor_problem",
    "unflatten",
    "unpack",
    "wrapping_sum",
]
