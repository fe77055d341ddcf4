"""bench.handover_sim: the simulated multi-instance burst runs the production limiter and ledger
to the end, and what it measures stays within what the server allows."""

from __future__ import annotations

import argparse
import asyncio
import math

from bench.handover_sim import Pipeline


def test_a_small_burst_finishes_every_conversation_within_the_servers_quota() -> None:
    args = argparse.Namespace(
        conversations=60, tpm=200_000, latency_ms=1000.0, concurrency=16, timeout=600.0
    )
    figures = asyncio.run(Pipeline(args, seed=1).run())
    assert figures["finished"] == 60
    assert figures["failed"] == 0
    # Azure evaluates the quota over 10 s windows, each holding a sixth of the minute's tokens
    # ("Understanding rate limits", https://learn.microsoft.com/azure/ai-services/openai/how-to/
    # quota), and the simulator's Azure limiter keeps that window. A drain of d seconds then
    # spans at most ceil(d / 10) windows' worth of tokens: use (the charged tokens over the
    # minute's rate x d) cannot exceed ceil(d / 10) x 10 / d, nor be nothing.
    drained = figures["drained_s"]
    assert 0.0 < figures["use"] <= math.ceil(drained / 10.0) * 10.0 / drained
    assert figures["calls"] >= 60 + 60  # intent and at least one critic call each
