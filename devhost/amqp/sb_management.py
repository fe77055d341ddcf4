"""The Service Bus ``$management`` node: the request-response operations on a queue.

Operations and their status codes follow the Service Bus AMQP request-response reference
(https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-request-response).
Each operation is a function of the queue dialect (a :class:`QueueNode`: the Service Bus
protocol object, which owns the held dead letters and the settlement rules), the server and the
management link.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Final, Protocol

from proton import Delivery, Message

from devhost.amqp import codec
from devhost.amqp.codec import NOT_ALLOWED, NOT_IMPLEMENTED, SERVER_BUSY, SIZE_EXCEEDED, Refused
from devhost.amqp.server import LOCK_LOST, LinkState, ServerHandler
from devhost.broker import BrokerBusy, LockLost, MessageTooLarge, SendSpec, UnknownQueue


class QueueNode(Protocol):
    """What the operations need of the Service Bus dialect
    (:class:`devhost.amqp.servicebus.ServiceBusProtocol`): how it reads a message to send,
    delivers, settles, and holds the dead letters it handed out."""

    def spec(self, message: Message, payload: bytes) -> SendSpec: ...

    def pump(self, server: ServerHandler, queue: str) -> None: ...

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
    ) -> None: ...

    def settle_dead(self, server: ServerHandler, token: str, outcome: int) -> None: ...

    def extend_hold(self, token: str) -> float: ...


def answer(node: QueueNode, server: ServerHandler, state: LinkState, request: Message) -> Message:
    """The reply to one ``$management`` request: the operation's answer, or the status and
    condition Service Bus gives for why it failed."""
    properties: dict[Any, Any] = request.properties or {}
    operation = codec.text(properties.get("operation")) or ""
    body = request.body if isinstance(request.body, dict) else {}
    handler = OPERATIONS.get(operation)
    try:
        if handler is None:
            raise _Status(501, NOT_IMPLEMENTED, _unsupported(operation))
        if not isinstance(request.body, dict) and operation != "":
            raise _Status(400, "com.microsoft:argument-error", "the request body is not a map")
        status, result = handler(node, server, state, body)
    except _Status as status_error:
        return codec.reply(
            request,
            status=status_error.status,
            description=status_error.description,
            condition=status_error.condition,
        )
    except LockLost as error:
        return codec.reply(request, status=410, description=str(error), condition=LOCK_LOST)
    except UnknownQueue as error:
        return codec.reply(request, status=404, description=str(error), condition="amqp:not-found")
    except BrokerBusy as error:
        return codec.reply(request, status=503, description=str(error), condition=SERVER_BUSY)
    except Refused as refused:
        return codec.reply(
            request, status=400, description=refused.description, condition=refused.condition
        )
    return codec.reply(
        request,
        status=status,
        description="OK" if status == 200 else "No Content",
        body=result,
    )


def _schedule(
    node: QueueNode, server: ServerHandler, state: LinkState, body: dict[Any, Any]
) -> tuple[int, Any]:
    if state.extra.get("dlq"):
        raise _Status(400, NOT_ALLOWED, "messages cannot be scheduled on a dead-letter queue")
    specs = []
    for item in codec.elements(body.get("messages")):
        payload = bytes(item.get("message") or b"")
        specs.append(node.spec(codec.decode(payload), payload))
    try:
        numbers = server.broker.send_batch_sequenced(state.entity, specs)
    except MessageTooLarge as error:
        raise Refused(SIZE_EXCEEDED, str(error)) from None
    node.pump(server, state.entity)
    # A message dropped as a duplicate has no sequence number of its own: 0 stands for it.
    return 200, {"sequence-numbers": codec.longs([n or 0 for n in numbers])}


def _cancel_scheduled(
    node: QueueNode, server: ServerHandler, state: LinkState, body: dict[Any, Any]
) -> tuple[int, Any]:
    numbers = [int(n) for n in codec.elements(body.get("sequence-numbers"))]
    server.broker.cancel_scheduled(state.entity, numbers)
    return 200, {}


def _receive_by_sequence_number(
    node: QueueNode, server: ServerHandler, state: LinkState, body: dict[Any, Any]
) -> tuple[int, Any]:
    numbers = [int(n) for n in codec.elements(body.get("sequence-numbers"))]
    peek_lock = int(body.get("receiver-settle-mode", 1) or 0) == 1
    owner = f"amqp:{state.path}"
    found = server.broker.receive_deferred(state.entity, numbers, owner=owner)
    if len(found) < len(numbers):
        missing = sorted(set(numbers) - {m.sequence_number for m in found})
        for message in found:  # all or nothing, as the request names exact messages
            server.broker.abandon(state.entity, message.lock_token)
        raise _Status(
            404,
            "com.microsoft:message-not-found",
            f"No deferred message with sequence number {missing} in '{state.entity}'",
        )
    if not peek_lock:
        server.broker.complete_batch(state.entity, [m.lock_token for m in found])
    entries = []
    for message in found:
        entry: dict[str, Any] = {
            "message": codec.received_message(
                message, locked_until=message.locked_until if peek_lock else None
            )
        }
        if peek_lock:
            entry["lock-token"] = uuid.UUID(message.lock_token)
        entries.append(entry)
    return 200, {"messages": entries}


def _renew_lock(
    node: QueueNode, server: ServerHandler, state: LinkState, body: dict[Any, Any]
) -> tuple[int, Any]:
    tokens = [str(t) for t in codec.elements(body.get("lock-tokens"))]
    expirations: list[float] = []
    for token in tokens:
        if state.extra.get("dlq"):
            expirations.append(node.extend_hold(token))
        else:
            expirations.append(server.broker.renew_lock(state.entity, token))
    return 200, {"expirations": codec.timestamps(expirations)}


def _peek(
    node: QueueNode, server: ServerHandler, state: LinkState, body: dict[Any, Any]
) -> tuple[int, Any]:
    start = int(body.get("from-sequence-number") or 0)
    count = int(body.get("message-count") or 1)
    if count < 1:
        raise _Status(400, "com.microsoft:argument-error", "message-count must be positive")
    encoded: list[bytes] = []
    if state.extra.get("dlq"):
        for letter in server.broker.deadletters(state.entity, limit=count, from_sequence=start):
            encoded.append(
                codec.received_message(
                    letter,
                    extra_properties={
                        codec.DEAD_LETTER_REASON: letter.reason,
                        codec.DEAD_LETTER_DESCRIPTION: letter.description,
                    },
                )
            )
    else:
        for message in server.broker.peek(state.entity, limit=count, from_sequence=start):
            encoded.append(codec.received_message(message))
    if not encoded:
        return 204, None
    return 200, {"messages": [{"message": payload} for payload in encoded]}


def _update_disposition(
    node: QueueNode, server: ServerHandler, state: LinkState, body: dict[Any, Any]
) -> tuple[int, Any]:
    status = codec.text(body.get("disposition-status")) or ""
    tokens = [str(t) for t in codec.elements(body.get("lock-tokens"))]
    outcomes = {
        "completed": Delivery.ACCEPTED,
        "abandoned": Delivery.RELEASED,
        "suspended": Delivery.REJECTED,
    }
    if status == "defered" and not state.extra.get("dlq"):
        for token in tokens:
            server.broker.defer(state.entity, token)
        return 200, {}
    if status not in outcomes:
        raise _Status(400, "com.microsoft:argument-error", f"unknown disposition-status {status!r}")
    reason = codec.text(body.get("deadletter-reason"))
    description = codec.text(body.get("deadletter-description"))
    for token in tokens:
        if state.extra.get("dlq"):
            node.settle_dead(server, token, outcomes[status])
        else:
            node.settle(
                server,
                state.entity,
                token,
                outcomes[status],
                reason=reason,
                description=description,
            )
    return 200, {}


class _Status(Exception):
    """A management answer other than success."""

    def __init__(self, status: int, condition: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.condition = condition
        self.description = description


RULE_OPERATIONS: Final = frozenset(
    {"com.microsoft:add-rule", "com.microsoft:remove-rule", "com.microsoft:enumerate-rules"}
)
SESSION_OPERATIONS: Final = frozenset(
    {
        "com.microsoft:renew-session-lock",
        "com.microsoft:get-session-state",
        "com.microsoft:set-session-state",
        "com.microsoft:get-message-sessions",
    }
)


def _unsupported(operation: str) -> str:
    """Why a ``$management`` operation is not served, saying what to do instead."""
    if operation in RULE_OPERATIONS:
        return (
            f"devhost does not implement {operation}: a subscription's rules are the correlation"
            " filters devhost declares with the subscription, and cannot be changed over AMQP"
        )
    if operation in SESSION_OPERATIONS:
        return f"devhost does not implement {operation}: its entities do not support sessions"
    return f"devhost does not implement the operation {operation!r}"


Operation = Callable[[QueueNode, ServerHandler, LinkState, dict[Any, Any]], tuple[int, Any]]

OPERATIONS: Final[dict[str, Operation]] = {
    "com.microsoft:renew-lock": _renew_lock,
    "com.microsoft:peek-message": _peek,
    "com.microsoft:update-disposition": _update_disposition,
    "com.microsoft:schedule-message": _schedule,
    "com.microsoft:cancel-scheduled-message": _cancel_scheduled,
    "com.microsoft:receive-by-sequence-number": _receive_by_sequence_number,
}
