"""kill -9 during outbox sends: workers die right before an outcome message leaves (the
outcome is stored, the message is not) and right after (sent, not yet marked sent). Every
conversation still emits exactly one outcome message: none lost, none delivered twice.

A kill takes every invocation of that worker with it, so a message can be cut short on
every one of its deliveries and reach the queue's dead letters (MaxDeliveryCount), as on
Azure; the operator's replay (``devhost dlq replay``) then finishes it, and its outcome
message, still pending in the conversation, leaves then - once."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from devhost.environment import PROJECT_ROOT
from devhost.host import Host, SimulatorOptions
from devhost.outcomes import EVERYTHING, OutcomesTopic, decode, outcome_messages
from devhost.scaler import ScaleLimits
from shared.domain.messages import Stage
from shared.ports import Doc
from tests.support.devhost_run import FINAL, conversations, post, request_lines, workdir

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

CONVERSATIONS = int(os.environ.get("CHAOS_OUTBOX_CONVERSATIONS", "100"))
KILL_RATE = "0.2"
"""The chance that one outcome send kills its worker (half before the send, half after)."""
FAULTS = Path(__file__).resolve().parent / "outbox_faults"
"""Its sitecustomize.py puts the kills into the worker interpreters."""


async def test_killing_workers_around_outbox_sends_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    kills = tmp_path / "kills.log"
    environ = {
        **os.environ,
        "DEVHOST_LOCK_DURATION_S": "3",
        "CHAOS_OUTBOX_KILL": KILL_RATE,
        "CHAOS_OUTBOX_LOG": str(kills),
        "PYTHONPATH": os.pathsep.join([str(FAULTS), str(PROJECT_ROOT)]),
    }
    limits = ScaleLimits(max_instances=2, max_step_up=2, polling_interval_s=0.5, cooldown_s=30)
    async with Host(
        workdir(tmp_path),
        simulator=SimulatorOptions(tpm=50_000_000, latency_ms=20),
        http_port=0,
        limits=limits,
        environ=environ,
    ) as host:
        settings = post(host, request_lines(CONVERSATIONS, prefix="outbox"))
        assert host.broker is not None
        replayed = 0
        docs: list[Doc] = []
        deadline = time.monotonic() + 360
        while time.monotonic() < deadline:
            docs = await conversations(host, settings)
            if len(docs) == CONVERSATIONS and all(_settled(d) for d in docs):
                break
            stats = host.broker.queue_stats()
            agents = [settings.queues.for_stage(stage) for stage in Stage]
            if not any(stats[q].active or stats[q].locked or stats[q].scheduled for q in agents):
                for queue in agents:  # what an operator does: replay the dead letters
                    replayed += host.broker.replay_deadletters(queue)
            await asyncio.sleep(1.0)
        topic = OutcomesTopic.from_files()
        messages = [
            decode(m) for m in outcome_messages(host.broker, topic, EVERYTHING, limit=10_000)
        ]
        delivered = outcome_messages(host.broker, topic, "delivery-chat", limit=10_000)
        accepted, dropped = host.broker.topic_totals(topic.name)

    moments = Counter(line.split()[0] for line in kills.read_text().splitlines())
    per_conversation = Counter(m["conversationId"] for m in messages)
    figures = {
        "conversations": CONVERSATIONS,
        "killed before a send": moments["before"],
        "killed after a send": moments["after"],
        "outcome messages": len(messages),
        "lost": CONVERSATIONS - len(per_conversation),
        "duplicated": sum(n - 1 for n in per_conversation.values()),
        "re-sends dropped by the topic": dropped,
        "dead letters replayed": replayed,
    }
    print("outbox chaos:", figures)
    assert moments["before"] >= 3, figures
    assert moments["after"] >= 3, figures
    assert [d["conversationId"] for d in docs if d["status"] not in FINAL] == []
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert len(messages) == len({m["messageId"] for m in messages}) == CONVERSATIONS
    assert len(delivered) == CONVERSATIONS  # every request came on chat: one delivery each
    assert accepted == CONVERSATIONS
    assert all(_settled(d) for d in docs)


def _settled(doc: Doc) -> bool:
    """Final, with its one outcome message marked sent."""
    outbox = doc.get("outbox", [])
    return doc["status"] in FINAL and len(outbox) == 1 and outbox[0].get("sentAt") is not None
