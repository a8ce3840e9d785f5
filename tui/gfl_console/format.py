"""How the console writes node data as text: pure functions, shared by every pane.

Kept apart from the widgets so that they can be tested without a terminal and
so that every pane shortens a hash or sizes a byte count the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

DASH = "–"


def short(value: str | None, keep: int = 10) -> str:
    """A hash, peer id or address cut to ``keep`` characters plus an ellipsis."""
    if not value:
        return DASH
    value = str(value)
    return value if len(value) <= keep + 1 else value[:keep] + "…"


def human_bytes(n: float | None) -> str:
    """1536 -> "1.5 KiB"."""
    if n is None:
        return DASH
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """3725 -> "1h 02m 05s"; the largest two or three units a person reads at a glance."""
    if seconds is None:
        return DASH
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {s:02d}s"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def percent(value: float | None) -> str:
    """An accuracy in [0, 1] as "52.2%"."""
    return DASH if value is None else f"{100 * float(value):.1f}%"


def number(value: float | None, digits: int = 4) -> str:
    return DASH if value is None else f"{float(value):.{digits}f}"


def round_label(index: Any) -> str:
    """A round as people count it: the API's (and the chain's) round 0 is round "1"."""
    return str(int(index) + 1) if isinstance(index, int) and not isinstance(index, bool) else DASH


def round_progress(job: Mapping[str, Any]) -> str:
    """Rounds completed out of the job's total: "2/3"."""
    return f"{int(job.get('round') or 0)}/{int(job.get('rounds') or 0)}"


def counts(mapping: Mapping[str, Any] | None) -> str:
    """{"active": 1, "finished": 2} -> "active 1 · finished 2" (nonzero entries only)."""
    if not mapping:
        return "none"
    parts = [f"{k} {v}" for k, v in sorted(mapping.items()) if v]
    return " · ".join(parts) if parts else "none"


def reachability(net: Mapping[str, Any] | None) -> str:
    """A node's reachability and what it does about it: "private · relays 2 · 1 relayed peer"."""
    if not net:
        return DASH
    nat = net.get("nat") or {}
    parts = [str(net.get("reachability") or "unknown")]
    held = len(nat.get("reservations") or {})
    if held:
        parts.append(f"relays {held}")
    service = nat.get("relay_service") or {}
    if service.get("serving"):
        parts.append(f"relaying for {service.get('reservations', 0)}")
    relayed = (net.get("connections") or {}).get("relayed", 0)
    if relayed:
        parts.append(f"{relayed} relayed peer{'s' if relayed != 1 else ''}")
    return " · ".join(parts)


def bytes_by_path(net: Mapping[str, Any] | None) -> str:
    """Bytes in/out on direct and on relayed connections: "direct 1.2 MiB/300 KiB · relayed …"."""
    moved = (net or {}).get("bytes") or {}
    if not moved:
        return DASH
    parts = []
    for path in ("direct", "relayed", "relay_service"):
        got, sent = ((moved.get(path) or {}).get(k, 0) for k in ("in", "out"))
        if path == "relay_service" and not (got or sent):
            continue
        label = "relayed for others" if path == "relay_service" else path
        parts.append(f"{label} {human_bytes(got)} in/{human_bytes(sent)} out")
    return " · ".join(parts)


def clock(ts: float | None) -> str:
    """A Unix time as local HH:MM:SS."""
    return DASH if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def _value(key: str, value: Any) -> str:
    if key == "round":
        return round_label(value)
    if isinstance(value, float):
        if key in ("accuracy",):
            return percent(value)
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) > 20 and key != "error" and key != "reason":
        return short(value, 12)
    if isinstance(value, list):
        return (
            "[" + ", ".join(_value(key, v) for v in value[:6]) + (", …]" if len(value) > 6 else "]")
        )
    return str(value)


def event_text(event: Mapping[str, Any]) -> str:
    """One log line's body for an event: its type and its data as short key=value pairs."""
    data = event.get("data") or {}
    if event.get("type") == "console":
        return f"── {data.get('message', '')} ──"
    pairs = " ".join(f"{k}={_value(k, v)}" for k, v in data.items())
    return f"{event.get('type', '?')} {pairs}".rstrip()


def event_level(event_type: str) -> str:
    """How loud an event is: "error", "warning" or "info" (the log colours lines by it)."""
    if event_type in ("job.error", "job.fetch_failed", "job.divergence", "gap"):
        return "error"
    if event_type == "console":
        return "console"
    if event_type in (
        "job.rejected",
        "gossip_dropped",
        "node.stopping",
        "peer_disconnected",
        "job.cancelled",
        "job.state_lost",
    ):
        return "warning"
    return "info"


def matches(event: Mapping[str, Any], query: str) -> bool:
    """Whether a log filter matches: every word of ``query`` appears in the event's line."""
    words = query.lower().split()
    if not words:
        return True
    line = event_text(event).lower()
    return all(w in line for w in words)


def backoff(attempt: int, base: float = 0.5, cap: float = 8.0) -> float:
    """Seconds to wait before reconnection attempt ``attempt`` (0, 1, ...): doubling, capped."""
    return min(cap, base * 2.0 ** max(0, attempt))
