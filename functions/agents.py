"""The four agents, each a Service Bus queue trigger so each scales on its own backlog."""

from __future__ import annotations

import azure.functions as func

from shared.bootstrap import get_services
from shared.domain.messages import Stage
from shared.telemetry import invocation_trace

bp = func.Blueprint()

CONNECTION = "ServiceBusConnection"


async def _handle(msg: func.ServiceBusMessage, stage: Stage, context: func.Context) -> None:
    services = await get_services()
    # The host's invocation continues the message's trace (its Diagnostic-Id); the stage span
    # becomes its child, so host and worker spans are one tree in Application Insights.
    with invocation_trace(context.trace_context.trace_parent):
        await services.pipeline.handle(
            msg.get_body(),
            stage=stage,
            message_id=msg.message_id or "",
            delivery_count=msg.delivery_count or 1,
        )


@bp.function_name("intent_agent")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%QUEUE_INTENT%", connection=CONNECTION)
async def intent_agent(msg: func.ServiceBusMessage, context: func.Context) -> None:
    await _handle(msg, Stage.INTENT, context)


@bp.function_name("response_agent")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%QUEUE_RESPONSE%", connection=CONNECTION)
async def response_agent(msg: func.ServiceBusMessage, context: func.Context) -> None:
    await _handle(msg, Stage.RESPONSE, context)


@bp.function_name("critic_agent")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%QUEUE_CRITIC%", connection=CONNECTION)
async def critic_agent(msg: func.ServiceBusMessage, context: func.Context) -> None:
    await _handle(msg, Stage.CRITIC, context)


@bp.function_name("escalation_agent")
@bp.service_bus_queue_trigger(
    arg_name="msg", queue_name="%QUEUE_ESCALATION%", connection=CONNECTION
)
async def escalation_agent(msg: func.ServiceBusMessage, context: func.Context) -> None:
    await _handle(msg, Stage.ESCALATION, context)
