"""The Event Hubs dialect: hubs, partitions, consumer groups and the ``$management`` node.

Semantics follow the Event Hubs AMQP reference
(https://learn.microsoft.com/azure/event-hubs/event-hubs-amqp-troubleshoot and the management
operations of https://learn.microsoft.com/azure/event-hubs/event-hubs-features): a producer
sends to ``hub`` (round-robin, or by the partition key annotation) or ``hub/Partitions/N``; a
consumer link on ``hub/ConsumerGroups/G/Partitions/N`` starts where its selector filter says
(offset, sequence number or enqueued time, ``-1`` for the start and ``@latest`` for the end)
and keeps its own position, as Event Hubs consumers do. Owner levels (epochs) are honoured per
consumer group and partition: an equal or higher one takes the partition and detaches the others
with ``amqp:link:stolen``; a lower one, or none while an owner level holds it, is refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Final

from proton import Link, Message, Receiver, Sender, symbol

from devhost.amqp import codec
from devhost.amqp.codec import NOT_IMPLEMENTED, SIZE_EXCEEDED, Refused
from devhost.amqp.sas import SasError, resource_path
from devhost.amqp.server import UNAUTHORIZED, LinkState, Protocol, ServerHandler
from devhost.broker import BrokerBusy, EventSpec, MessageTooLarge, StoredEvent, UnknownHub
from shared.domain.messages import EVENT_HUBS_MAX_BYTES

logger = logging.getLogger(__name__)

SELECTOR_FILTER: Final = "apache.org:selector-filter:string"
EPOCH: Final = "com.microsoft:epoch"
LINK_STOLEN: Final = "amqp:link:stolen"
_SELECTOR: Final = re.compile(
    r"amqp\.annotation\.(x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time)"
    r"\s*(>=|>)\s*'([^']*)'"
)
_SETTLED: Final = 1
_BATCH_EVENTS: Final = 256
_PARTITION = re.compile(r"^partitions/(\d+)$")
_CONSUMER = re.compile(r"^consumergroups/([^/]+)/partitions/(\d+)$")
_GROUP = re.compile(r"^consumergroups/([^/]+)$")


@dataclass
class _Consumer:
    hub: str
    consumer_group: str
    partition: int
    after_sequence: int
    epoch: int | None


class EventHubsProtocol(Protocol):
    """Event hubs of the broker as Event Hubs entities."""

    def __init__(self) -> None:
        self.consumers: dict[str, list[Sender]] = {}
        self._names: dict[str, str] = {}

    # -- addresses -----------------------------------------------------------------------------

    def _hub(self, server: ServerHandler, name: str) -> str | None:
        found = self._names.get(name)
        if found is None:
            self._names = {hub.lower(): hub for hub in server.broker.hubs()}
            found = self._names.get(name)
        return found

    def claims(self, server: ServerHandler, path: str) -> str | None:
        if path == "$management":
            return "eh-mgmt"
        name, _, rest = path.partition("/")
        if self._hub(server, name) is None:
            return None
        if not rest:
            return "eh-hub"
        if _PARTITION.match(rest):
            return "eh-partition"
        if _CONSUMER.match(rest):
            return "eh-consumer"
        if _GROUP.match(rest):
            return "eh-group"  # the audience of a consumer's token; not a link address
        return None

    # -- attach --------------------------------------------------------------------------------

    def attach(self, server: ServerHandler, link: Link, state: LinkState) -> None:
        if state.kind == "eh-mgmt":
            if link.is_sender:
                state.kind = "reply"
            return
        name, _, rest = state.path.partition("/")
        hub = self._hub(server, name)
        assert hub is not None
        server.authorise(link, state.path)
        state.entity = hub
        if state.kind in ("eh-hub", "eh-partition"):
            if link.is_sender:
                raise Refused(
                    "amqp:not-allowed",
                    f"events are received from {hub}/ConsumerGroups/<group>/Partitions/<id>",
                )
            state.kind = "eh-send"
            match = _PARTITION.match(rest)
            state.extra["partition"] = int(match.group(1)) if match else None
            if match:
                self._check_partition(server, hub, int(match.group(1)))
            link.max_message_size = EVENT_HUBS_MAX_BYTES
            return
        match = _CONSUMER.match(rest)
        if match is None:
            raise Refused("amqp:not-found", f"'{state.path}' is a consumer group, not a partition")
        if link.is_receiver:
            raise Refused("amqp:not-allowed", "events are sent to the hub or to a partition")
        partition = int(match.group(2))
        self._check_partition(server, hub, partition)
        consumer = _Consumer(
            hub=hub,
            consumer_group=match.group(1),
            partition=partition,
            after_sequence=self._start(server, hub, partition, _selector(link)),
            epoch=_epoch(link),
        )
        self._take_ownership(server, consumer)
        state.kind = "eh-consumer"
        state.receive_and_delete = link.remote_snd_settle_mode == _SETTLED
        state.extra["consumer"] = consumer
        if consumer.epoch is not None:
            link.properties = {symbol(EPOCH): consumer.epoch}
        self.consumers.setdefault(hub, []).append(link)  # type: ignore[arg-type]

    def _check_partition(self, server: ServerHandler, hub: str, partition: int) -> None:
        partitions = server.broker.hubs().get(hub, 0)
        if not 0 <= partition < partitions:
            raise Refused(
                "amqp:not-found",
                f"The partition '{partition}' of event hub '{hub}' does not exist: it has"
                f" {partitions} partitions (0 to {partitions - 1})",
            )

    def _start(self, server: ServerHandler, hub: str, partition: int, selector: str | None) -> int:
        """The sequence number the consumer reads after, from its selector filter."""
        broker = server.broker
        info = broker.partition_info(hub, partition)
        if not selector:
            return info.begin_sequence - 1
        match = _SELECTOR.search(selector)
        if match is None:
            raise Refused(
                "amqp:invalid-field", f"devhost cannot read the selector filter {selector!r}"
            )
        field, operator, value = match.groups()
        inclusive = operator == ">="
        try:
            if field == "x-opt-offset":
                if value == "-1":
                    return info.begin_sequence - 1
                if value == "@latest":
                    return info.last_sequence
                return broker.sequence_after(hub, partition, offset=int(value), inclusive=inclusive)
            if field == "x-opt-sequence-number":
                number = int(value)
                return number - 1 if inclusive else number
            return broker.sequence_after(
                hub, partition, enqueued_time=int(value) / 1000.0, inclusive=inclusive
            )
        except ValueError:
            raise Refused(
                "amqp:invalid-field", f"the selector filter {selector!r} has a bad value"
            ) from None

    def _take_ownership(self, server: ServerHandler, consumer: _Consumer) -> None:
        """Apply owner levels among the consumers of one group and partition."""
        rivals: list[tuple[Sender, _Consumer]] = []
        for link in self.consumers.get(consumer.hub, []):
            state: LinkState | None = getattr(link, "devhost_link", None)
            other: _Consumer | None = state.extra.get("consumer") if state else None
            if (
                other is not None
                and other.consumer_group == consumer.consumer_group
                and other.partition == consumer.partition
            ):
                rivals.append((link, other))
        held = [other.epoch for _, other in rivals if other.epoch is not None]
        if held and (consumer.epoch is None or consumer.epoch < max(held)):
            raise Refused(
                LINK_STOLEN,
                f"A receiver with owner level {max(held)} holds partition"
                f" {consumer.partition} of {consumer.hub}/{consumer.consumer_group};"
                f" owner level {consumer.epoch} cannot open it",
            )
        if consumer.epoch is None:
            return
        for link, other in rivals:
            if other.epoch is None or other.epoch <= consumer.epoch:
                link.condition = codec.error(
                    LINK_STOLEN,
                    f"A receiver with a higher owner level ({consumer.epoch}) took partition"
                    f" {consumer.partition} of {consumer.hub}/{consumer.consumer_group}",
                )
                link.close()

    def on_detach(self, server: ServerHandler, link: Link, state: LinkState) -> None:
        links = self.consumers.get(state.entity)
        if links and link in links:
            links.remove(link)  # type: ignore[arg-type]

    # -- sends ---------------------------------------------------------------------------------

    def on_message(
        self, server: ServerHandler, link: Receiver, state: LinkState, payload: bytes
    ) -> None:
        if state.kind == "eh-send":
            self._publish(server, state, payload)
        elif state.kind == "eh-mgmt":
            request = codec.decode(payload)
            server.respond(link, state, request, self._management(server, link, request))
        else:
            raise Refused("amqp:not-allowed", f"{state.path} does not accept events")

    def _publish(self, server: ServerHandler, state: LinkState, payload: bytes) -> None:
        if len(payload) > EVENT_HUBS_MAX_BYTES:
            raise Refused(
                SIZE_EXCEEDED,
                f"The received message (size {len(payload)} bytes) exceeds the limit"
                f" ({EVENT_HUBS_MAX_BYTES} bytes) currently allowed on the link",
            )
        partition: int | None = state.extra.get("partition")
        parts = codec.split_batch(payload)
        envelope_key = None
        if parts is not None:
            envelope_key = _key(codec.batch_annotations(payload))
        events: list[EventSpec] = []
        for part in parts or [payload]:
            message = codec.decode(part)
            key = _key(message.annotations or {}) or envelope_key
            if key is not None and partition is not None:
                raise Refused(
                    "amqp:invalid-field",
                    "an event sent to a partition cannot have a partition key",
                )
            events.append(
                EventSpec(
                    body=codec.body_bytes(message, part),
                    partition_key=key,
                    properties=codec.properties_of(message) or None,
                    partition_id=partition,
                    message_id=codec.text(message.id),
                    correlation_id=codec.text(message.correlation_id),
                    content_type=codec.text(message.content_type),
                )
            )
        try:
            server.broker.publish_batch(state.entity, events)
        except MessageTooLarge as error:
            raise Refused(SIZE_EXCEEDED, str(error)) from None
        except BrokerBusy as error:
            raise Refused("com.microsoft:server-busy", str(error)) from None
        self.pump(server, state.entity)

    # -- consumers -----------------------------------------------------------------------------

    def on_credit(self, server: ServerHandler, link: Sender, state: LinkState) -> None:
        if state.kind == "eh-consumer":
            self._deliver(server, link, state)

    def pump(self, server: ServerHandler, hub: str) -> None:
        for link in list(self.consumers.get(hub, [])):
            state: LinkState | None = getattr(link, "devhost_link", None)
            if state is not None and link.credit > 0:
                self._deliver(server, link, state)

    def tick(self, server: ServerHandler) -> None:
        for hub in list(self.consumers):
            self.pump(server, hub)

    def _deliver(self, server: ServerHandler, link: Sender, state: LinkState) -> None:
        consumer: _Consumer = state.extra["consumer"]
        while link.credit > 0:
            events = server.broker.read_partition(
                consumer.hub,
                consumer.partition,
                after_sequence=consumer.after_sequence,
                max_events=min(link.credit, _BATCH_EVENTS),
            )
            if not events:
                return
            # The partition's last enqueued event, as delivery annotations: what
            # track_last_enqueued_event_properties reads (Event Hubs' receiver runtime metric).
            info = server.broker.partition_info(consumer.hub, consumer.partition)
            runtime = {
                symbol("last_enqueued_sequence_number"): info.last_sequence,
                symbol("last_enqueued_offset"): info.last_offset,
                symbol("last_enqueued_time_utc"): codec.amqp_timestamp(
                    info.last_enqueued_time or 0.0
                ),
                symbol("runtime_info_retrieval_time_utc"): codec.amqp_timestamp(
                    server.config.clock()
                ),
            }
            for event in events:
                server.send(
                    link,
                    _encode(event, runtime),
                    tag=str(event.sequence_number).encode(),
                    settled=state.receive_and_delete,
                )
                consumer.after_sequence = event.sequence_number

    # -- $management ---------------------------------------------------------------------------

    def _management(self, server: ServerHandler, link: Receiver, request: Message) -> Message:
        properties: dict[Any, Any] = request.properties or {}
        operation = str(properties.get("operation", ""))
        kind = str(properties.get("type", ""))
        name = str(properties.get("name", ""))

        def answer(status: int, description: str, body: Any = None) -> Message:
            return codec.reply(
                request,
                status=status,
                description=description,
                body=body,
                code_field="status-code",
                description_field="status-description",
            )

        hub = self._hub(server, name.lower())
        if hub is None:
            return answer(404, f"The messaging entity '{name}' could not be found")
        refusal = _unauthorised(server, link, hub, properties.get("security_token"))
        if refusal is not None:
            return answer(401, refusal)
        if operation != "READ":
            return answer(501, f"{NOT_IMPLEMENTED}: devhost does not implement {operation!r}")
        partitions = server.broker.hubs()[hub]
        try:
            if kind == "com.microsoft:eventhub":
                return answer(200, "OK", _hub_properties(server, hub, partitions))
            if kind == "com.microsoft:partition":
                partition = int(str(properties.get("partition", "")))
                if not 0 <= partition < partitions:
                    return answer(404, f"partition '{partition}' of '{hub}' does not exist")
                return answer(200, "OK", _partition_properties(server, hub, partition))
        except (ValueError, UnknownHub) as error:
            return answer(400, str(error))
        return answer(400, f"unknown management type {kind!r}")


def _unauthorised(server: ServerHandler, link: Receiver, hub: str, token: Any) -> str | None:
    """Why a management request on ``hub`` is refused (401), or None when its token is good.

    The request carries its own ``security_token`` or relies on one put on ``$cbs`` earlier.
    """
    now = server.config.clock()
    try:
        if token:
            grant = server.verify_token(str(token))
            if not grant.covers(resource_path(hub), now):
                raise SasError("InvalidAudience", f"the token is not for '{hub}'")
        elif not server.connection_state(link).authorised(resource_path(hub), now):
            raise SasError("MissingToken", "no security_token and no token put on $cbs")
    except SasError as error:
        return f"{UNAUTHORIZED}: {error.code}: {error}"
    return None


def _hub_properties(server: ServerHandler, hub: str, partitions: int) -> dict[str, Any]:
    """The answer to a READ of ``com.microsoft:eventhub``: the hub and its partition ids."""
    ids = [str(p) for p in range(partitions)]
    return {
        "name": hub,
        "type": "com.microsoft:eventhub",
        "created_at": codec.amqp_timestamp(_created_at(server)),
        "partition_count": partitions,
        "partition_ids": codec.strings(ids),
    }


def _partition_properties(server: ServerHandler, hub: str, partition: int) -> dict[str, Any]:
    """The answer to a READ of ``com.microsoft:partition``: where its log begins and ends."""
    info = server.broker.partition_info(hub, partition)
    last_time = info.last_enqueued_time or 0.0
    return {
        "name": hub,
        "type": "com.microsoft:partition",
        "partition": str(partition),
        "begin_sequence_number": info.begin_sequence,
        "last_enqueued_sequence_number": info.last_sequence,
        "last_enqueued_offset": info.last_offset,
        "last_enqueued_time_utc": codec.amqp_timestamp(last_time),
        "is_partition_empty": info.last_sequence < info.begin_sequence,
    }


def _key(annotations: dict[Any, Any]) -> str | None:
    value = annotations.get(codec.X_OPT_PARTITION_KEY)
    if value is None:
        return None
    return bytes(value).decode() if isinstance(value, bytes | memoryview) else str(value)


def _selector(link: Link) -> str | None:
    data = link.remote_source.filter
    data.rewind()
    filters = data.get_object() if data.next() else None
    if not isinstance(filters, dict):
        return None
    for value in filters.values():
        described = getattr(value, "value", value)
        if isinstance(described, str | bytes):
            text = described.decode() if isinstance(described, bytes) else described
            if "amqp.annotation." in text:
                return text
    return None


def _epoch(link: Link) -> int | None:
    properties = link.remote_properties or {}
    for key, value in properties.items():
        if str(key) == EPOCH and value is not None:
            return int(value)
    return None


def _created_at(server: ServerHandler) -> float:
    try:
        return server.broker.path.stat().st_ctime
    except OSError:
        return 0.0


def _encode(event: StoredEvent, runtime: dict[symbol, Any]) -> bytes:
    annotations: dict[symbol, Any] = {
        codec.X_OPT_SEQUENCE_NUMBER: event.sequence_number,
        codec.X_OPT_OFFSET: event.offset,
        codec.X_OPT_ENQUEUED_TIME: codec.amqp_timestamp(event.enqueued_time),
    }
    if event.partition_key is not None:
        annotations[codec.X_OPT_PARTITION_KEY] = event.partition_key
    message = Message(
        body=event.body,
        id=event.message_id,
        correlation_id=event.correlation_id,
        content_type=symbol(event.content_type) if event.content_type else None,
        properties=dict(event.properties) or None,
        annotations=annotations,
        instructions=runtime,
    )
    message.inferred = True
    return bytes(message.encode())
