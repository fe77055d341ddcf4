"""What devhost's AMQP endpoint does not do is refused clearly, never half done or timed out.

Subscription rule management and transactions are Service Bus features devhost does not serve:
each is answered ``amqp:not-implemented`` with a description of why, so a client fails at once
with a message a developer can act on.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient
from azure.servicebus._common import mgmt_handlers
from azure.servicebus._common.constants import (
    REQUEST_RESPONSE_ADD_RULE_OPERATION,
    REQUEST_RESPONSE_GET_RULES_OPERATION,
    REQUEST_RESPONSE_REMOVE_RULE_OPERATION,
)
from azure.servicebus.exceptions import ServiceBusError
from proton import Condition, Event
from proton.handlers import MessagingHandler
from proton.reactor import Container

from tests.integration.amqp.conftest import QUEUE, TOPIC, Devhost

# A bound on the refusal of a transaction arriving; reached only when a test fails.
REFUSAL_DUE_S = 30.0

RULE_REQUESTS: list[tuple[bytes, dict[str, Any]]] = [
    (
        REQUEST_RESPONSE_ADD_RULE_OPERATION,
        {
            "rule-name": "urgent-only",
            "rule-description": {"correlation-filter": {"label": "urgent"}},
        },
    ),
    (REQUEST_RESPONSE_REMOVE_RULE_OPERATION, {"rule-name": "$Default"}),
    (REQUEST_RESPONSE_GET_RULES_OPERATION, {"top": 10, "skip": 0}),
]


@pytest.mark.parametrize(
    ("operation", "body"), RULE_REQUESTS, ids=[op.decode() for op, _ in RULE_REQUESTS]
)
def test_rule_management_is_refused_as_not_implemented(
    devhost: Devhost, operation: bytes, body: dict[str, Any]
) -> None:
    """``add-rule``, ``remove-rule`` and ``enumerate-rules`` on a subscription's
    ``$management`` node (AMQP request/response operations, "Rule operations":
    https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-request-response#rule-operations)
    are answered 501 ``amqp:not-implemented``, saying the rules are the ones devhost declared.
    The Python SDK manages rules only over HTTP (``ServiceBusAdministrationClient``), so the
    request goes through its own management request/response path, the one ``renew-lock`` and
    ``peek`` use; the subscription's rules are unchanged afterwards."""
    before = {s.name: s.rules for s in devhost.broker.subscriptions(TOPIC)}
    with (
        ServiceBusClient.from_connection_string(devhost.connection_string, retry_total=0) as client,
        client.get_subscription_receiver(TOPIC, "urgent") as receiver,
        pytest.raises(ServiceBusError) as refused,
    ):
        receiver._mgmt_request_response_with_retry(operation, body, mgmt_handlers.default)
    assert "amqp:not-implemented" in str(refused.value)
    assert "correlation filters devhost declares" in str(refused.value)
    assert {s.name: s.rules for s in devhost.broker.subscriptions(TOPIC)} == before


class _DeclareTransaction(MessagingHandler):  # type: ignore[misc]
    """Apache Qpid Proton's own transactional client: declares a transaction on the
    connection's coordinator link and records how the server answered."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.refusal: Condition | None = None
        self.declared = False

    def on_start(self, event: Event) -> None:
        connection = event.container.connect(self.url, allowed_mechs="ANONYMOUS")
        event.container.declare_transaction(connection, handler=self)

    def on_transaction_declared(self, event: Event) -> None:
        self.declared = True
        event.connection.close()

    def on_link_error(self, event: Event) -> None:
        self.refusal = event.link.remote_condition
        event.connection.close()


def test_a_transaction_is_refused_as_not_implemented(devhost: Devhost) -> None:
    """Service Bus transactions begin with a coordinator link and a ``declare``
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide#transactions);
    devhost refuses the coordinator link with ``amqp:not-implemented`` at once, and a queue is
    untouched."""
    handler = _DeclareTransaction(f"amqp://127.0.0.1:{devhost.server.port}")
    container = Container(handler)
    worker = threading.Thread(target=container.run, daemon=True)
    worker.start()
    worker.join(REFUSAL_DUE_S)
    if worker.is_alive():
        container.stop()
        worker.join()
        pytest.fail("the coordinator link was neither refused nor answered")
    assert not handler.declared
    assert handler.refusal is not None
    assert handler.refusal.name == "amqp:not-implemented"
    assert "transactions" in handler.refusal.description
    assert devhost.broker.queue_stats()[QUEUE].sent_total == 0
