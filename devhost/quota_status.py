"""The quota section of ``devhost status``: what the workers' limiters learned and how full
each deployment is, from the snapshots the host copies into ``state.json``.

Each worker's limiter publishes a ``QuotaSnapshot`` per deployment to the shared quota ledger on
its heartbeats (``shared.llm.ledger``): the SQLite ledger file or the store's ``quota``
container, whichever ``LLM_QUOTA_BACKEND`` names. The host reads them (``read_quota_status``,
``read_store_quota_status``) into the state's ``quota`` key. One line per deployment sums the
instances: tokens charged in the current window against their limits (and the deployment's
whole window: limits taken at different heartbeats may add up to more for a moment), requests
likewise, each lane's use, the 429s, and the accounting the limiters inferred (the one most
answers were scored for, when instances disagree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.adapters.document_quota import read_quota_status as read_store_quota_status
from shared.adapters.local.quota_ledger import read_quota_status
from shared.llm.quota_metrics import QuotaSnapshot

__all__ = ["quota_lines", "read_quota_status", "read_store_quota_status"]


def quota_lines(state: Mapping[str, Any] | None) -> list[str]:
    """The status lines for the ``quota`` part of a host's state (none when it has none)."""
    quota = (state or {}).get("quota") or {}
    if not isinstance(quota, Mapping):
        return []
    lines = []
    for deployment, entries in sorted(quota.items()):
        snapshots = _snapshots(entries)
        if snapshots:
            lines.append(_line(str(deployment), snapshots, entries))
    return lines


def _snapshots(entries: object) -> list[QuotaSnapshot]:
    if not isinstance(entries, Sequence):
        return []
    found = []
    for entry in entries:
        try:
            found.append(QuotaSnapshot.from_dict(entry))
        except ValueError:
            continue  # a row from another version: leave it out, show the rest
    return found


def _line(deployment: str, snapshots: list[QuotaSnapshot], entries: Sequence[Any]) -> str:
    learned = max(snapshots, key=lambda s: s.observations)
    tokens_used = sum(s.tokens_used for s in snapshots)
    tokens_limit = sum(s.token_limit for s in snapshots)
    requests_used = sum(s.requests_used for s in snapshots)
    requests_limit = sum(s.request_limit for s in snapshots)
    lanes: dict[str, float] = {}
    for snapshot in snapshots:
        for lane, state in snapshot.lanes.items():
            lanes[lane] = lanes.get(lane, 0.0) + state.tokens_used
    lane_text = ", ".join(f"{lane} {used:,.0f}" for lane, used in sorted(lanes.items()))
    trust = "settled" if learned.settled else "learning"
    oldest = max((float(e.get("age_s", 0.0)) for e in entries if isinstance(e, Mapping)), default=0)
    whole = learned.token_limit / learned.share if learned.share > 0 else 0.0
    return (
        f"{deployment}: accounting {learned.accounting} ({trust}, {learned.observations} answers)"
        f"; tokens {tokens_used:,.0f} / {tokens_limit:,.0f} per {learned.window_s:g}s"
        f" ({_ratio(tokens_used, tokens_limit)}; the deployment's {whole:,.0f})"
        f"; requests {requests_used:,.0f} / {requests_limit:,.0f}; lanes: {lane_text or '-'}"
        f"; 429s {sum(s.throttles for s in snapshots)}; {len(snapshots)} instance(s)"
        f", as of {oldest:.0f}s ago"
    )


def _ratio(used: float, limit: float) -> str:
    return f"{used / limit:.0%}" if limit > 0 else "-"
