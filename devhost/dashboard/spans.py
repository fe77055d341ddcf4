"""The spans devhost collects for the dashboard: an OTLP/HTTP receiver and a SQLite table.

The app's processes export their spans with the OTLP/HTTP exporter that ``shared.telemetry``
builds for ``TELEMETRY_EXPORTER=otlp``, wrapped in its redacting exporter: what arrives here has
already been redacted. devhost points its workers' exporter at the host's own HTTP server
(:func:`telemetry_settings`), which decodes each export request (:func:`decode_traces`) and
keeps the spans in ``spans.sqlite3`` in the workdir (:class:`SpanStore`), where the dashboard
reads a conversation's trace.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from shared.telemetry.attributes import CONVERSATION_ID, GEN_AI_REQUEST_MODEL, GEN_AI_SYSTEM, STAGE
from shared.telemetry.tracing import ACCOUNTING_SPAN

SPANS_FILE = "spans.sqlite3"
OTLP_PATH = "/_otlp"
"""Where, under the dashboard, the OTLP receiver listens (``/v1/traces``, ``/v1/metrics``)."""
MAX_SPANS = 200_000
"""Spans kept; beyond this the oldest are dropped as new ones arrive."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    span_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    status_message TEXT NOT NULL,
    conversation_id TEXT,
    stage TEXT,
    service TEXT,
    attributes TEXT NOT NULL,
    events TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_by_conversation ON spans (conversation_id);
CREATE INDEX IF NOT EXISTS spans_by_end ON spans (end_ns);
CREATE INDEX IF NOT EXISTS spans_by_name ON spans (name, end_ns);
"""


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class CollectedSpan:
    """One finished span as exported (redacted by the app before it left its process)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    events: list[SpanEvent] = field(default_factory=list)
    service: str = ""

    @property
    def conversation_id(self) -> str | None:
        value = self.attributes.get(CONVERSATION_ID)
        return str(value) if value is not None else None

    @property
    def stage(self) -> str | None:
        value = self.attributes.get(STAGE)
        return str(value) if value is not None else None

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    @property
    def failed(self) -> bool:
        return self.status_code == 2  # STATUS_CODE_ERROR


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class UnreadableExport(ValueError):
    """An OTLP export request that is not a protobuf ``ExportTraceServiceRequest``."""


def decode_traces(body: bytes, *, encoding: str | None = None) -> list[CollectedSpan]:
    """The spans of one OTLP/HTTP protobuf export request (``Content-Encoding`` gzip, deflate
    or none); ``UnreadableExport`` when it cannot be read."""
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
    except Exception as exc:  # protobuf's DecodeError, zlib/gzip errors, EOFError
        raise UnreadableExport(f"not an OTLP trace export: {type(exc).__name__}") from None
    spans: list[CollectedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    CollectedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=int(span.kind),
                        start_ns=int(span.start_time_unix_nano),
                        end_ns=int(span.end_time_unix_nano),
                        status_code=int(span.status.code),
                        status_message=span.status.message,
                        attributes=_attributes(span.attributes),
                        events=[
                            SpanEvent(e.name, int(e.time_unix_nano), _attributes(e.attributes))
                            for e in span.events
                        ],
                        service=service,
                    )
                )
    return spans


