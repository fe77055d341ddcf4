"""Sending the outbox: a conversation's pending outcome messages go to the ``outcomes`` topic.

The entries were written with the outcome, in one conditional write (``shared.domain.outbox``).
Here each pending entry is sent under its deterministic message id, then marked sent. A crash
(or a failed send) between the two leaves the entry pending; whoever handles the conversation
next - the redelivered or rescheduled stage message, a resolve, a release - sends it again, and
the topic's duplicate detection drops the copy if the first send had landed. Entries already
marked sent are never sent again, so a redelivery long after the duplicate-detection window
cannot emit twice either.
"""

from __future__ import annotations

import logging

from shared.domain.conversation import Conversation
from shared.ports import OutboundMessage
from shared.service.core import Core
from shared.telemetry import current_traceparent

log = logging.getLogger(__name__)


class Outbox:
    """Sends a conversation's pending outcome messages and records them as sent."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def flush(self, conversation: Conversation) -> int:
        """Send every pending entry of ``conversation`` (as read); return how many were sent.

        Raises what the publisher raises (``TransientError`` when the topic is unreachable):
        the entries stay pending and the caller's retry sends them.
        """
        pending = conversation.pending_outbox()
        if not pending:
            return 0
        topic = self.core.settings.outcomes_topic
        traceparent = current_traceparent() or conversation.traceparent
        for entry in pending:
            message = entry.message
            properties = message.properties()
            if traceparent:
                properties["traceparent"] = traceparent
            await self.core.outbound.publisher.send(
                OutboundMessage(
                    queue=topic,
                    to_topic=True,
                    body=message.to_bytes(),
                    message_id=entry.message_id,
                    correlation_id=message.conversation_id,
                    subject=message.kind.value,
                    application_properties=properties,
                )
            )
        sent = {entry.message_id for entry in pending}
        now = self.core.clock()
        await self.core.conversations.update(
            conversation.conversation_id, lambda current: current.outbox_sent(sent, now=now)
        )
        log.info(
            "conversation %s: %d outcome message(s) sent to %s",
            conversation.conversation_id,
            len(pending),
            topic,
        )
        return len(pending)
