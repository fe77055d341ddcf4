"""How long a good event waits behind a poison event on the same partition.

A poison body (a 5,001-digit number in its metadata) is posted to one partition of a running
devhost, then, a second later, a good request to the same partition. Printed: the seconds from
posting the good event to its conversation being recorded, and whether the poison has a record.
Before the request contract, the poison made the ingest batch fail; the function's retry policy
(8 retries, 1 s doubling to 60 s) held the partition for about three minutes before
checkpointing past it, with the poison in no table.

    .venv/bin/python -m bench.poison_pickup
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from devhost.broker import EventSpec
from devhost.environment import Workdir
from devhost.host import Host, SimulatorOptions
from shared.bootstrap import load_settings

POISON = (
    b'{"customerId": "cust-pp", "text": "hello", "channel": "chat", "metadata": {"n": 1'
    + b"0" * 5000
    + b"}}"
)
GOOD = json.dumps(
    {"customerId": "cust-pp", "text": "Where is ORD-7?", "channel": "chat", "idempotencyKey": "pp"}
).encode()
LIMIT_S = 400.0


def _records(store: Path) -> list[dict[str, object]]:
    if not store.exists():
        return []
    conn = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)
    try:
        return [json.loads(row[0]) for row in conn.execute("SELECT body FROM documents")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


async def measure(root: Path) -> tuple[float | None, bool]:
    async with Host(Workdir(root), simulator=SimulatorOptions(tpm=1_000_000), http_port=0) as host:
        assert host.broker is not None
        hub = load_settings(host.settings_env).eventhub_name
        host.broker.publish_batch(hub, [EventSpec(body=POISON, partition_key="cust-pp")])
        await asyncio.sleep(1.0)
        posted = time.monotonic()
        host.broker.publish_batch(hub, [EventSpec(body=GOOD, partition_key="cust-pp")])
        while time.monotonic() - posted < LIMIT_S:
            records = _records(host.workdir.store)
            if any(
                r.get("customerId") == "cust-pp" and r.get("status") != "rejected" for r in records
            ):
                waited = time.monotonic() - posted
                poison_recorded = any(r.get("status") == "rejected" for r in records)
                return waited, poison_recorded
            await asyncio.sleep(0.1)
    return None, False


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pp-") as tmp:
        waited, poison_recorded = asyncio.run(measure(Path(tmp) / "dh"))
    shown = f"{waited:.2f}" if waited is not None else f"> {LIMIT_S:.0f}"
    print(f"good event behind a poison event recorded after {shown} s")
    print(f"poison event has a rejection record: {poison_recorded}")


if __name__ == "__main__":
    main()
