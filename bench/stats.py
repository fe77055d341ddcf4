"""Statistics shared by the benchmarks, so every printed percentile means the same thing.

The percentile is devhost's own (the demo's "where the time went" table prints it too); the
benchmarks build on devhost, so the one definition lives there.
"""

from __future__ import annotations

from devhost.time_table import percentile

__all__ = ["percentile"]
