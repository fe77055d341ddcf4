"""Per-customer rate limiting at ingress: one token bucket per customer id, in the store.

The bucket is a document of the quota container (``rate:<customer id>``), taken from with the
one conditional-write loop (``shared.concurrency``), so every instance of every way in (the
hub's ingest, ``POST /api/requests``) draws on the same bucket. A refused request writes
nothing. Batch documents are not limited here: they are bulk work by design, and their
requests run in the batch lane of the model quota.
"""

from __future__ import annotations

from shared.concurrency import write_conditionally
from shared.domain.rate_limit import Admission, Bucket, BucketPolicy, take
from shared.ports import Doc
from shared.service.core import Core


def bucket_id(customer_id: str) -> str:
    return f"rate:{customer_id}"


class RateLimiter:
    def __init__(self, core: Core) -> None:
        self.core = core
        settings = core.settings
        self.policy = BucketPolicy.per_minute(
            settings.ingress_rate_per_minute, settings.ingress_burst
        )

    async def admit(self, customer_id: str) -> Admission:
        """Take a token from the customer's bucket, or say how long until there is one."""
        now = self.core.clock().timestamp()
        if self.policy.unlimited:
            return Admission(True, Bucket(self.policy.capacity, now))
        doc_id = bucket_id(customer_id)
        decided: list[Admission] = []

        def build(current: Doc | None) -> Doc | None:
            bucket = None if current is None else Bucket(current["tokens"], current["at"])
            admission = take(bucket, self.policy, now)
            decided.append(admission)
            if not admission.admitted:
                return None
            return {
                "id": doc_id,
                "kind": "rate_bucket",
                "customerId": customer_id,
                "tokens": admission.bucket.tokens,
                "at": admission.bucket.at,
            }

        await write_conditionally(
            self.core.store, self.core.settings.quota_container, doc_id, build, what=doc_id
        )
        return decided[-1]
