"""Dead letters of a deployed Switchboard: list them with their reasons, replay them.

Runs against Azure Service Bus with the ``azure-servicebus`` SDK and ``DefaultAzureCredential``
(``az login`` on a workstation, a managed identity elsewhere); devhost is not involved. The
signed-in identity needs Azure Service Bus Data Receiver on the queues it reads and Data Sender
on the queues it replays to.

Two places hold dead letters (see README, "Dead letters"):

- each stage queue's own ``$DeadLetterQueue``: messages Service Bus moved there itself
  (``MaxDeliveryCountExceeded``, expiry), with ``DeadLetterReason`` and
  ``DeadLetterErrorDescription`` as the broker sets them;
- the parking queue (``deadletter``): messages the pipeline settled as permanent failures, with
  ``DeadLetterReason``, ``DeadLetterErrorDescription``, ``OriginalQueue`` and
  ``OriginalMessageId`` as application properties.

Replay sends each one back to the queue it came from, body and properties intact less the
dead-letter ones, under the id ``{original id}:replay:{sequence number}`` with
``OriginalMessageId`` set, and then completes the dead letter. The id differs from the
original's, so the queue's duplicate detection does not drop the replay, and is the same every
time the same dead letter is replayed, so a replay repeated after a failure between send and
complete is dropped as a duplicate. devhost's ``dlq replay`` uses the same ids.

    python -m infra.dlq --namespace sb-switchboard.servicebus.windows.net list
    python -m infra.dlq --namespace ... replay [--queue intent] [--id MESSAGE_ID]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)

from shared.domain.messages import original_message_id, replay_id

NAMES = Path(__file__).resolve().parent / "names.json"
NAMESPACE_SETTING = "ServiceBusConnection__fullyQualifiedNamespace"
PAGE = 100
PARKING_PROPERTIES = frozenset(
    {"DeadLetterReason", "DeadLetterErrorDescription", "OriginalQueue", "DeadLetteredAt"}
)
DEAD_LETTER_QUEUE = "$DeadLetterQueue"


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead letter, wherever it is held."""

    queue: str
    """The queue it came from (and goes back to on replay)."""
    held_in: str
    """``<queue>/$DeadLetterQueue`` or the parking queue's name."""
    sequence_number: int
    message_id: str
    original_message_id: str
    reason: str
    description: str
    delivery_count: int
    enqueued_time: str

    def as_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "heldIn": self.held_in,
            "sequenceNumber": self.sequence_number,
            "messageId": self.message_id,
            "originalMessageId": self.original_message_id,
            "reason": self.reason,
            "description": self.description,
            "deliveryCount": self.delivery_count,
            "enqueuedTime": self.enqueued_time,
        }


