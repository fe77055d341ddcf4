"""The HTTP API's bodies: what the functions in ``functions/`` read and answer, and what the
OpenAPI document describes (it is generated from these models)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.domain.workitem import MAX_AGENT_CHARS, WorkItem


class _Api(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ErrorBody(_Api):
    """Why a request was not done. A refused customer request names the contract's reason
    ``code`` and the record it became (``rejectionId``)."""

    error: str
    code: str | None = None
    rejection_id: str | None = None


class Accepted(_Api):
    """A customer request taken in: its conversation, and where to follow it."""

    conversation_id: str
    status: str = "accepted"
    location: str


class AgentAction(_Api):
    """A claim or a release. ``agent`` names the person; behind App Service authentication
    (Easy Auth) the signed-in principal is used instead."""

    agent: str | None = Field(default=None, min_length=1, max_length=MAX_AGENT_CHARS)


class ResolveBody(AgentAction):
    """A resolve: the person's reply to the customer, delivered through the outbox."""

    reply: str = Field(min_length=1, max_length=4000)


class WorkItemList(_Api):
    """One page of a work queue, urgent first, then oldest first."""

    items: list[WorkItem]
    page: int
    page_size: int
    total: int
    next: str | None = Field(default=None, description="The next page's address, if any.")


class Health(_Api):
    status: str


class Readiness(_Api):
    """``ready`` when settings are valid and every dependency can do its work."""

    status: str
    checks: dict[str, str] | None = None
    settings: str | None = None


class BatchRejection(_Api):
    line: int
    code: str
    reason: str


class BatchView(_Api):
    """A batch document's record: its counts, rejected lines, and its conversations by
    status."""

    id: str
    batch_id: str
    blob_name: str
    etag: str
    size_bytes: int
    created_at: str
    status: str
    code: str | None = None
    reason: str | None = None
    format: str | None = None
    total: int
    accepted: int
    rejected: int
    rejected_by_code: dict[str, int] | None = None
    rejections: list[BatchRejection] | None = None
    completed_at: str | None = None
    statuses: dict[str, int]
