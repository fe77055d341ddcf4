"""A message's priority is the lane of its model calls, through the real triggers."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator

import azure.functions as func
import pytest

from shared import bootstrap
from shared.config import Settings
from shared.domain.messages import Priority
from shared.llm.lanes import current_lane
from shared.ports import ChatRequest, ChatResult
from tests.support.drive import app_functions, drain, hub_event
from tests.support.fakes import RecordingPublisher, ScriptedModel, happy_model


class LaneRecordingModel(ScriptedModel):
    """The happy model, noting the lane each call was made in, per conversation."""

    def __init__(self) -> None:
        super().__init__(answers=happy_model().answers)
        self.lanes: defaultdict[str, set[Priority]] = defaultdict(set)

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.lanes[request.conversation_id].add(current_lane())
        return await super().complete(request)


@pytest.fixture(autouse=True)
async def _close_services() -> AsyncIterator[None]:
    yield
    await bootstrap.shutdown()


async def test_batch_rows_call_the_model_in_the_batch_lane_and_chats_in_interactive(
    settings: Settings,
) -> None:
    model = LaneRecordingModel()
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=model)
    chat = {"customerId": "c-chat", "text": "Where is order 7?", "channel": "chat"}
    await app_functions()["ingest"]([hub_event(json.dumps(chat).encode(), sequence=1)])
    row = json.dumps({"customerId": "c-row", "text": "Cancel my plan", "channel": "web"})
    data = (row + "\n").encode()
    blob = func.blob.InputStream(
        data=data, name="batches/lanes.jsonl", length=len(data), blob_properties={"ETag": "0x1"}
    )
    await app_functions()["ingest_batch"](blob)
    await drain(publisher, settings)
    by_customer = {
        c.customer_id: model.lanes[c.conversation_id] for c in model.calls if c.conversation_id
    }
    assert by_customer == {"c-chat": {Priority.INTERACTIVE}, "c-row": {Priority.BATCH}}
    assert current_lane() == Priority.INTERACTIVE  # nothing leaks out of a message's handling
