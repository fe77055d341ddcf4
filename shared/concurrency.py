"""The one optimistic-concurrency loop: read, change, write conditionally, retry on a lost race.

Every read-modify-write of a document goes through :func:`write_conditionally` - a
conversation's stage records and outcome, the quota ledger, the customer budgets - so there is
one rule for contention: read again, rebuild, and try again after a short random pause (so two
writers do not collide again), then ``TransientError`` after ``attempts`` lost races.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from shared.errors import Conflict, NotFound, PreconditionFailed, TransientError
from shared.ports import Doc, DocumentStore

WRITE_ATTEMPTS = 8


async def write_conditionally(
    store: DocumentStore,
    container: str,
    doc_id: str,
    build: Callable[[Doc | None], Doc | None],
    *,
    what: str,
    partition_key: str | None = None,
    attempts: int = WRITE_ATTEMPTS,
) -> Doc | None:
    """Create or replace ``doc_id`` with ``build(current)``, conditional on the version read.

    ``current`` is None when there is no document yet. ``build`` returns None when there is
    nothing (left) to do; the current document is then returned as it is. The partition key
    defaults to the id (every container here that is written this way is keyed so).
    """
    key = doc_id if partition_key is None else partition_key
    for race in range(attempts):
        current = await store.read(container, doc_id, partition_key=key)
        body = build(current)
        if body is None:
            return current
        try:
            if current is None:
                await store.create(container, body)
            else:
                await store.replace(container, body, etag=current["_etag"])
            return body
        except (Conflict, PreconditionFailed, NotFound):
            await asyncio.sleep(random.uniform(0, 0.02 * (race + 1)))
    raise TransientError(f"{what}: too much write contention")
