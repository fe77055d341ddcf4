"""The token bucket of per-customer rate limiting at ingress.

A customer's bucket holds up to ``capacity`` tokens and gains ``per_second`` tokens a second;
each request takes one. A request that finds less than one token is refused, and told how long
until one is there. The bucket is a small document shared by every instance through the store
(``shared.service.admission``); this module is only the arithmetic, on the clock it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketPolicy:
    capacity: float
    per_second: float

    @classmethod
    def per_minute(cls, rate: float, burst: int) -> BucketPolicy:
        return cls(capacity=float(burst), per_second=rate / 60.0)

    @property
    def unlimited(self) -> bool:
        return self.per_second <= 0


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at: float
    """Epoch seconds of the last take."""


@dataclass(frozen=True)
class Admission:
    admitted: bool
    bucket: Bucket
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up (``Retry-After`` takes no fractions), at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


def take(bucket: Bucket | None, policy: BucketPolicy, now: float) -> Admission:
    """Take one token at ``now``. A clock that went back refills nothing (and takes nothing
    away): elapsed time is never negative."""
    if bucket is None:
        bucket = Bucket(tokens=policy.capacity, at=now)
    elapsed = max(0.0, now - bucket.at)
    tokens = min(policy.capacity, bucket.tokens + elapsed * policy.per_second)
    if tokens >= 1.0:
        return Admission(True, Bucket(tokens - 1.0, max(now, bucket.at)))
    wait = (1.0 - tokens) / policy.per_second
    return Admission(False, Bucket(tokens, max(now, bucket.at)), retry_after_s=wait)
