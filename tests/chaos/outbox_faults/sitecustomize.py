"""Fault injection for tests/chaos/test_outbox_kills.py only: loaded at start-up by the devhost
worker interpreters that test starts (through PYTHONPATH), it SIGKILLs the worker at random
right before an outcome message is sent to the topic (the outcome is stored, the message is
not) or right after (the message is sent, not yet marked sent). Inert without
CHAOS_OUTBOX_KILL; never on the path of any other run."""

from __future__ import annotations

import os

if os.environ.get("CHAOS_OUTBOX_KILL"):
    import random
    import signal
    from typing import Any

    from devhost.broker import publisher as _publisher

    _rate = float(os.environ["CHAOS_OUTBOX_KILL"])
    _log = os.environ["CHAOS_OUTBOX_LOG"]
    _send = _publisher.BrokerPublisher.send

    def _die(moment: str, message_id: str) -> None:
        with open(_log, "a", encoding="utf-8") as log:
            log.write(f"{moment} {message_id}\n")
        os.kill(os.getpid(), signal.SIGKILL)

    async def _send_or_die(self: Any, message: Any) -> None:
        if message.to_topic and random.random() < _rate / 2:
            _die("before", message.message_id)
        await _send(self, message)
        if message.to_topic and random.random() < _rate / 2:
            _die("after", message.message_id)

    _publisher.BrokerPublisher.send = _send_or_die  # type: ignore[method-assign]
