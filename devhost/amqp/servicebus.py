"""The Service Bus dialect: queues, their dead-letter sub-queues and ``$management`` nodes.

Semantics follow the Service Bus AMQP guide
(https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide) and
its request-response reference
(https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-request-response).
Every state change is one broker transaction, so what the AMQP client is told happened is on
disk, and the workers (other processes on the same SQLite file) see it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from proton import Delivery, Link, Message, Receiver, Sender

from devhost.amqp import codec, sb_management
from devhost.amqp.codec import NOT_ALLOWED, NOT_IMPLEMENTED, SERVER_BUSY, SIZE_EXCEEDED, Refused
from devhost.amqp.server import (
    LOCK_LOST,
    LinkState,
    Protocol,
    ServerHandler,
)
from devhost.broker import (
    Broker,
    BrokerBusy,
    LockLost,
    MessageTooLarge,
    ReceivedMessage,
    SendSpec,
    UnknownTopic,
)

logger = logging.getLogger(__name__)

DLQ_SUFFIX: Final = "/$deadletterqueue"
MANAGEMENT_SUFFIX: Final = "/$management"
SESSION_FILTER: Final = "com.microsoft:session-filter"
# The reason a receiver's dead-lettering is recorded under when it gives none (Service Bus
# leaves the property unset; the broker keeps a reason for every dead letter).
DEFAULT_DEAD_LETTER_REASON: Final = "DeadLetteredByReceiver"
# Dead letters read through $DeadLetterQueue are held (not locked in the broker) this long.
DLQ_HOLD_S: Final = 60.0

DELIVERY_TOKEN: Final = "devhost_lock_token"
_SETTLED: Final = 1  # snd-settle-mode "settled": receive-and-delete


@dataclass
class _Held:
    """A dead letter delivered from ``$DeadLetterQueue`` and not yet settled."""

    queue: str
    sequence_number: int
    message_id: str
    until: float


class ServiceBusProtocol(Protocol):
    """Queues of the broker as Service Bus entities."""

    def __init__(self) -> None:
        self.receivers: dict[str, list[Sender]] = {}
        self.dlq_receivers: dict[str, list[Sender]] = {}
        self.held: dict[str, _Held] = {}  # dead letters out for delivery, by lock token
        self._names: dict[str, str] = {}
        self._topics: set[str] = set()

    # -- addresses -----------------------------------------------------------------------------

    def _queue(self, broker: Broker, name: str) -> str | None:
        """The broker's name for queue ``name`` (entity names are case-insensitive)."""
        found = self._names.get(name)
        if found is None:
            self._names = {q.lower(): q for q in broker.queues()}
            found = self._names.get(name)
        return found

    def _topic(self, broker: Broker, name: str) -> str | None:
        """The broker's name for topic ``name`` (topics are declared in lower case here)."""
        if name in self._topics:
            return name
        try:
            broker.topic_totals(name)
        except UnknownTopic:
            return None
        self._topics.add(name)
        return name

    def claims(self, server: ServerHandler, path: str) -> str | None:
        broker = server.broker
        if self._queue(broker, path) is None and self._topic(broker, path) is not None:
            return "sb-topic"
        base, kind = path, "sb-entity"
        if base.endswith(MANAGEMENT_SUFFIX):
            base, kind = base[: -len(MANAGEMENT_SUFFIX)], "sb-mgmt"
        if base.endswith(DLQ_SUFFIX):
            base = base[: -len(DLQ_SUFFIX)]
            kind = "sb-dlq-mgmt" if kind == "sb-mgmt" else "sb-dlq"
        return kind if self._queue(broker, base) is not None else None

    def _entity(self, server: ServerHandler, path: str) -> str:
        base = path
        for suffix in (MANAGEMENT_SUFFIX, DLQ_SUFFIX):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        queue = self._queue(server.broker, base)
        if queue is None:
            raise Refused("amqp:not-found", f"The messaging entity '{base}' could not be found")
        return queue

    # -- attach --------------------------------------------------------------------------------

    def attach(self, server: ServerHandler, link: Link, state: LinkState) -> None:
        if state.kind == "sb-topic":
            server.authorise(link, state.path)
            state.entity = state.path
            if link.is_sender:
                raise Refused(
                    NOT_ALLOWED,
                    f"messages are received from {state.path}/Subscriptions/<name>, not the topic",
                )
            state.kind = "sb-topic-send"
            link.max_message_size = server.config.max_message_bytes
            return
        queue = self._entity(server, state.path)
        server.authorise(link, state.path)
        state.entity = queue
        if state.kind == "sb-entity":
            if link.is_receiver:
                state.kind = "sb-send"
                link.max_message_size = server.config.max_message_bytes
                return
            if _session_filter(link):
                # Service Bus's answer for an entity without RequiresSession: not-allowed (not
                # retried by the SDKs), whatever session was asked for.
                raise Refused(
                    NOT_ALLOWED,
                    f"A sessionful message receiver cannot be created on '{queue}': it does not"
                    " require sessions (devhost's queues and subscriptions never do)",
                )
            state.kind = "sb-receive"
            state.receive_and_delete = link.remote_snd_settle_mode == _SETTLED
            self.receivers.setdefault(queue, []).append(link)  # type: ignore[arg-type]
        elif state.kind == "sb-dlq":
            if link.is_receiver:
                raise Refused(NOT_ALLOWED, "messages cannot be sent to a dead-letter queue")
            state.kind = "sb-dlq-receive"
            state.receive_and_delete = link.remote_snd_settle_mode == _SETTLED
            self.dlq_receivers.setdefault(queue, []).append(link)  # type: ignore[arg-type]
        elif state.kind in ("sb-mgmt", "sb-dlq-mgmt"):
            state.extra["dlq"] = state.kind == "sb-dlq-mgmt"
            if link.is_sender:
                state.kind = "reply"

    def on_detach(self, server: ServerHandler, link: Link, state: LinkState) -> None:
        for table in (self.receivers, self.dlq_receivers):
            links = table.get(state.entity)
            if links and link in links:
                links.remove(link)  # type: ignore[arg-type]
        # Peek-locked messages stay locked until their lock expires, as on Service Bus; held
        # dead letters are released at once.
        for token in list(state.inflight):
            self.held.pop(token, None)
        state.inflight.clear()

    # -- sends ---------------------------------------------------------------------------------

    def on_message(
        self, server: ServerHandler, link: Receiver, state: LinkState, payload: bytes
    ) -> None:
        if state.kind == "sb-send":
            self._send(server, state.entity, payload)
        elif state.kind == "sb-topic-send":
            self._send_to_topic(server, state.entity, payload)
        elif state.kind in ("sb-mgmt", "sb-dlq-mgmt"):
            request = codec.decode(payload)
            answer = sb_management.answer(self, server, state, request)
            server.respond(link, state, request, answer)
        else:
            raise Refused(NOT_ALLOWED, f"{state.path} does not accept messages")

    def _send(self, server: ServerHandler, queue: str, payload: bytes) -> None:
        specs = self._specs(server, payload)
        _stored(lambda: server.broker.send_batch(queue, specs))
        self.pump(server, queue)

    def _send_to_topic(self, server: ServerHandler, topic: str, payload: bytes) -> None:
        specs = self._specs(server, payload)
        if any(spec.scheduled_enqueue_time is not None for spec in specs):
            raise Refused(NOT_IMPLEMENTED, "devhost does not schedule messages on topics")
        _stored(lambda: server.broker.send_to_topic(topic, specs))
        for subscription in server.broker.subscriptions(topic):
            self.pump(server, subscription.entity)

    def _specs(self, server: ServerHandler, payload: bytes) -> list[SendSpec]:
        """The messages of one transfer (a single message or a batch), within the link's size
        limit, refused the way Service Bus refuses an oversize one."""
        limit = server.config.max_message_bytes
        if len(payload) > limit:
            raise Refused(
                SIZE_EXCEEDED,
                f"The received message (size {len(payload)} bytes) exceeds the limit"
                f" ({limit} bytes) currently allowed on the link",
            )
        parts = codec.split_batch(payload) or [payload]
        return [self.spec(codec.decode(part), part) for part in parts]

    def spec(self, message: Message, payload: bytes) -> SendSpec:
        item = codec.inbound(message, payload)
        if item.session_id:
            # Service Bus keeps a session id on an entity without sessions; devhost would drop
            # it, so the send is refused rather than losing it.
            raise Refused(
                NOT_IMPLEMENTED,
                "devhost does not store session ids (its entities do not support sessions):"
                " send messages without a session id",
            )
        return SendSpec(
            body=item.body,
            message_id=item.message_id,
            correlation_id=item.correlation_id,
            subject=item.subject,
            content_type=item.content_type,
            application_properties=item.application_properties or None,
            scheduled_enqueue_time=item.scheduled_enqueue_time,
            time_to_live_s=item.ttl_s or None,
        )

    # -- deliveries ----------------------------------------------------------------------------

    def on_credit(self, server: ServerHandler, link: Sender, state: LinkState) -> None:
        if state.kind == "sb-receive":
            self._deliver(server, link, state)
        elif state.kind == "sb-dlq-receive":
            self._deliver_dead(server, link, state)

    def pump(self, server: ServerHandler, queue: str) -> None:
        """Deliver to every receiver of ``queue`` that has credit."""
        for link in list(self.receivers.get(queue, [])):
            state: LinkState | None = getattr(link, "devhost_link", None)
            if state is not None and link.credit > 0:
                self._deliver(server, link, state)
                link.drained()

    def tick(self, server: ServerHandler) -> None:
        now = time.time()
        for queue, links in list(self.receivers.items()):
            if not any(link.credit > 0 for link in links):
                continue
            due = server.broker.next_visible_time(queue)
            if due is not None and due <= now:
                self.pump(server, queue)
        for links in list(self.dlq_receivers.values()):
            for link in links:
                state: LinkState | None = getattr(link, "devhost_link", None)
                if state is not None and link.credit > 0:
                    self._deliver_dead(server, link, state)
        for token, held in list(self.held.items()):
            if held.until <= now:
                self.held.pop(token, None)

    def _deliver(self, server: ServerHandler, link: Sender, state: LinkState) -> None:
        broker = server.broker
        owner = f"amqp:{server.connection_state(link).id}"
        limit = server.config.max_unsettled_per_link
        while link.credit > 0 and len(state.inflight) < limit:
            wanted = min(link.credit, 64, limit - len(state.inflight))
            messages = broker.receive(state.entity, max_messages=wanted, owner=owner)
            if not messages:
                return
            if state.receive_and_delete:
                broker.complete_batch(state.entity, [m.lock_token for m in messages])
            for message in messages:
                self._transfer(server, link, state, message)

    def _transfer(
        self, server: ServerHandler, link: Sender, state: LinkState, message: ReceivedMessage
    ) -> None:
        tag = codec.lock_tag(message.lock_token)
        payload = codec.received_message(
            message, locked_until=None if state.receive_and_delete else message.locked_until
        )
        delivery = server.send(link, payload, tag=tag, settled=state.receive_and_delete)
        if not state.receive_and_delete:
            setattr(delivery, DELIVERY_TOKEN, message.lock_token)
            state.inflight[message.lock_token] = tag

    def _deliver_dead(self, server: ServerHandler, link: Sender, state: LinkState) -> None:
        if link.credit <= 0:
            return
        now = time.time()
        held = {(h.queue, h.sequence_number) for h in self.held.values()}
        letters = server.broker.deadletters(state.entity, limit=link.credit + len(held))
        for letter in letters:
            if link.credit <= 0:
                break
            if (state.entity, letter.sequence_number) in held:
                continue
            token = str(uuid.uuid4())
            tag = codec.lock_tag(token)
            until = now + DLQ_HOLD_S
            payload = codec.received_message(
                letter,
                locked_until=None if state.receive_and_delete else until,
                extra_properties={
                    codec.DEAD_LETTER_REASON: letter.reason,
                    codec.DEAD_LETTER_DESCRIPTION: letter.description,
                },
            )
            if state.receive_and_delete:
                server.broker.remove_deadletter(state.entity, letter.sequence_number)
            else:
                self.held[token] = _Held(
                    state.entity, letter.sequence_number, letter.message_id, until
                )
                state.inflight[token] = tag
            delivery = server.send(link, payload, tag=tag, settled=state.receive_and_delete)
            setattr(delivery, DELIVERY_TOKEN, token)

    # -- settlement ----------------------------------------------------------------------------

    def on_outcome(self, server: ServerHandler, delivery: Delivery, state: LinkState) -> None:
        token: str | None = getattr(delivery, DELIVERY_TOKEN, None)
        if token is not None and token not in state.inflight:
            token = None
        outcome = delivery.remote_state
        if token is None:
            delivery.settle()
            return
        if outcome not in (
            Delivery.ACCEPTED,
            Delivery.REJECTED,
            Delivery.RELEASED,
            Delivery.MODIFIED,
        ):
            if delivery.settled:  # settled with no outcome: as a release
                outcome = Delivery.RELEASED
            else:
                return  # a non-terminal state (received): wait for the outcome
        state.inflight.pop(token, None)
        remote = delivery.remote
        try:
            if state.kind == "sb-dlq-receive":
                self.settle_dead(server, token, outcome)
            else:
                reason, description = _dead_letter_reason(remote)
                self.settle(
                    server,
                    state.entity,
                    token,
                    outcome,
                    reason=reason,
                    description=description,
                    undeliverable=bool(remote.undeliverable),
                )
        except LockLost as error:
            delivery.local.condition = _condition(
                LOCK_LOST,
                "The lock supplied is invalid. Either the lock expired, or the message has"
                f" already been removed from the queue. ({error})",
            )
            delivery.update(Delivery.REJECTED)
            delivery.settle()
            return
        except Refused as refused:
            delivery.local.condition = _condition(refused.condition, refused.description)
            delivery.update(Delivery.REJECTED)
            delivery.settle()
            return
        if outcome == Delivery.MODIFIED:
            delivery.local.failed = remote.failed
            delivery.local.undeliverable = remote.undeliverable
        delivery.update(outcome)
        delivery.settle()

    def settle(
        self,
        server: ServerHandler,
        queue: str,
        token: str,
        outcome: int,
        *,
        reason: str | None = None,
        description: str | None = None,
        undeliverable: bool = False,
    ) -> None:
        """Settle a locked message: complete (accepted), dead-letter with ``reason`` and
        ``description`` (rejected), defer (modified, undeliverable here), else abandon."""
        broker = server.broker
        if outcome == Delivery.ACCEPTED:
            broker.complete(queue, token)
        elif outcome == Delivery.REJECTED:
            broker.dead_letter(
                queue,
                token,
                reason=reason or DEFAULT_DEAD_LETTER_REASON,
                description=description or "",
            )
        elif outcome == Delivery.MODIFIED and undeliverable:
            broker.defer(queue, token)
        else:
            broker.abandon(queue, token)

    def settle_dead(self, server: ServerHandler, token: str, outcome: int) -> None:
        held = self.held.pop(token, None)
        if held is None:
            raise LockLost(f"the hold on dead letter {token} has expired")
        if outcome == Delivery.ACCEPTED:
            server.broker.remove_deadletter(held.queue, held.sequence_number)

    def extend_hold(self, token: str) -> float:
        """Hold the dead letter out under ``token`` another ``DLQ_HOLD_S``; the new end."""
        held = self.held.get(token)
        if held is None:
            raise LockLost(f"the hold on dead letter {token} has expired")
        held.until = time.time() + DLQ_HOLD_S
        return held.until


