"""SAS tokens, authorisation and resource limits of devhost's AMQP server."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.credentials import AzureSasCredential
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSender
from azure.servicebus.exceptions import ServiceBusAuthenticationError, ServiceBusError
from proton import ConnectionException
from proton.utils import BlockingConnection, LinkDetached

from devhost.amqp import EMULATOR_KEY, EMULATOR_KEY_NAME, AmqpConfig
from devhost.amqp.sas import SasError, sign, verify
from tests.integration.amqp.conftest import QUEUE, Devhost, ManualClock, start_devhost


def _send_with(devhost: Devhost, credential: AzureSasCredential) -> None:
    with (
        ServiceBusClient(devhost.namespace, credential, use_tls=False, retry_total=0) as client,
        client.get_queue_sender(QUEUE, keep_alive=None) as sender,
    ):
        sender.send_messages(ServiceBusMessage("signed"))


def _token(devhost: Devhost, path: str, *, key: str = EMULATOR_KEY, ttl_s: int = 300) -> str:
    resource = f"sb://{devhost.namespace}/{path}"
    return sign(resource, EMULATOR_KEY_NAME, key, int(time.time()) + ttl_s)


def test_sas_signature_is_checked_over_resource_and_expiry() -> None:
    """A SAS token is an HMAC-SHA256 of the URL-encoded resource URI and expiry under the key
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-sas#generate-a-shared-access-signature-token)."""
    keys = {EMULATOR_KEY_NAME: EMULATOR_KEY}
    token = sign("sb://127.0.0.1:5672/orders", EMULATOR_KEY_NAME, EMULATOR_KEY, 2_000_000_000)
    grant = verify(token, keys=keys, now=1_000_000_000)
    assert grant.covers("orders/$management", now=1_000_000_000)
    assert not grant.covers("intent", now=1_000_000_000)
    assert not grant.covers("orders", now=2_000_000_000)
    with pytest.raises(SasError, match="signature"):
        verify(token.replace("orders", "intent"), keys=keys, now=1_000_000_000)
    with pytest.raises(SasError) as expired:
        verify(token, keys=keys, now=2_000_000_001)
    assert expired.value.code == "ExpiredToken"
    with pytest.raises(SasError, match="not a known access policy"):
        verify(token, keys={"other": EMULATOR_KEY}, now=1_000_000_000)


def test_a_wrong_key_is_refused(devhost: Devhost) -> None:
    """A token signed with a key the namespace does not have is refused with 401
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide#claims-based-authorization)."""
    wrong = devhost.connection_string.replace(EMULATOR_KEY, "not-the-key")
    with (
        ServiceBusClient.from_connection_string(wrong, retry_total=0) as client,
        pytest.raises(ServiceBusAuthenticationError),
        client.get_queue_sender(QUEUE, keep_alive=None) as sender,
    ):
        sender.send_messages(ServiceBusMessage("forged"))
    assert devhost.broker.queue_stats()[QUEUE].sent_total == 0


def test_an_expired_token_is_refused(devhost: Devhost) -> None:
    """A token past its expiry (se) grants nothing
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-sas#generate-a-shared-access-signature-token)."""
    with pytest.raises(ServiceBusAuthenticationError):
        _send_with(devhost, AzureSasCredential(_token(devhost, QUEUE, ttl_s=-60)))
    assert devhost.broker.queue_stats()[QUEUE].sent_total == 0


def test_a_token_for_another_entity_is_refused(devhost: Devhost) -> None:
    """A token scoped to one entity does not open another
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-sas#shared-access-authorization-policies)."""
    with pytest.raises(ServiceBusAuthenticationError):
        _send_with(devhost, AzureSasCredential(_token(devhost, "intent")))
    assert devhost.broker.queue_stats()[QUEUE].sent_total == 0


def test_a_namespace_token_and_an_entity_token_both_work(devhost: Devhost) -> None:
    """A namespace-level token covers every entity; an entity token covers that entity."""
    _send_with(devhost, AzureSasCredential(_token(devhost, "")))
    _send_with(devhost, AzureSasCredential(_token(devhost, QUEUE)))
    assert devhost.broker.queue_stats()[QUEUE].sent_total == 2


def _raw(devhost: Devhost) -> BlockingConnection:
    return BlockingConnection(
        f"amqp://127.0.0.1:{devhost.server.port}", sasl_enabled=True, allowed_mechs="ANONYMOUS"
    )


def test_a_link_without_a_token_is_refused(devhost: Devhost) -> None:
    """Without a put-token on $cbs first, attaching to an entity fails with
    amqp:unauthorized-access (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide#claims-based-authorization)."""
    connection = _raw(devhost)
    try:
        with pytest.raises(LinkDetached) as detached:
            connection.create_sender(QUEUE)
        assert "amqp:unauthorized-access" in str(detached.value)
    finally:
        connection.close()
    assert devhost.broker.queue_stats()[QUEUE].sent_total == 0