class SpanStore:
    """Collected spans in a SQLite file; safe to use from several threads of one process."""

    def __init__(self, path: Path, *, max_spans: int = MAX_SPANS) -> None:
        self.path = path
        self.max_spans = max_spans
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._inserted = 0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # spans are diagnostics, not state
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def add(self, spans: Sequence[CollectedSpan]) -> int:
        """Keep ``spans`` (a span already kept is replaced); returns how many."""
        rows = [
            (
                s.span_id,
                s.trace_id,
                s.parent_id,
                s.name,
                s.kind,
                s.start_ns,
                s.end_ns,
                s.status_code,
                s.status_message,
                s.conversation_id,
                s.stage,
                s.service,
                json.dumps(s.attributes, default=str),
                json.dumps(
                    [{"name": e.name, "t": e.time_ns, "a": e.attributes} for e in s.events],
                    default=str,
                ),
            )
            for s in spans
        ]
        if not rows:
            return 0
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO spans (span_id, trace_id, parent_id, name, kind,"
                    " start_ns, end_ns, status_code, status_message, conversation_id, stage,"
                    " service, attributes, events) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                self._inserted += len(rows)
                if self._inserted >= 1000:
                    self._inserted = 0
                    conn.execute(
                        "DELETE FROM spans WHERE rowid <= (SELECT max(rowid) FROM spans) - ?",
                        (self.max_spans,),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return len(rows)

    def _select(self, where: str, params: Sequence[Any]) -> list[CollectedSpan]:
        if not self.path.exists():
            return []
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT trace_id, span_id, parent_id, name, kind, start_ns, end_ns,"
                    " status_code, status_message, attributes, events, service FROM spans"
                    f" WHERE {where} ORDER BY start_ns, end_ns",
                    params,
                )
                .fetchall()
            )
        return [_span(row) for row in rows]

    def for_trace(
        self, trace_id: str, *, conversation_id: str | None = None
    ) -> list[CollectedSpan]:
        """Every span of ``trace_id`` (and any span naming ``conversation_id``), oldest first."""
        if conversation_id is None:
            return self._select("trace_id = ?", (trace_id,))
        return self._select("trace_id = ? OR conversation_id = ?", (trace_id, conversation_id))

    def stage_throughput(self, *, window_s: float, now: float | None = None) -> dict[str, int]:
        """Per stage, how many stage spans ended within the last ``window_s`` seconds."""
        if not self.path.exists():
            return {}
        since = int(((time.time() if now is None else now) - window_s) * 1e9)
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT stage, count(*) FROM spans WHERE end_ns >= ? AND stage IS NOT NULL"
                    " AND conversation_id IS NOT NULL GROUP BY stage",
                    (since,),
                )
                .fetchall()
            )
        return {str(stage): int(count) for stage, count in rows}

    def model_calls(self, *, window_s: float, now: float | None = None) -> list[dict[str, Any]]:
        """The attributes of every model-call span (GenAI client span) that ended within the
        last ``window_s`` seconds."""
        if not self.path.exists():
            return []
        since = int(((time.time() if now is None else now) - window_s) * 1e9)
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT attributes FROM spans WHERE end_ns >= ? AND kind = 3", (since,))
                .fetchall()
            )
        calls = [json.loads(text) for (text,) in rows]
        return [a for a in calls if isinstance(a, dict) and GEN_AI_SYSTEM in a]

    def learned_accounting(self, *, limit: int = 200) -> dict[str, dict[str, Any]]:
        """Per deployment, the attributes of the newest ``quota accounting`` span."""
        if not self.path.exists():
            return {}
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT attributes FROM spans WHERE name = ? ORDER BY end_ns DESC LIMIT ?",
                    (ACCOUNTING_SPAN, limit),
                )
                .fetchall()
            )
        newest: dict[str, dict[str, Any]] = {}
        for (text,) in rows:
            attributes = json.loads(text)
            deployment = attributes.get(GEN_AI_REQUEST_MODEL)
            if isinstance(deployment, str):
                newest.setdefault(deployment, attributes)
        return newest

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with self._lock:
            (n,) = self._connection().execute("SELECT count(*) FROM spans").fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _span(row: Sequence[Any]) -> CollectedSpan:
    (trace_id, span_id, parent_id, name, kind, start, end, code, message, attrs, events, svc) = row
    return CollectedSpan(
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent_id,
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=end,
        status_code=code,
        status_message=message,
        attributes=json.loads(attrs),
        events=[SpanEvent(e["name"], int(e["t"]), e["a"]) for e in json.loads(events)],
        service=svc or "",
    )


def telemetry_settings(base_url: str, key: str, settings_env: Mapping[str, str]) -> dict[str, str]:
    """The app settings that send a devhost process's spans to the dashboard's receiver.

    Empty when the user chose an exporter themselves (``TELEMETRY_EXPORTER`` in the environment
    or a settings file as anything but ``none``): their choice stands, and the dashboard shows
    no waterfall. Spans are exported within half a second of ending, so a trace shows up live.
    """
    if settings_env.get("TELEMETRY_EXPORTER") not in (None, "", "none"):
        return {}
    return {
        "TELEMETRY_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": base_url.rstrip("/") + OTLP_PATH,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-functions-key={key}",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
    }
