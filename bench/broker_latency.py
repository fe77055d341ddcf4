"""Measure the devhost broker: receive→complete throughput and cross-process hop latency.

Hop latency is the time from just before ``send`` in one process to the moment a receiver in
another process, asleep in ``wait_for_messages``, has the message in hand. It is measured with
the doorbells and again with timed polling only, and the ratio is printed. Nothing is asserted.

    .venv/bin/python -m bench.broker_latency [--hops 300] [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from bench.stats import percentile
from devhost.broker import Broker, SendSpec

QUEUE = "bench"
POLL_INTERVAL_S = 0.05


def receiver(path: str, hops: int, doorbells: bool, out: Connection) -> None:
    """Wait, receive, complete; report each message's hop latency in seconds."""

    async def run() -> list[float]:
        latencies: list[float] = []
        with Broker(path, doorbells=doorbells) as broker:
            await broker.wait_for_messages(QUEUE, 0.0)  # bind the bell before the sender starts
            out.send("ready")
            while len(latencies) < hops:
                for message in broker.receive(QUEUE, max_messages=16):
                    arrived = time.monotonic()
                    latencies.append(arrived - float(message.body))
                    broker.complete(QUEUE, message.lock_token)
                if len(latencies) < hops:
                    await broker.wait_for_messages(QUEUE, POLL_INTERVAL_S if not doorbells else 5.0)
        return latencies

    out.send(asyncio.run(run()))


def measure_hops(directory: Path, hops: int, doorbells: bool) -> list[float]:
    path = str(directory / f"hops-{doorbells}.db")
    with Broker(path) as broker:
        broker.ensure_queue(QUEUE)
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        child = context.Process(target=receiver, args=(path, hops, doorbells, child_end))
        child.start()
        child_end.close()
        assert parent_end.recv() == "ready"
        for n in range(hops):
            time.sleep(0.004)  # let the receiver fall asleep between messages
            broker.send(QUEUE, repr(time.monotonic()).encode(), message_id=f"hop-{n}")
        latencies: list[float] = parent_end.recv()
        child.join(30)
        parent_end.close()
    return latencies


def measure_throughput(directory: Path, messages: int, batch: int) -> tuple[float, float]:
    """Return (sends per second, receive+complete per second) in one process."""
    with Broker(directory / f"throughput-{batch}.db") as broker:
        broker.ensure_queue(QUEUE)
        started = time.perf_counter()
        for start in range(0, messages, batch):
            end = min(start + batch, messages)
            specs = [SendSpec(b"x" * 512, f"m-{n}") for n in range(start, end)]
            broker.send_batch(QUEUE, specs)
        sent = time.perf_counter()
        done = 0
        while done < messages:
            received = broker.receive(QUEUE, max_messages=batch)
            if batch == 1:
                for message in received:
                    broker.complete(QUEUE, message.lock_token)
            else:
                broker.complete_batch(QUEUE, [m.lock_token for m in received])
            done += len(received)
        finished = time.perf_counter()
    return messages / (sent - started), messages / (finished - sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=300)
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="broker-bench-", dir="/tmp"))
    try:
        for batch in (1, 16):
            sends, settles = measure_throughput(directory, args.messages, batch)
            print(
                f"batch {batch:>2}: send {sends:8.0f}/s ({1000 / sends:.3f} ms each),"
                f" receive+complete {settles:8.0f}/s ({1000 / settles:.3f} ms each)"
            )
        results = {}
        for doorbells in (True, False):
            latencies = [1000 * s for s in measure_hops(directory, args.hops, doorbells)]
            results[doorbells] = latencies
            label = "doorbell" if doorbells else f"polling every {POLL_INTERVAL_S * 1000:.0f} ms"
            print(
                f"hop latency, {label:>20}: P50 {percentile(latencies, 0.5):6.2f} ms"
                f"  P95 {percentile(latencies, 0.95):6.2f} ms"
                f"  P99 {percentile(latencies, 0.99):6.2f} ms"
                f"  mean {statistics.fmean(latencies):6.2f} ms  (n={len(latencies)})"
            )
        ratio = percentile(results[False], 0.95) / percentile(results[True], 0.95)
        print(f"P95 ratio polling/doorbell: {ratio:.1f}x")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