def _dead_letter_reason(remote: Any) -> tuple[str | None, str | None]:
    """The dead-letter reason and description a rejected outcome's error carries: its
    ``DeadLetterReason`` / ``DeadLetterErrorDescription`` info, else its description."""
    condition = remote.condition
    if condition is None:
        return None, None
    info = dict(condition.info or {})
    description = codec.text(info.get(codec.DEAD_LETTER_DESCRIPTION)) or codec.text(
        condition.description
    )
    return codec.text(info.get(codec.DEAD_LETTER_REASON)), description


def _session_filter(link: Link) -> bool:
    filters = _filters(link)
    if isinstance(filters, dict):
        return any(str(key) == SESSION_FILTER for key in filters)
    return False


def _filters(link: Link) -> Any:
    """The filter set of the client's source terminus, as a dict (or None)."""
    data = link.remote_source.filter
    data.rewind()
    return data.get_object() if data.next() else None


def _condition(name: str, description: str) -> Any:

    return codec.error(name, description)


def _stored(send: Callable[[], object]) -> None:
    """Run a broker send, answering its refusals with the AMQP errors Service Bus uses."""
    try:
        send()
    except MessageTooLarge as error:
        raise Refused(SIZE_EXCEEDED, str(error)) from None
    except BrokerBusy as error:
        raise Refused(SERVER_BUSY, str(error)) from None
