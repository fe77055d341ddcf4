"""Quota per lane: what each deployment's interactive and batch calls used in the last minute.

Read from the model-call spans the app exported: every HTTP attempt carries its deployment, its
lane (``shared.llm.lanes``), its tokens, its HTTP status and how long it waited for quota. Beside
that, the share of the deployment's tokens per minute each lane can count on under the lanes'
rules: interactive may take all of it, or ``1 - MIN_BATCH_SHARE`` while batch work waits; batch
keeps a floor of ``MIN_BATCH_SHARE`` while it has work, and gets more when interactive leaves room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.domain.messages import Priority
from shared.llm.lanes import LANES, MIN_BATCH_SHARE
from shared.telemetry.attributes import (
    GEN_AI_INPUT_TOKENS,
    GEN_AI_OUTPUT_TOKENS,
    GEN_AI_REQUEST_MODEL,
    HTTP_STATUS,
    LLM_LANE,
    LLM_OUTCOME,
    LLM_QUOTA_WAIT_S,
)


@dataclass(frozen=True)
class LaneQuota:
    """One lane of one deployment over the last window."""

    deployment: str
    lane: str
    used_tpm: float
    """Prompt plus completion tokens of the answered calls, per minute."""
    limit_tpm: int | None
    """What the lane can count on while the other lane has work too (see ``limit_note``)."""
    limit_note: str
    calls: int
    throttled: int
    """Attempts answered 429."""
    failed: int
    """Attempts that failed otherwise (5xx, timeouts, malformed answers, refusals)."""
    mean_wait_s: float
    max_wait_s: float

    @property
    def used_share(self) -> float | None:
        if not self.limit_tpm:
            return None
        return min(1.0, self.used_tpm / self.limit_tpm)


def lane_limit(lane: str, limit_tpm: int | None) -> tuple[int | None, str]:
    """The tokens per minute ``lane`` can count on while the other lane has work, and a note."""
    share = MIN_BATCH_SHARE if lane == Priority.BATCH else 1.0 - MIN_BATCH_SHARE
    limit = None if limit_tpm is None else int(limit_tpm * share)
    if lane == Priority.BATCH:
        return limit, f"a floor of {share:.0%}; more when interactive leaves room"
    return limit, f"{share:.0%} while batch work waits, all of it otherwise"


def lane_quotas(
    calls: Iterable[Mapping[str, Any]], limits: Mapping[str, int | None], *, window_s: float
) -> dict[str, list[LaneQuota]]:
    """Per deployment, one ``LaneQuota`` per lane, from the model-call span attributes
    ``calls`` of the last ``window_s`` seconds; deployments in ``limits`` or in ``calls``."""
    tally: dict[tuple[str, str], dict[str, Any]] = {}
    for attributes in calls:
        deployment = attributes.get(GEN_AI_REQUEST_MODEL)
        if not isinstance(deployment, str):
            continue
        lane = str(attributes.get(LLM_LANE) or Priority.INTERACTIVE)
        t = tally.setdefault(
            (deployment, lane), {"tokens": 0, "calls": 0, "429": 0, "failed": 0, "waits": []}
        )
        t["calls"] += 1
        status = attributes.get(HTTP_STATUS)
        outcome = attributes.get(LLM_OUTCOME)
        if status == 429:
            t["429"] += 1
        elif outcome not in (None, "ok"):
            t["failed"] += 1
        t["tokens"] += sum(
            _count(attributes.get(name)) for name in (GEN_AI_INPUT_TOKENS, GEN_AI_OUTPUT_TOKENS)
        )
        wait = attributes.get(LLM_QUOTA_WAIT_S)
        if isinstance(wait, int | float) and wait >= 0:
            t["waits"].append(float(wait))
    per_minute = 60.0 / window_s if window_s > 0 else 0.0
    found: dict[str, list[LaneQuota]] = {}
    for deployment in sorted(set(limits) | {d for d, _ in tally}):
        rows = []
        for lane in map(str, LANES):
            t = tally.get((deployment, lane), {"tokens": 0, "calls": 0, "429": 0, "failed": 0})
            waits: list[float] = t.get("waits", [])
            limit, note = lane_limit(lane, limits.get(deployment))
            rows.append(
                LaneQuota(
                    deployment=deployment,
                    lane=lane,
                    used_tpm=t["tokens"] * per_minute,
                    limit_tpm=limit,
                    limit_note=note,
                    calls=t["calls"],
                    throttled=t["429"],
                    failed=t["failed"],
                    mean_wait_s=sum(waits) / len(waits) if waits else 0.0,
                    max_wait_s=max(waits, default=0.0),
                )
            )
        found[deployment] = rows
    return found


def accounting_text(attributes: Mapping[str, Any] | None) -> str:
    """What the app's limiter learned of a deployment's accounting, in words; ``""`` if nothing."""
    if not attributes or not attributes.get("switchboard.llm.accounting"):
        return ""
    model = str(attributes["switchboard.llm.accounting"])
    seen = attributes.get("switchboard.llm.accounting_observations")
    return f"{model} (after {seen} answers)" if isinstance(seen, int) else model


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