@dataclass(frozen=True)
class Queues:
    """The stage queues whose ``$DeadLetterQueue`` is read, and the parking queue."""

    stages: tuple[str, ...]
    parking: str

    @classmethod
    def from_names(cls, path: Path = NAMES) -> Queues:
        service_bus = json.loads(path.read_text(encoding="utf-8"))["serviceBus"]
        queues = service_bus["queues"]
        return cls(
            stages=tuple(queues[key] for key in service_bus["triggeredQueues"]),
            parking=queues["deadletter"],
        )


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def properties_of(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    """Application properties with text keys (the SDK hands AMQP keys over as bytes)."""
    return {str(_text(k)): _text(v) for k, v in (message.application_properties or {}).items()}


def body_of(message: ServiceBusReceivedMessage) -> bytes:
    body = message.body
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    return b"".join(bytes(part) for part in body)


def _entry(message: ServiceBusReceivedMessage, *, queue: str, held_in: str) -> DeadLetterEntry:
    props = properties_of(message)
    in_subqueue = held_in.endswith(DEAD_LETTER_QUEUE)
    reason = message.dead_letter_reason if in_subqueue else props.get("DeadLetterReason")
    description = (
        message.dead_letter_error_description
        if in_subqueue
        else props.get("DeadLetterErrorDescription")
    )
    message_id = str(message.message_id or "")
    enqueued = message.enqueued_time_utc
    return DeadLetterEntry(
        queue=queue,
        held_in=held_in,
        sequence_number=int(message.sequence_number or 0),
        message_id=message_id,
        original_message_id=str(props.get("OriginalMessageId") or message_id),
        reason=str(reason or ""),
        description=str(description or ""),
        delivery_count=int(message.delivery_count or 0),
        enqueued_time=enqueued.isoformat() if enqueued else "",
    )


def _peek_all(client: ServiceBusClient, queue: str, *, sub_queue: Any) -> Iterator[Any]:
    """Every message of ``queue`` (or its sub-queue), oldest first, without locking any."""
    with client.get_queue_receiver(queue, sub_queue=sub_queue) as receiver:
        start = 0
        while True:
            page = receiver.peek_messages(max_message_count=PAGE, sequence_number=start)
            if not page:
                return
            yield from page
            if len(page) < PAGE:
                return
            start = max(int(m.sequence_number or 0) for m in page) + 1


def list_dead_letters(client: ServiceBusClient, queues: Queues) -> list[DeadLetterEntry]:
    """Every dead letter: each stage queue's ``$DeadLetterQueue``, then the parking queue
    (and the parking queue's own ``$DeadLetterQueue``)."""
    entries: list[DeadLetterEntry] = []
    for queue in queues.stages:
        held_in = f"{queue}/{DEAD_LETTER_QUEUE}"
        for message in _peek_all(client, queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER):
            entries.append(_entry(message, queue=queue, held_in=held_in))
    for sub_queue, held_in in (
        (None, queues.parking),
        (ServiceBusSubQueue.DEAD_LETTER, f"{queues.parking}/{DEAD_LETTER_QUEUE}"),
    ):
        for message in _peek_all(client, queues.parking, sub_queue=sub_queue):
            origin = properties_of(message).get("OriginalQueue")
            entries.append(_entry(message, queue=str(origin or ""), held_in=held_in))
    return entries


def _replayed(message: ServiceBusReceivedMessage, entry: DeadLetterEntry) -> ServiceBusMessage:
    props: dict[str | bytes, Any] = {
        k: v for k, v in properties_of(message).items() if k not in PARKING_PROPERTIES
    }
    props["OriginalMessageId"] = original_message_id(entry.original_message_id)
    return ServiceBusMessage(
        body_of(message),
        message_id=replay_id(entry.original_message_id, entry.sequence_number),
        correlation_id=message.correlation_id,
        content_type=message.content_type,
        subject=message.subject,
        application_properties=props,
    )


def _wanted(entry: DeadLetterEntry, ids: frozenset[str] | None) -> bool:
    return ids is None or entry.message_id in ids or entry.original_message_id in ids


def _replay_from(
    client: ServiceBusClient,
    source: str,
    *,
    sub_queue: Any,
    held_in: str,
    origin: Mapping[int, str],
    ids: frozenset[str] | None,
    allowed: frozenset[str],
) -> set[int]:
    """Receive what ``origin`` lists (sequence number -> queue) from ``source`` under a lock,
    send each wanted one back and complete it. Others received on the way are held under their
    locks until the end (so they are not received again) and then abandoned."""
    pending = dict(origin)
    replayed: set[int] = set()
    held: list[ServiceBusReceivedMessage] = []
    with client.get_queue_receiver(
        source, sub_queue=sub_queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK
    ) as receiver:
        try:
            while pending:
                batch = receiver.receive_messages(max_message_count=PAGE, max_wait_time=5)
                if not batch:
                    break
                for message in batch:
                    target = pending.pop(int(message.sequence_number or 0), None)
                    entry = _entry(message, queue=target or "", held_in=held_in)
                    if target is None or target not in allowed or not _wanted(entry, ids):
                        held.append(message)
                        continue
                    with client.get_queue_sender(target) as sender:
                        sender.send_messages(_replayed(message, entry))
                    receiver.complete_message(message)
                    replayed.add(entry.sequence_number)
        finally:
            for message in held:
                receiver.abandon_message(message)
    return replayed


def replay(
    client: ServiceBusClient,
    queues: Queues,
    *,
    only_queue: str | None = None,
    ids: Iterable[str] | None = None,
) -> list[DeadLetterEntry]:
    """Send dead letters back to the queues they came from; return what was replayed.

    ``only_queue`` limits the replay to dead letters from that stage queue, ``ids`` to those
    whose message id or original message id is listed. A parked message whose
    ``OriginalQueue`` is not a stage queue stays where it is."""
    wanted_ids = None if ids is None else frozenset(ids)
    stages = frozenset(queues.stages if only_queue is None else (only_queue,))
    before = [
        e for e in list_dead_letters(client, queues) if e.queue in stages and _wanted(e, wanted_ids)
    ]
    done: set[tuple[str, int]] = set()
    sources: list[tuple[str, ServiceBusSubQueue | None]] = [
        (queue, ServiceBusSubQueue.DEAD_LETTER) for queue in sorted(stages)
    ]
    sources += [(queues.parking, None), (queues.parking, ServiceBusSubQueue.DEAD_LETTER)]
    for source, sub_queue in sources:
        held_in = source if sub_queue is None else f"{source}/{DEAD_LETTER_QUEUE}"
        origin = {e.sequence_number: e.queue for e in before if e.held_in == held_in}
        if origin:
            sent = _replay_from(
                client,
                source,
                sub_queue=sub_queue,
                held_in=held_in,
                origin=origin,
                ids=wanted_ids,
                allowed=stages,
            )
            done |= {(held_in, n) for n in sent}
    return [e for e in before if (e.held_in, e.sequence_number) in done]


def client_for(namespace: str | None, connection_string: str | None) -> ServiceBusClient:
    """A client with ``DefaultAzureCredential`` for ``namespace``; a SAS connection string only
    when one is given (a local emulator)."""
    if connection_string:
        return ServiceBusClient.from_connection_string(connection_string)
    if not namespace:
        raise SystemExit(f"dlq: give --namespace or set {NAMESPACE_SETTING}")
    from azure.identity import DefaultAzureCredential

    return ServiceBusClient(namespace, DefaultAzureCredential())


def _print_entries(entries: Sequence[DeadLetterEntry], out: TextIO, *, as_json: bool) -> None:
    if as_json:
        json.dump([e.as_json() for e in entries], out, indent=2)
        out.write("\n")
        return
    if not entries:
        out.write("no dead letters\n")
        return
    for e in entries:
        out.write(
            f"{e.held_in}  #{e.sequence_number}  {e.original_message_id}  -> {e.queue or '?'}\n"
            f"    {e.reason or '(no reason)'}: {e.description or '(no description)'}"
            f"  [deliveries {e.delivery_count}, enqueued {e.enqueued_time or '?'}]\n"
        )


def main(argv: Sequence[str] | None = None, *, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.dlq", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--namespace",
        default=os.environ.get(NAMESPACE_SETTING),
        help=f"<name>.servicebus.windows.net (default: ${NAMESPACE_SETTING})",
    )
    parser.add_argument(
        "--connection-string",
        default=os.environ.get("SERVICEBUS_CONNECTION_STRING"),
        help="a SAS connection string instead of DefaultAzureCredential (local emulators)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every dead letter with its reason")
    replay_parser = sub.add_parser("replay", help="send dead letters back to their queues")
    replay_parser.add_argument("--queue", help="only dead letters from this stage queue")
    replay_parser.add_argument(
        "--id", action="append", dest="ids", help="only this message id (repeatable)"
    )
    args = parser.parse_args(argv)
    queues = Queues.from_names()
    if args.command == "replay" and args.queue and args.queue not in queues.stages:
        parser.error(f"--queue must be one of {', '.join(queues.stages)}")
    with client_for(args.namespace, args.connection_string) as client:
        if args.command == "list":
            _print_entries(list_dead_letters(client, queues), out, as_json=args.json)
            return 0
        done = replay(client, queues, only_queue=args.queue, ids=args.ids)
        if not args.json:
            out.write(f"replayed {len(done)}\n")
        _print_entries(done, out, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
