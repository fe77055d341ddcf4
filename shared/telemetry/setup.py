"""Provider set-up: exporters from settings, once per process; the current tracer and meter."""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)

from shared.config import Settings
from shared.errors import ConfigError
from shared.telemetry.attributes import INSTRUMENTATION_NAME
from shared.telemetry.logs import _install_root_log_filters
from shared.telemetry.redaction import redact
from shared.telemetry.spans import RedactingSpanExporter, RedactingSpanProcessor

logger = logging.getLogger(__name__)


_METRIC_EXPORT_INTERVAL_MS: Final = 60_000


_EXPORTER_SETTING: Final = {
    "otlp": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "azuremonitor": "APPLICATIONINSIGHTS_CONNECTION_STRING",
}


@dataclass(frozen=True)
class _Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    tracer: trace.Tracer
    meter: Meter
    generation: int
    exporter: str
    credential: Any
    owned: bool = True
    """False for the providers the Azure Monitor distro installed: the worker owns them."""

    @classmethod
    def over(
        cls,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        *,
        generation: int,
        exporter: str,
        credential: Any,
        owned: bool = True,
    ) -> _Telemetry:
        """The state over these providers, with this package's tracer and meter from them."""
        return cls(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            tracer=tracer_provider.get_tracer(INSTRUMENTATION_NAME),
            meter=meter_provider.get_meter(INSTRUMENTATION_NAME),
            generation=generation,
            exporter=exporter,
            credential=credential,
            owned=owned,
        )


_lock = threading.RLock()


_state: _Telemetry | None = None


_generation = 0


_globals_installed = False


_atexit_registered = False


_unconfigured_tracer: trace.Tracer | None = None


def configure(
    settings: Settings,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> None:
    """Set up tracing, metrics and log filters for this process, once.

    A second call is a no-op, unless it injects ``span_exporter`` or ``metric_reader`` (tests):
    then the previous providers are shut down and replaced, and the injected exporter receives
    every span synchronously when it ends. An injected exporter or reader replaces the one
    ``settings.telemetry_exporter`` would choose for that signal only. The process-global
    OpenTelemetry providers, which third-party instrumentation uses, are set by the first call.
    Raises ``ConfigError`` naming the setting when an exporter cannot be created.
    """
    global _state, _generation, _atexit_registered
    with _lock:
        injected = span_exporter is not None or metric_reader is not None
        if _state is not None and not injected:
            if _state.exporter not in ("injected", settings.telemetry_exporter):
                logger.warning(
                    "telemetry is already configured with exporter %s; ignoring %s",
                    _state.exporter,
                    settings.telemetry_exporter,
                )
            _install_root_log_filters()
            return
        if _state is not None:
            _shutdown(_state)
            _state = None
        _generation += 1
        adopted = None if injected else _adopt_distro(settings, generation=_generation)
        state = adopted or _build(settings, span_exporter, metric_reader, generation=_generation)
        _state = state
        if state.owned:
            _install_globals(state.tracer_provider, state.meter_provider)
        _install_root_log_filters()
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
    logger.info("telemetry configured (exporter %s)", state.exporter)


def _adopt_distro(settings: Settings, *, generation: int) -> _Telemetry | None:
    """The providers the Azure Monitor distro installed, when it did, made to redact.

    With ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` the Functions Python worker calls
    the distro's ``configure_azure_monitor()`` before it loads the app, and the host leaves the
    worker's logs and traces to it (Use OpenTelemetry with Azure Functions, "Configure
    application settings"; azure-functions-python-worker ``otel.py`` ``initialize_azure_monitor``).
    Exporters of our own would send everything twice, so with ``TELEMETRY_EXPORTER=azuremonitor``
    and SDK providers already installed process-wide, those are used: a
    :class:`RedactingSpanProcessor` on the tracer provider redacts every span before any of its
    exporters gets it, and the redacting log filter goes on the distro's root log handler.
    """
    if settings.telemetry_exporter != "azuremonitor" or _globals_installed:
        return None
    tracer_provider = trace.get_tracer_provider()
    meter_provider = otel_metrics.get_meter_provider()
    if not isinstance(tracer_provider, TracerProvider):
        return None
    if not any(
        isinstance(p, RedactingSpanProcessor)
        for p in getattr(tracer_provider._active_span_processor, "_span_processors", ())
    ):
        tracer_provider.add_span_processor(RedactingSpanProcessor())
    if not isinstance(meter_provider, MeterProvider):
        meter_provider = MeterProvider(shutdown_on_exit=False)  # no reader: records nothing
    logger.info("telemetry: using the Azure Monitor distro's providers, spans redacted")
    return _Telemetry.over(
        tracer_provider,
        meter_provider,
        generation=generation,
        exporter="azuremonitor-distro",
        credential=None,
        owned=False,
    )


def _build(
    settings: Settings,
    span_exporter: SpanExporter | None,
    metric_reader: MetricReader | None,
    *,
    generation: int,
) -> _Telemetry:
    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.namespace": "switchboard",
            "service.instance.id": uuid.uuid4().hex,
        }
    )
    kind = settings.telemetry_exporter
    credential = None
    if kind == "azuremonitor" and (span_exporter is None or metric_reader is None):
        credential = _azure_monitor_credential(settings)
    processor: SpanProcessor | None = None
    try:
        if span_exporter is not None:
            # Synchronous, so a test sees each span the moment it ends.
            processor = SimpleSpanProcessor(RedactingSpanExporter(span_exporter))
        elif (chosen := _span_exporter_for(settings, credential)) is not None:
            processor = BatchSpanProcessor(RedactingSpanExporter(chosen))
        readers = (
            [metric_reader]
            if metric_reader is not None
            else _metric_readers_for(settings, credential)
        )
    except Exception as exc:
        close = getattr(credential, "close", None)
        if callable(close):
            close()
        setting = _EXPORTER_SETTING.get(kind, "TELEMETRY_EXPORTER")
        raise ConfigError(
            setting, f"the {kind} exporter could not be created: {redact(str(exc))}"
        ) from exc
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if processor is not None:
        tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, shutdown_on_exit=False
    )
    return _Telemetry.over(
        tracer_provider,
        meter_provider,
        generation=generation,
        exporter="injected" if span_exporter or metric_reader else kind,
        credential=credential,
    )


