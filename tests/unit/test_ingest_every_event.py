"""Every event gets exactly one record, whatever its bytes, and no content makes ingest raise.

The catalogue (tests/data/requests) goes through the real ``ingest`` trigger; hypothesis then
throws arbitrary bytes and mutations of valid requests at it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared import bootstrap
from shared.config import Settings
from shared.domain.messages import (
    conversation_id_for,
    event_fallback,
    event_identity,
    rejection_id_for,
)
from shared.domain.request_contract import RequestRejected, judge
from tests.conftest import make_settings
from tests.support.drive import app_functions, hub_event
from tests.support.fakes import RecordingPublisher, happy_model
from tests.unit.test_request_catalogue import BAD, VALID, Case

VALID_BODY = json.dumps(
    {
        "customerId": "cust-42",
        "text": "Where is order ORD-1?",
        "channel": "web",
        "metadata": {"device": {"os": "iOS", "app": "5.2"}, "previousTicketIds": ["T-1"]},
    }
).encode()


@pytest.fixture(autouse=True)
async def _close_services() -> Any:
    yield
    await bootstrap.shutdown()


def _expected_id(body: bytes, partition: str, sequence: int) -> str:
    identity = event_identity(partition, sequence, str(sequence * 100))
    verdict = judge(body)
    if isinstance(verdict, RequestRejected):
        return rejection_id_for(identity)
    return conversation_id_for(
        verdict.customer_id, verdict.idempotency_key, fallback=event_fallback(identity)
    )


async def _ingest_and_collect(settings: Settings, bodies: list[bytes]) -> dict[str, Any]:
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=happy_model())
    events = [hub_event(b, sequence=i + 1) for i, b in enumerate(bodies)]
    await app_functions()["ingest"](events)  # must not raise, whatever the bytes
    services = await bootstrap.get_services()
    records: dict[str, Any] = {}
    for i, body in enumerate(bodies):
        record_id = _expected_id(body, "0", i + 1)
        records[record_id] = await services.store.read(
            settings.conversations_container, record_id, partition_key=record_id
        )
    accepted = {m.correlation_id for m in publisher.on(settings.queues.intent)}
    records["__accepted__"] = accepted
    return records


async def test_the_whole_catalogue_in_one_batch_gives_each_event_its_record(
    settings: Settings,
) -> None:
    cases: list[Case] = [*BAD, *VALID]
    bodies = [c.body for c in cases]
    records = await _ingest_and_collect(settings, bodies)
    accepted = records.pop("__accepted__")
    for i, case in enumerate(cases):
        record = records[_expected_id(case.body, "0", i + 1)]
        assert record is not None, case.name
        if case.code is None:
            assert record["status"] == "received", case.name
            assert record["conversationId"] in accepted
        else:
            assert record["status"] == "rejected", case.name
            assert record["reasonCode"] == case.code, case.name
            assert record["outcome"]["code"] == case.code
            assert record["body"]["bytes"] == len(case.body)
            assert len(record["body"]["excerpt"]) <= 81
            assert record["source"] == {"kind": "event", "event": f"0:{i + 1}:{(i + 1) * 100}"}
    valid_ids = {_expected_id(c.body, "0", i + 1) for i, c in enumerate(cases) if c.code is None}
    assert accepted == valid_ids


def _mutations() -> st.SearchStrategy[bytes]:
    def mutate(data: tuple[int, int, bytes, str]) -> bytes:
        position, length, insert, kind = data
        body = bytearray(VALID_BODY)
        at = position % len(body)
        if kind == "flip":
            body[at] ^= 1 << (length % 8)
        elif kind == "delete":
            del body[at : at + length]
        elif kind == "insert":
            body[at:at] = insert
        else:
            del body[at:]
        return bytes(body)

    return st.tuples(
        st.integers(0, 10_000),
        st.integers(1, 16),
        st.binary(min_size=1, max_size=8),
        st.sampled_from(["flip", "delete", "insert", "truncate"]),
    ).map(mutate)


@hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.one_of(st.binary(max_size=300), _mutations()), min_size=1, max_size=6))
async def test_any_bytes_in_a_batch_become_exactly_one_record_each(
    tmp_path_factory: pytest.TempPathFactory, bodies: list[bytes]
) -> None:
    settings = make_settings(tmp_path_factory.mktemp("ingest"))
    try:
        records = await _ingest_and_collect(settings, bodies)
    finally:
        await bootstrap.shutdown()
    records.pop("__accepted__")
    for i, body in enumerate(bodies):
        record = records[_expected_id(body, "0", i + 1)]
        assert record is not None
        assert record["status"] in {"received", "rejected"}


def test_the_catalogue_files_exist_where_the_tests_read_them() -> None:
    here = Path(__file__).parent.parent / "data" / "requests"
    assert (here / "bad.jsonl").is_file()
    assert (here / "valid.jsonl").is_file()
