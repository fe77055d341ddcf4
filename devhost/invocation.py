"""How the Python worker calls a function: its ``func.Context`` and the trace context it carries.

The trigger's value is decoded by :mod:`devhost.bindings`; this module hands it to the user's
function the way azure-functions-python-worker does (``dispatcher.py``): as the keyword of the
binding name, with an ``InvocationContext`` when the function asks for ``context``.
"""

from __future__ import annotations

import functools
import inspect
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import azure.functions as func
from azure.functions import _abc

from devhost.environment import PROJECT_ROOT

_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class _TraceContext(_abc.TraceContext):
    def __init__(self, trace_parent: str) -> None:
        self._trace_parent = trace_parent

    @property
    def trace_parent(self) -> str:
        return self._trace_parent

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RpcException(_abc.RpcException):
    @property
    def source(self) -> str:
        return ""

    @property
    def stack_trace(self) -> str:
        return ""

    @property
    def message(self) -> str:
        return ""


class _RetryContext(_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> _abc.RpcException:
        return _RpcException()


class InvocationContext(func.Context):
    """The ``func.Context`` the worker passes to a function with a ``context`` parameter
    (azure-functions-python-worker ``bindings/context.py``)."""

    def __init__(self, function_name: str, trace_parent: str) -> None:
        self._function_name = function_name
        self._invocation_id = str(uuid.uuid4())
        self._trace = _TraceContext(trace_parent)
        self._local = threading.local

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return str(PROJECT_ROOT)

    @property
    def trace_context(self) -> _abc.TraceContext:
        return self._trace

    @property
    def retry_context(self) -> _abc.RetryContext:
        return _RetryContext()


def host_trace_parent(value: Any) -> str:
    """The trace context the host gives an invocation of ``value``.

    On Azure the host's invocation span continues a Service Bus message's ``Diagnostic-Id``
    (else its ``traceparent``) or an HTTP request's ``traceparent`` header ("the OperationId ...
    comes directly from the traceparent value in the incoming request or message": Use
    OpenTelemetry with Azure Functions), and an Event Hubs batch or a blob gets a trace of its
    own. devhost exports no host spans, so it hands over the incoming context itself: the
    function's spans then hang under the sender's span, in the same trace as on Azure.
    """
    incoming: Any = None
    if isinstance(value, _abc.ServiceBusMessage):
        properties = value.application_properties or {}
        incoming = properties.get("Diagnostic-Id") or properties.get("traceparent")
    elif isinstance(value, func.HttpRequest):
        incoming = value.headers.get("traceparent")
    if isinstance(incoming, str) and _TRACEPARENT.match(incoming):
        return incoming
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


UserFunction = Callable[..., Coroutine[Any, Any, Any]]


def as_the_worker_calls(
    function: UserFunction, *, trigger_name: str, function_name: str
) -> UserFunction:
    """``function`` called as the worker calls it: the trigger's value as the keyword of its
    binding name and, when the function has a ``context`` parameter, the invocation's
    ``func.Context`` (azure-functions-python-worker ``dispatcher.py``: ``args[pb.name]``,
    ``args['context'] = fi_context`` when ``fi.requires_context``)."""
    wants_context = "context" in inspect.signature(function).parameters

    @functools.wraps(function)
    async def invoke(value: Any) -> Any:
        args: dict[str, Any] = {trigger_name: value}
        if wants_context:
            args["context"] = InvocationContext(function_name, host_trace_parent(value))
        return await function(**args)

    return invoke