def shutdown() -> None:
    """Flush and stop exporters and release their credential; the next configure starts afresh."""
    global _state, _generation
    with _lock:
        state, _state = _state, None
        _generation += 1
    if state is not None:
        _shutdown(state)


def flush_telemetry(timeout_s: float = 5.0) -> bool:
    """Export what is buffered, e.g. before a worker goes idle; ``False`` if it timed out."""
    state = _state
    if state is None:
        return True
    millis = int(timeout_s * 1000)
    spans_ok = state.tracer_provider.force_flush(millis)
    metrics_ok = state.meter_provider.force_flush(millis)
    return spans_ok and metrics_ok


def _shutdown(state: _Telemetry) -> None:
    if not state.owned:
        # The distro's providers live as long as the worker; flush what is ours to flush.
        state.tracer_provider.force_flush(5_000)
        return
    try:
        state.tracer_provider.shutdown()
        state.meter_provider.shutdown()
    finally:
        close = getattr(state.credential, "close", None)
        if callable(close):
            close()


def _install_globals(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
    global _globals_installed
    if _globals_installed:
        return
    trace.set_tracer_provider(tracer_provider)
    otel_metrics.set_meter_provider(meter_provider)
    _globals_installed = True


def _signal_endpoint(base: str | None, signal: str) -> str | None:
    """OTLP/HTTP appends ``/v1/<signal>`` to the base endpoint; ``None`` lets the SDK decide."""
    if base is None:
        return None
    return f"{base.rstrip('/')}/v1/{signal}"


def _azure_monitor_credential(settings: Settings) -> Any:
    """The app's user-assigned managed identity, when a client id is configured.

    Without one the exporter falls back to ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``
    (``Authorization=AAD``), which it reads itself.
    """
    if not settings.managed_identity_client_id:
        return None
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=settings.managed_identity_client_id)


def _azure_monitor_options(settings: Settings, credential: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"connection_string": settings.appinsights_connection_string}
    if credential is not None:
        # Passing credential=None would switch off the exporter's own AAD fallback.
        options["credential"] = credential
    return options


def _span_exporter_for(settings: Settings, credential: Any) -> SpanExporter | None:
    kind = settings.telemetry_exporter
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # The SDK's default stream is bound at its import; use the stream current now.
        return ConsoleSpanExporter(service_name=settings.service_name, out=sys.stdout)
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=_signal_endpoint(settings.otlp_endpoint, "traces"))
    if kind == "azuremonitor":
        from azure.monitor.opentelemetry.exporter import AzureMonitorTraceExporter

        exporter: SpanExporter = AzureMonitorTraceExporter(
            **_azure_monitor_options(settings, credential)
        )
        return exporter
    return None


def _metric_readers_for(settings: Settings, credential: Any) -> list[MetricReader]:
    kind = settings.telemetry_exporter
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        exporter: Any = ConsoleMetricExporter(out=sys.stdout)
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=_signal_endpoint(settings.otlp_endpoint, "metrics"))
    elif kind == "azuremonitor":
        from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter

        exporter = AzureMonitorMetricExporter(**_azure_monitor_options(settings, credential))
    else:
        return []
    return [
        PeriodicExportingMetricReader(exporter, export_interval_millis=_METRIC_EXPORT_INTERVAL_MS)
    ]


def _tracer() -> trace.Tracer:
    global _unconfigured_tracer
    state = _state
    if state is not None:
        return state.tracer
    # Unconfigured, trace ids are still generated and propagated (conversations record theirs)
    # but nothing is exported. A provider some host set globally is deliberately not used: its
    # exporters would see spans without redaction.
    with _lock:
        if _unconfigured_tracer is None:
            _unconfigured_tracer = TracerProvider(shutdown_on_exit=False).get_tracer(
                INSTRUMENTATION_NAME
            )
        return _unconfigured_tracer


def _current_generation() -> int:
    state = _state
    return state.generation if state is not None else _generation


def _current_meter() -> tuple[int, Meter]:
    state = _state
    if state is not None:
        return state.generation, state.meter
    return _generation, otel_metrics.NoOpMeter(INSTRUMENTATION_NAME)
