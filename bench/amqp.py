"""Measure devhost's AMQP endpoint with the real SDKs, beside the in-process broker.

* Round trip: one message at a time, ``send`` -> ``receive`` -> ``complete`` with
  ``azure-servicebus`` (P50/P95 of the whole trip), and the same three calls on the
  :class:`~devhost.broker.Broker` directly.
* Sustained batches: ``--messages`` messages sent in batches of ``--batch`` and then received
  (prefetch) and completed; messages per second each way, SDK and in-process.
* Event Hubs: events sent in batches with ``azure-eventhub``, then read back from the start
  with ``EventHubConsumerClient.receive_batch``, per second each way.

The overhead ratio is SDK time over in-process time. Nothing is asserted.

    .venv/bin/python -m bench.amqp [--trips 300] [--messages 5000] [--batch 100]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode

from bench.stats import percentile
from devhost.amqp import AmqpConfig, AmqpServer
from devhost.broker import Broker, SendSpec

QUEUE = "bench"
HUB = "benchhub"


def sdk_round_trips(connection_string: str, trips: int) -> list[float]:
    times: list[float] = []
    with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_queue_sender(QUEUE) as sender,
        client.get_queue_receiver(QUEUE) as receiver,
    ):
        for i in range(trips + 10):
            started = time.perf_counter()
            sender.send_messages(ServiceBusMessage(b"x", message_id=f"rt-{i}"))
            (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            receiver.complete_message(message)
            if i >= 10:  # the first trips warm the links up
                times.append(time.perf_counter() - started)
    return times


def broker_round_trips(broker: Broker, trips: int) -> list[float]:
    times: list[float] = []
    for i in range(trips):
        started = time.perf_counter()
        broker.send(QUEUE, b"x", message_id=f"brt-{i}")
        (message,) = broker.receive(QUEUE)
        broker.complete(QUEUE, message.lock_token)
        times.append(time.perf_counter() - started)
    return times


def sdk_throughput(connection_string: str, messages: int, batch: int) -> tuple[float, float]:
    with ServiceBusClient.from_connection_string(connection_string) as client:
        with client.get_queue_sender(QUEUE) as sender:
            started = time.perf_counter()
            for start in range(0, messages, batch):
                sender.send_messages(
                    [
                        ServiceBusMessage(b"payload-%d" % i, message_id=f"tp-{i}")
                        for i in range(start, min(messages, start + batch))
                    ]
                )
            send_s = time.perf_counter() - started
        received = 0
        with client.get_queue_receiver(QUEUE, prefetch_count=batch * 2) as receiver:
            started = time.perf_counter()
            while received < messages:
                got = receiver.receive_messages(max_message_count=batch, max_wait_time=10)
                if not got:
                    raise RuntimeError(f"received {received} of {messages}")
                for message in got:
                    receiver.complete_message(message)
                received += len(got)
            receive_s = time.perf_counter() - started
    return messages / send_s, messages / receive_s


def sdk_receive_and_delete(connection_string: str, messages: int, batch: int) -> float:
    """Send ``messages`` (untimed), then receive them in ReceiveAndDelete mode: per second."""
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    with ServiceBusClient.from_connection_string(connection_string) as client:
        with client.get_queue_sender(QUEUE) as sender:
            for start in range(0, messages, batch):
                count = min(batch, messages - start)
                sender.send_messages([ServiceBusMessage(b"rad") for _ in range(count)])
        received = 0
        with client.get_queue_receiver(QUEUE, receive_mode=mode, prefetch_count=batch) as receiver:
            started = time.perf_counter()
            while received < messages:
                got = receiver.receive_messages(max_message_count=batch, max_wait_time=10)
                if not got:
                    raise RuntimeError(f"received {received} of {messages}")
                received += len(got)
            return messages / (time.perf_counter() - started)


def broker_throughput(broker: Broker, messages: int, batch: int) -> tuple[float, float]:
    started = time.perf_counter()
    for start in range(0, messages, batch):
        broker.send_batch(
            QUEUE,
            [
                SendSpec(b"payload-%d" % i, f"btp-{i}")
                for i in range(start, min(messages, start + batch))
            ],
        )
    send_s = time.perf_counter() - started
    started = time.perf_counter()
    received = 0
    while received < messages:
        got = broker.receive(QUEUE, max_messages=batch)
        for message in got:
            broker.complete(QUEUE, message.lock_token)
        received += len(got)
    return messages / send_s, messages / (time.perf_counter() - started)


def event_hub_throughput(connection_string: str, events: int, batch: int) -> float:
    with EventHubProducerClient.from_connection_string(
        connection_string, eventhub_name=HUB
    ) as producer:
        started = time.perf_counter()
        for start in range(0, events, batch):
            producer.send_batch([EventData(b"e") for _ in range(min(batch, events - start))])
        return events / (time.perf_counter() - started)


def event_hub_receive_throughput(connection_string: str, events: int, batch: int) -> float:
    """Read the ``events`` already in the hub from the start, in batches: events per second,
    from the first batch received to the last (the consumer's start-up left out)."""
    seen = 0
    first: float | None = None
    done = threading.Event()

    def on_batch(context: Any, batch_events: list[Any]) -> None:
        nonlocal seen, first
        if first is None and batch_events:
            first = time.perf_counter()
        seen += len(batch_events)
        if seen >= events:
            done.set()

    client = EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group="$Default", eventhub_name=HUB
    )
    worker = threading.Thread(
        target=lambda: client.receive_batch(
            on_event_batch=on_batch, max_batch_size=batch, starting_position="-1"
        ),
        daemon=True,
    )
    worker.start()
    try:
        if not done.wait(120):
            raise RuntimeError(f"received {seen} of {events} events")
        finished = time.perf_counter()
    finally:
        client.close()
        worker.join()
    assert first is not None
    return events / (finished - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trips", type=int, default=300)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-amqp-"))
    try:
        broker = Broker(folder / "broker.sqlite3")
        broker.ensure_queue(QUEUE, duplicate_window_s=0)
        broker.ensure_hub(HUB, partitions=4)
        server = AmqpServer(broker, AmqpConfig(port=0))
        server.start()
        try:
            connection_string = server.connection_string()
            sdk_trips = sdk_round_trips(connection_string, args.trips)
            local_trips = broker_round_trips(Broker(folder / "broker.sqlite3"), args.trips)
            sdk_send, sdk_receive = sdk_throughput(connection_string, args.messages, args.batch)
            local_send, local_receive = broker_throughput(
                Broker(folder / "broker.sqlite3"), args.messages, args.batch
            )
            sdk_rad = sdk_receive_and_delete(connection_string, args.messages, args.batch)
            eh_send = event_hub_throughput(connection_string, args.messages, args.batch)
            eh_receive = event_hub_receive_throughput(connection_string, args.messages, args.batch)
        finally:
            server.stop()
            broker.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    def ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1000

    print(f"round trip send->receive->complete, {args.trips} trips (ms)")
    print(f"  {'':12} {'P50':>8} {'P95':>8} {'P99':>8}")
    for name, values in (("SDK/AMQP", sdk_trips), ("in-process", local_trips)):
        p50, p95, p99 = (ms(values, q) for q in (0.50, 0.95, 0.99))
        print(f"  {name:12} {p50:8.2f} {p95:8.2f} {p99:8.2f}")
    print(f"  overhead P50 x{percentile(sdk_trips, 0.5) / percentile(local_trips, 0.5):.1f}")
    print(f"sustained, {args.messages} messages in batches of {args.batch} (messages/s)")
    print(f"  {'':12} {'send':>8} {'receive+complete':>18}")
    print(f"  {'SDK/AMQP':12} {sdk_send:8.0f} {sdk_receive:18.0f}")
    print(f"  {'in-process':12} {local_send:8.0f} {local_receive:18.0f}")
    send_ratio, receive_ratio = local_send / sdk_send, local_receive / sdk_receive
    print(f"  overhead send x{send_ratio:.1f}, receive x{receive_ratio:.1f}")
    print(f"  {'SDK/AMQP receive-and-delete':30} {sdk_rad:8.0f}")
    print(f"Event Hubs send, batches of {args.batch}: {eh_send:.0f} events/s")
    print(f"Event Hubs receive from the start, batches of {args.batch}: {eh_receive:.0f} events/s")


if __name__ == "__main__":
    main()
