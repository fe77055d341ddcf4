"""A response cache for identical deterministic requests.

Only requests at temperature 0 are cached: the same deployment, messages, schema and token limit
then ask for the same answer, and a redelivered message, a replayed dead letter or two customers
sending the same text (batch imports repeat a lot) need not spend quota twice. The cache is per
process, bounded (LRU) and time-limited; a hit is reported as ``cached=True`` at no cost.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from shared.llm.clock import Clock, SystemClock
from shared.ports import ChatRequest, ChatResult


def is_cacheable(request: ChatRequest) -> bool:
    """Only deterministic requests (temperature 0) may be answered from the cache."""
    return request.temperature == 0


def cache_key(deployment: str, request: ChatRequest) -> str:
    """A digest of everything that decides the answer: deployment, messages, schema, limits."""
    material = {
        "deployment": deployment,
        "messages": request.messages,
        "schema_name": request.schema_name,
        "schema": request.json_schema,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    }
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass
class _Entry:
    result: ChatResult
    expires: float


class ResponseCache:
    """LRU with a time-to-live; ``hits`` and ``misses`` count lookups."""

    def __init__(
        self, *, max_entries: int = 4096, ttl_s: float = 3600.0, clock: Clock | None = None
    ) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("max_entries and ttl_s must be positive")
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock or SystemClock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, keys: Sequence[str]) -> ChatResult | None:
        """The first live entry among ``keys`` (one hit or one miss, whatever their number)."""
        now = self._clock.monotonic()
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.expires <= now:
                del self._entries[key]
                continue
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.result
        self.misses += 1
        return None

    def put(self, key: str, result: ChatResult) -> None:
        self._entries[key] = _Entry(result, self._clock.monotonic() + self._ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