def test_connection_and_link_limits(tmp_path: Path) -> None:
    """A client cannot exhaust the host: connections beyond the limit are closed with
    amqp:resource-limit-exceeded, and so are links beyond the per-connection limit; the frame
    size the server advertises is its configured maximum."""
    config = AmqpConfig(port=0, max_connections=2, max_links_per_connection=2, max_frame_size=16384)
    host = start_devhost(tmp_path, config)
    opened: list[BlockingConnection] = []
    try:
        opened += [_raw(host), _raw(host)]
        assert opened[0].conn.transport.remote_max_frame_size == 16384
        with pytest.raises(ConnectionException) as refused:
            opened.append(_raw(host))
        assert "amqp:resource-limit-exceeded" in str(refused.value)
        connection = opened[0]
        connection.create_receiver("$cbs", name="reply")
        connection.create_sender("$cbs", name="request-1")
        with pytest.raises(LinkDetached) as too_many:
            connection.create_sender("$cbs", name="request-2")
        assert "amqp:resource-limit-exceeded" in str(too_many.value)
        for done in opened:  # closed connections free their places
            done.close()
        # The server drops a connection at its end of stream, on its own thread; wait for it
        # (bounded generously: this is synchronisation, not a timing assertion).
        deadline = time.monotonic() + 120
        while host.server.handler.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        opened = [_raw(host), _raw(host)]
    finally:
        for connection in opened:
            connection.close()
        host.server.stop()
        host.broker.close()


def test_the_server_listens_on_loopback_only() -> None:
    """devhost's AMQP endpoint is for this machine only; another address is refused."""
    with pytest.raises(ValueError, match="loopback"):
        AmqpConfig(host="0.0.0.0")


def test_the_key_and_port_come_from_settings() -> None:
    """``DEVHOST_AMQP_PORT``, ``DEVHOST_AMQP_KEY_NAME`` and ``DEVHOST_AMQP_KEY`` configure the
    endpoint; the default is the emulators' connection string values."""
    from devhost.amqp.__main__ import config_from_env

    default = config_from_env({})
    assert (default.port, default.keys) == (5672, ((EMULATOR_KEY_NAME, EMULATOR_KEY),))
    custom = config_from_env(
        {"DEVHOST_AMQP_PORT": "5673", "DEVHOST_AMQP_KEY_NAME": "dev", "DEVHOST_AMQP_KEY": "s3"}
    )
    assert (custom.port, custom.keys) == (5673, (("dev", "s3"),))
    with pytest.raises(ValueError, match="DEVHOST_AMQP_PORT"):
        config_from_env({"DEVHOST_AMQP_PORT": "amqp"})


@contextlib.contextmanager
def _sender_with_a_600s_token(
    tmp_path: Path, *, check_every_s: float
) -> Iterator[tuple[Devhost, ManualClock, ServiceBusSender]]:
    """A devhost on a hand-moved clock and a queue sender holding a 600 s token that has sent
    one message in time; the server looks for expired tokens every ``check_every_s``."""
    clock = ManualClock()
    host = start_devhost(
        tmp_path, AmqpConfig(port=0, clock=clock, token_check_interval_s=check_every_s)
    )
    try:
        token = _token(host, QUEUE, ttl_s=600)
        with (
            ServiceBusClient(
                host.namespace, AzureSasCredential(token), use_tls=False, retry_total=0
            ) as client,
            client.get_queue_sender(QUEUE, keep_alive=None) as sender,
        ):
            sender.send_messages(ServiceBusMessage("in time"))
            yield host, clock, sender
    finally:
        host.server.stop()
        host.broker.close()


def test_a_link_whose_token_expires_is_detached(tmp_path: Path) -> None:
    """A link lives as long as a token covers it: when the token expires without a new one
    being put, the service detaches the link and further sends fail
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide#claims-based-authorization)."""
    with _sender_with_a_600s_token(tmp_path, check_every_s=0.0) as (host, clock, sender):
        held = len(host.server.handler.authorised_links)
        assert held >= 1
        clock.advance(601)
        # The server's own check, run on its thread after the clock moved: ordered, so the
        # test does not depend on when the loop's periodic check comes round.
        checked = threading.Event()

        def check() -> None:
            host.server.handler.detach_expired()
            checked.set()

        host.server.call_soon(check)
        assert checked.wait(timeout=120)
        assert len(host.server.handler.authorised_links) < held
        with pytest.raises((ServiceBusAuthenticationError, ServiceBusError)):
            sender.send_messages(ServiceBusMessage("too late"))
        assert host.broker.queue_stats()[QUEUE].sent_total == 1


def test_a_send_after_the_token_expired_is_refused_before_any_check(tmp_path: Path) -> None:
    """Authority is checked on every transfer, not only by the periodic detach: a message sent
    after the token's expiry is refused and not stored, even while the link is still attached
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide#claims-based-authorization).
    A client may also send on a link the server has detached before it reads the detach; that
    transfer is refused the same way, so a send the client sees fail never lands."""
    # The periodic check never comes round during the test.
    with _sender_with_a_600s_token(tmp_path, check_every_s=3600.0) as (host, clock, sender):
        clock.advance(601)
        with pytest.raises((ServiceBusAuthenticationError, ServiceBusError)):
            sender.send_messages(ServiceBusMessage("too late"))
        assert host.broker.queue_stats()[QUEUE].sent_total == 1


def test_a_transfer_on_a_link_the_server_detached_is_refused(devhost: Devhost) -> None:
    """A detach and the client's next transfer can cross on the wire; a transfer arriving on a
    link the server has already closed is refused, never handed to the broker (AMQP 1.0
    section 2.6.5: a detached link carries no more deliveries,
    https://docs.oasis-open.org/amqp/core/v1.0/os/amqp-core-transport-v1.0-os.html#section-links)."""
    from proton import Connection

    from devhost.amqp.state import LinkState

    handler = devhost.server.handler
    link = Connection().session().receiver(QUEUE)
    state = LinkState(kind="queue", path=QUEUE)
    assert handler.transfer_refusal(link, state) is None
    link.open()
    link.close()
    refused = handler.transfer_refusal(link, state)
    assert refused is not None
    assert refused.condition == "amqp:link:detach-forced"
