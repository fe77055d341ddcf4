"""bench.handover_sim: the simulated multi-instance burst runs the production limiter and ledger
to the end, and what it measures stays within what the server allows."""

from __future__ import annotations

import argparse
import asyncio

from bench.handover_sim import Pipeline


def test_a_small_burst_finishes_every_conversation_within_the_servers_quota() -> None:
    args = argparse.Namespace(
        conversations=60, tpm=200_000, latency_ms=1000.0, concurrency=16, timeout=600.0
    )
    figures = asyncio.run(Pipeline(args, seed=1).run())
    assert figures["finished"] == 60
    assert figures["failed"] == 0
    # The simulator's limiter admits no more than its window: the quota used over the drain
    # can be at most the whole of it.
    assert 0.0 < figures["use"] <= 1.0
    assert figures["calls"] >= 60 + 60  # intent and at least one critic call each
