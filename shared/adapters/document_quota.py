"""Quota leases and customer budgets over the ``DocumentStore`` port: one document per
deployment (``lease:{deployment}``) or per customer and day in the ``quota`` container (Cosmos DB
in Azure), read-modify-replace with etag conditions through the one concurrency loop."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shared.concurrency import write_conditionally
from shared.llm.ledger import STATUS_KEEP_S, Lease, status_entry
from shared.ports import Doc, DocumentStore


class StoreQuotaLedger:
    """Leases in one document per deployment in the ``quota`` container (Cosmos DB in Azure)."""

    def __init__(self, store: DocumentStore, *, container: str = "quota") -> None:
        self._store = store
        self._container = container

    @staticmethod
    def doc_id(deployment: str) -> str:
        return f"lease:{deployment}"

    async def heartbeat(
        self, deployment: str, instance_id: str, lease: Lease, *, now: float, ttl_s: float
    ) -> dict[str, Lease]:
        def change(leases: dict[str, Any]) -> None:
            for instance in [i for i, row in leases.items() if row["expiresAt"] <= now]:
                del leases[instance]
            leases[instance_id] = {
                "demand": lease.demand,
                "interactive": lease.interactive,
                "batch": lease.batch,
                "used": lease.used,
                "renewedAt": now,
                "expiresAt": now + ttl_s,
            }

        leases = await self._update(deployment, change)
        return {instance: _lease(row) for instance, row in leases.items()}

    async def leave(self, deployment: str, instance_id: str) -> None:
        await self._update(deployment, lambda leases: leases.pop(instance_id, None))
        # The port has no delete: an undated snapshot is one no reader shows.
        await self.publish(deployment, instance_id, {}, now=0.0)

    async def publish(
        self, deployment: str, instance_id: str, snapshot: Mapping[str, Any], *, now: float
    ) -> None:
        """Keep ``snapshot`` as this instance's latest for ``deployment`` (a status board,
        ``shared.llm.ledger.QuotaStatusBoard``): one document per instance and deployment,
        which Cosmos deletes after ``STATUS_KEEP_S`` where the container has TTL on (an item's
        ``ttl``, in seconds, overrides the container's ``defaultTtl``, which infra/names.json sets
        on ``quota``: "Time to Live (TTL) in Azure Cosmos DB",
        https://learn.microsoft.com/azure/cosmos-db/nosql/time-to-live)."""
        await self._store.upsert(
            self._container,
            {
                "id": f"status:{deployment}:{instance_id}",
                "kind": STATUS_KIND,
                "deployment": deployment,
                "instance": instance_id,
                "at": now,
                "snapshot": dict(snapshot),
                "ttl": int(STATUS_KEEP_S),
            },
        )

    async def _update(self, deployment: str, change: Any) -> dict[str, Any]:
        """Read, change and write back the lease document, retrying when another instance won."""
        doc_id = self.doc_id(deployment)

        def build(doc: Doc | None) -> Doc:
            leases: dict[str, Any] = dict(doc.get("instances", {})) if doc else {}
            change(leases)
            return {
                "id": doc_id,
                "kind": "quota-lease",
                "deployment": deployment,
                "instances": leases,
            }

        written = await write_conditionally(
            self._store, self._container, doc_id, build, what=f"quota lease for {deployment}"
        )
        assert written is not None  # build always returns a document
        return dict(written["instances"])

    async def close(self) -> None:
        """The store belongs to the caller; nothing to close here."""


STATUS_KIND = "quota-status"


async def read_quota_status(
    store: DocumentStore, *, container: str = "quota", now: float
) -> dict[str, list[dict[str, Any]]]:
    """Per deployment, every instance's latest snapshot (its values plus ``instance`` and
    ``age_s``), newest first: what ``StoreQuotaLedger.publish`` left in ``container``."""
    docs = await store.query_eq(container, "kind", STATUS_KIND)
    found: dict[str, list[dict[str, Any]]] = {}
    for doc in sorted(docs, key=lambda d: -float(d.get("at", 0.0))):
        at = float(doc.get("at", 0.0))
        snapshot = doc.get("snapshot")
        if now - at > STATUS_KEEP_S or not isinstance(snapshot, dict) or not snapshot:
            continue
        entry = status_entry(snapshot, doc.get("instance"), at=at, now=now)
        found.setdefault(str(doc.get("deployment")), []).append(entry)
    return found


def _lease(row: Mapping[str, Any]) -> Lease:
    """A lease as stored; one written before lanes counts all its demand as interactive, and
    one written before renewal times were kept is never taken for quiet (it lapses on its
    expiry)."""
    demand = float(row.get("demand", 0.0))
    return Lease(
        float(row.get("interactive", demand)),
        float(row.get("batch", 0.0)),
        float(row.get("used", 0.0)),
        float(row.get("renewedAt", math.inf)),
    )


class StoreCustomerBudget:
    """Spend in the ``quota`` container: one document ``budget:{customer}:{day}`` (pk ``/id``)."""

    TTL_S = 3 * 86400
    """Cosmos deletes a day's document after three days (where the container has TTL on)."""

    def __init__(self, store: DocumentStore, *, limit: int, container: str = "quota") -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._store = store
        self._container = container

    @staticmethod
    def doc_id(customer_id: str, day: str) -> str:
        return f"budget:{customer_id}:{day}"

    async def used(self, customer_id: str, day: str) -> int:
        doc_id = self.doc_id(customer_id, day)
        doc = await self._store.read(self._container, doc_id, partition_key=doc_id)
        return int(doc.get("tokens", 0)) if doc else 0

    async def add(self, customer_id: str, day: str, tokens: int) -> int:
        doc_id = self.doc_id(customer_id, day)

        def build(doc: Doc | None) -> Doc:
            return {
                "id": doc_id,
                "kind": "token-budget",
                "customerId": customer_id,
                "day": day,
                "tokens": (int(doc.get("tokens", 0)) if doc else 0) + tokens,
                "ttl": self.TTL_S,
            }

        written = await write_conditionally(
            self._store, self._container, doc_id, build, what="customer token budget"
        )
        assert written is not None  # build always returns a document
        return int(written["tokens"])

    async def close(self) -> None:
        """The store belongs to the caller."""
